# -*- test-case-name: tests.test_journal -*-
"""
Answers handed back a slice at a time: L{HandBack}, used by the SQLite
journal (L{taskd.journal.SQLiteJournal}) to tell the callers of a big
group commit their writes are durable without holding the reactor for
the whole group.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Answers told in one reactor turn, at most: the rest wait for the next
#: turns, so that the reactor reads and answers other connections between
#: two slices of a big batch (an answer to a submit costs the reactor some
#: tens of microseconds: writing the C{accepted}, reading the next request).
HAND_BACK = 16


class HandBack:
    """
    A line of answers (a C{Deferred} and its result, or a C{Failure} for
    it), told oldest first, L{HAND_BACK} a reactor turn.
    """

    def __init__(self, clock: IReactorTime, limit: int = HAND_BACK) -> None:
        self._clock = clock
        self._limit = limit
        self._answers: deque[tuple[Deferred[Any], Any]] = deque()
        self._call: IDelayedCall | None = None

    def tell(self, answers: Iterable[tuple[Deferred[Any], Any]]) -> None:
        """
        Add C{answers} to the line; the first slice is told now if none
        is waiting for its turn.
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
        for _ in range(min(self._limit if limit is None else limit, len(answers))):
            waiting, result = answers.popleft()
            waiting.callback(result)
        if answers and self._call is None:
            self._call = self._clock.callLater(0, self._next)


__all__ = ["HAND_BACK", "HandBack"]
