# -*- test-case-name: tests.test_callmany -*-
"""
Many calls of one task, a bounded number at a time: what
L{taskd.client.Caller.callMany} runs.

L{CallBatch} makes its calls on one connection without a C{Deferred}
each (L{taskd.client.TaskClientProtocol.callInto}); L{DeferredBatch} makes
them through any L{taskd.client.Caller} (a reconnecting client's calls
may move between connections), one C{Deferred} a call.  Both keep at most
C{window} calls unanswered, take the argument lists lazily, fire with the
results in order, and stop at the first failure: calls not yet sent are
not sent, and those still unanswered are cancelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from taskd import errors

if TYPE_CHECKING:
    from taskd._clientprotocol import TaskClientProtocol

#: How many calls L{taskd.client.Caller.callMany} keeps unanswered at once,
#: by default: the daemon's default C{maxInFlight}.
DEFAULT_WINDOW = 100


def checkWindow(window: int) -> None:
    """
    @raise ValueError: unless C{window} is a positive integer.
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive integer, not {window!r}")


class _Slot:
    """
    Where one call's outcome goes: its place in the batch's results.
    """

    __slots__ = ("batch", "index", "id")

    def __init__(self, batch: CallBatch, index: int) -> None:
        self.batch = batch
        self.index = index
        self.id = 0

    def callback(self, result: Any) -> None:
        batch = self.batch
        if batch.unanswered.pop(self.id, None) is None:
            return
        batch.results[self.index] = result
        batch.fill()

    def errback(self, error: Any) -> None:
        batch = self.batch
        if batch.unanswered.pop(self.id, None) is None:
            return
        batch.stop(error)


class CallBatch:
    """
    Calls of task C{name}, one per argument list, on one connection.

    @ivar done: fires with the results, in order, or fails with the first
        error; cancelling it cancels the unanswered calls.
    @ivar results: the results so far (C{None} where none is yet).
    @ivar unanswered: the calls sent and not answered, by id.
    """

    def __init__(
        self, protocol: TaskClientProtocol, name: str, argLists: Iterable[Sequence[Any]], window: int
    ) -> None:
        checkWindow(window)
        self._protocol = protocol
        self._name = name
        self._argLists: Iterator[Sequence[Any]] | None = iter(argLists)
        self._window = window
        self.results: list[Any] = []
        self.unanswered: dict[int, _Slot] = {}
        self.done: Deferred[list[Any]] = Deferred(self._cancel)
        self._over = False

    def fill(self) -> None:
        """
        Send calls until C{window} are unanswered or none is left; fire
        L{done} once every call is answered.
        """
        argLists, unanswered, results = self._argLists, self.unanswered, self.results
        if argLists is None:
            if not unanswered and not self._over:
                self._over = True
                self.done.callback(results)
            return
        window = self._window
        callInto, name = self._protocol.callInto, self._name
        while len(unanswered) < window:
            for args in argLists:
                break
            else:
                self._argLists = None
                if not unanswered:
                    self._over = True
                    self.done.callback(results)
                return
            slot = _Slot(self, len(results))
            results.append(None)
            try:
                slot.id = callInto(name, args, slot)
            except errors.TaskdError as e:
                self.stop(e)
                return
            unanswered[slot.id] = slot

    def stop(self, error: Any) -> None:
        """
        Fail L{done} with C{error}, send nothing more, and cancel the
        calls still unanswered.
        """
        if self._over:
            return
        self._over = True
        self._argLists = None
        self._cancelUnanswered()
        self.done.errback(error)

    def _cancel(self, d: Deferred[list[Any]]) -> None:
        self._over = True
        self._argLists = None
        self._cancelUnanswered()

    def _cancelUnanswered(self) -> None:
        unanswered, self.unanswered = self.unanswered, {}
        for id in unanswered:
            self._protocol.cancelCall(id)


class DeferredBatch:
    """
    L{CallBatch} through C{call(name, args)}, which returns a C{Deferred}
    per call.
    """

    def __init__(
        self,
        call: Callable[[str, Sequence[Any]], Deferred[Any]],
        name: str,
        argLists: Iterable[Sequence[Any]],
        window: int,
    ) -> None:
        checkWindow(window)
        self._call = call
        self._name = name
        self._argLists: Iterator[Sequence[Any]] | None = iter(argLists)
        self._window = window
        self.results: list[Any] = []
        self.unanswered: dict[int, Deferred[Any]] = {}
        self.done: Deferred[list[Any]] = Deferred(self._cancel)
        self._over = False

    def fill(self) -> None:
        """
        Send calls until C{window} are unanswered or none is left; fire
        C{done} once every call is answered.
        """
        unanswered = self.unanswered
        while self._argLists is not None and len(unanswered) < self._window:
            for args in self._argLists:
                break
            else:
                self._argLists = None
                break
            index = len(self.results)
            self.results.append(None)
            d = self._call(self._name, args)
            unanswered[index] = d
            d.addCallbacks(self._answered, self._failed, (index,), errbackArgs=(index,))
        if self._argLists is None and not unanswered and not self._over:
            self._over = True
            self.done.callback(self.results)

    def _answered(self, result: Any, index: int) -> None:
        if self.unanswered.pop(index, None) is None:
            return
        self.results[index] = result
        self.fill()

    def _failed(self, failure: Failure, index: int) -> None:
        if self.unanswered.pop(index, None) is None or self._over:
            return  # cancelled by us
        self._over = True
        self._argLists = None
        unanswered, self.unanswered = self.unanswered, {}
        for d in unanswered.values():
            d.cancel()
        self.done.errback(failure)

    def _cancel(self, d: Deferred[list[Any]]) -> None:
        self._over = True
        self._argLists = None
        unanswered, self.unanswered = self.unanswered, {}
        for call in unanswered.values():
            call.cancel()
