# -*- test-case-name: tests.test_multicall -*-
"""
The books of a worker that runs several calls at once, kept by the pool's
side of it (L{taskd._workerprocess.WorkerProcess}): how many calls of each
mode it may run (L{Slots}), and the calls it runs by their tags
(L{CallBook}).  See L{taskd._multicall} for the worker's side.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from attrs import frozen

from taskd.registry import ASYNC, PROCESS, THREAD

#: The largest tag; the next one after it is 1 again.
MAX_TAG = 0xFFFFFFFF


@frozen
class Slots:
    """
    How many calls a worker that runs several at once may run: a call of
    mode C{THREAD} takes one of its C{threads}, one of mode C{ASYNC} one
    of its C{asyncCalls}, one of mode C{PROCESS} the whole worker.

    @ivar threads: its threads for plain tasks.
    @ivar asyncCalls: how many C{async def} calls it may run at once.
    """

    threads: int
    asyncCalls: int

    @property
    def total(self) -> int:
        """
        The most calls such a worker may hold.
        """
        return self.threads + self.asyncCalls


C = TypeVar("C")


class CallBook(Generic[C]):
    """
    The calls a worker runs, by tag, and what they use of its L{Slots}.
    """

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self._next = 1
        self._calls: dict[int, C] = {}
        self._tags: dict[C, int] = {}
        self._modes: dict[int, str] = {}
        self._used = {THREAD: 0, ASYNC: 0, PROCESS: 0}

    def fits(self, mode: str) -> bool:
        """
        @return: whether there is room for one more call of C{mode}.
        """
        used = self._used
        if used[PROCESS]:
            return False
        if mode == THREAD:
            return used[THREAD] < self.slots.threads
        if mode == ASYNC:
            return used[ASYNC] < self.slots.asyncCalls
        return not self._calls

    def add(self, call: C, mode: str) -> int:
        """
        Book C{call}, of C{mode}.

        @return: its tag.
        """
        tag = self._next
        self._next = tag % MAX_TAG + 1
        self._calls[tag] = call
        self._tags[call] = tag
        self._modes[tag] = mode
        self._used[mode] += 1
        return tag

    def get(self, tag: int) -> C | None:
        """
        @return: the call tagged C{tag}, if booked.
        """
        return self._calls.get(tag)

    def tagOf(self, call: C) -> int | None:
        """
        @return: C{call}'s tag, if booked.
        """
        return self._tags.get(call)

    def remove(self, tag: int) -> C:
        """
        Take the call tagged C{tag} off the books (it was answered).

        @return: that call.
        """
        call = self._calls.pop(tag)
        del self._tags[call]
        self._used[self._modes.pop(tag)] -= 1
        return call
