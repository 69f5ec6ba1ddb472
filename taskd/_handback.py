# -*- test-case-name: tests.test_journal,tests.test_jobs -*-
"""
Answers handed back a slice at a time: L{HandBack}, used by the SQLite
journal (L{taskd.journal.SQLiteJournal}) to tell the callers of a big
group commit their writes are durable, and by the jobs room
(L{taskd.jobs.JobService}) to answer a group of submits, without holding
the reactor for the whole group.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Answers told in one reactor turn, at most: the rest wait for the next
#: turns, so that the reactor reads and answers other connections between
#: two slices of a big batch (an answer to a submit costs the reactor some
#: tens of microseconds: writing the C{accepted}, reading the next request).
HAND_BACK = 16


class HeldWrites(Protocol):
    """
    Holds the replies written meanwhile, to write them together (one write
    per connection) at the matching release: L{taskd._pipes.WriteBatch},
    the pool's, which the connections' replies join.
    """

    def hold(self) -> None:
        """
        Hold writes until the matching L{release}.
        """

    def release(self) -> None:
        """
        End a L{hold}; the outermost writes what was held.
        """


class HandBack:
    """
    A line of answers (a function and what to call it with: a
    C{Deferred}'s C{callback} and its result, or a C{Failure} for it),
    told oldest first, L{HAND_BACK} a reactor turn.

    @ivar writes: while set, each slice is told inside a L{HeldWrites.hold}
        of it, so that the replies a slice makes to one connection go out
        in one write, not one each.
    """

    def __init__(
        self,
        clock: IReactorTime,
        limit: int = HAND_BACK,
        writes: HeldWrites | None = None,
        after: Callable[[], object] | None = None,
    ) -> None:
        """
        @param after: called after each slice (inside its hold of
            C{writes}): what the slice's answers leave to do once.
        """
        self._clock = clock
        self._limit = limit
        self._answers: deque[tuple[Callable[[Any], object], Any]] = deque()
        self._call: IDelayedCall | None = None
        self._after = after
        self.writes = writes

    def tell(self, answers: Iterable[tuple[Callable[[Any], object], Any]]) -> None:
        """
        Add C{answers} to the line; the first slice is told now if no
        slice was told in this reactor turn (then the next is told in the
        next turn, even if the line is empty now: answers added meanwhile
        wait for it, so a turn tells one slice at most however many times
        it adds answers).
        """
        self._answers.extend(answers)
        if self._call is None:
            self._next()

    def tellAll(self) -> None:
        """
        Tell every answer still waiting, now.
        """
        if self._call is not None:
            self._call.cancel()
        self._next(len(self._answers))

    def _next(self, limit: int | None = None) -> None:
        self._call = None
        answers = self._answers
        if not answers:
            return
        writes = self.writes
        if writes is not None:
            writes.hold()
        try:
            for _ in range(min(self._limit if limit is None else limit, len(answers))):
                tell, result = answers.popleft()
                tell(result)
            if self._after is not None:
                self._after()
        finally:
            if writes is not None:
                writes.release()
            # (Even if an answer raised: those after it are not stuck.)
            if self._call is None and (answers or limit is None):
                self._call = self._clock.callLater(0, self._next)


__all__ = ["HAND_BACK", "HandBack", "HeldWrites"]
