"""
Tests for L{taskd._handback}: answers told a slice a reactor turn, on a
L{Clock} turned as a reactor turns.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from taskd._handback import HAND_BACK, HandBack


def turn(clock: Clock) -> None:
    """
    Run one reactor turn on C{clock}: the calls due when it starts, not
    those they add (L{Clock.advance} would run those too).
    """
    now = clock.seconds()
    for call in [c for c in clock.calls if c.getTime() <= now]:
        if call in clock.calls:
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


class Writes:
    """
    A L{taskd._handback.HeldWrites} that notes how deeply it is held when
    an answer is told, and when it is released.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.releases = 0

    def hold(self) -> None:
        self.depth += 1

    def release(self) -> None:
        self.depth -= 1
        self.releases += 1


class HandBackTests(SynchronousTestCase):
    def test_slices(self) -> None:
        """
        Answers are told oldest first, L{HAND_BACK} a turn: the first
        slice at once, the others in the turns after.
        """
        clock = Clock()
        told: list[int] = []
        hand = HandBack(clock)
        hand.tell((told.append, n) for n in range(2 * HAND_BACK + 1))
        self.assertEqual(told, list(range(HAND_BACK)))
        turn(clock)
        self.assertEqual(told, list(range(2 * HAND_BACK)))
        turn(clock)
        self.assertEqual(told, list(range(2 * HAND_BACK + 1)))

    def test_oneSliceATurn(self) -> None:
        """
        A turn tells one slice at most, however many times answers are
        added in it: answers added after a slice was told wait for the
        next turn, even when that slice emptied the line.  The turn after
        the last slice tells nothing and leaves no timer.
        """
        clock = Clock()
        told: list[str] = []
        hand = HandBack(clock, limit=4)
        hand.tell([(told.append, "a"), (told.append, "b")])
        self.assertEqual(told, ["a", "b"])
        hand.tell([(told.append, "c")])
        hand.tell([(told.append, "d")])
        self.assertEqual(told, ["a", "b"])
        turn(clock)
        self.assertEqual(told, ["a", "b", "c", "d"])
        turn(clock)
        self.assertEqual(clock.getDelayedCalls(), [])
        # The next answer, in a later turn, is told at once.
        hand.tell([(told.append, "e")])
        self.assertEqual(told, ["a", "b", "c", "d", "e"])

    def test_writesHeldAndAfter(self) -> None:
        """
        With C{writes}, each slice is told inside one hold of them, and
        C{after} is called once a slice, inside that hold too.
        """
        clock = Clock()
        writes = Writes()
        depths: list[Any] = []
        hand = HandBack(clock, limit=3, writes=writes, after=lambda: depths.append(("after", writes.depth)))
        hand.tell((lambda n: depths.append((n, writes.depth)), n) for n in range(5))
        self.assertEqual(depths, [(0, 1), (1, 1), (2, 1), ("after", 1)])
        self.assertEqual((writes.depth, writes.releases), (0, 1))
        turn(clock)
        self.assertEqual(depths[4:], [(3, 1), (4, 1), ("after", 1)])
        self.assertEqual((writes.depth, writes.releases), (0, 2))
        # The empty turn after holds nothing and calls nothing.
        turn(clock)
        self.assertEqual((len(depths), writes.releases), (7, 2))

    def test_writesReleasedWhenAnAnswerRaises(self) -> None:
        """
        An answer that raises ends its slice, and still releases the writes
        held for it; the answers after it are told in the next turn.
        """
        clock = Clock()
        writes = Writes()
        told: list[int] = []

        def bad(_: object) -> None:
            raise RuntimeError("bad answer")

        hand = HandBack(clock, limit=2, writes=writes)
        self.assertRaises(RuntimeError, hand.tell, [(bad, 0), (told.append, 1), (told.append, 2)])
        self.assertEqual(writes.depth, 0)
        self.assertEqual(told, [])
        turn(clock)
        self.assertEqual(told, [1, 2])

    def test_tellAll(self) -> None:
        """
        L{HandBack.tellAll} tells every answer still waiting, at once, and
        cancels the next turn's slice.
        """
        clock = Clock()
        told: list[int] = []
        hand = HandBack(clock, limit=2)
        hand.tell((told.append, n) for n in range(7))
        hand.tellAll()
        self.assertEqual(told, list(range(7)))
        self.assertEqual(clock.getDelayedCalls(), [])
