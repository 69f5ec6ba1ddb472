# -*- test-case-name: tests.test_pool,tests.test_pool_unit -*-
"""
Telling the pool's observer (L{taskd.observer.PoolObserver}) about calls
and workers, and what an operator may ask of running calls: the list,
and cancelling one by its number.
"""

from __future__ import annotations

from taskd._poolstate import PoolCall, PoolRooms, PoolWorker
from taskd._workerprocess import WorkerState
from taskd.observer import ObservedCall, workerEndReason


class Observing(PoolRooms):
    """
    A room of L{taskd.pool.ProcessPool}: see this module's docstring.
    """

    def running(self) -> list[ObservedCall]:
        """
        @return: the calls running in a worker now, in the order they were
            accepted (their C{number}, C{startedAt} and C{pid} are set only
            while the pool has an L{observer}).
        """
        calls = []
        for worker in self._processes:
            call = worker.call
            if call is not None and not call.done and worker.state is not WorkerState.ENDED:
                calls.append(call)
        return sorted(calls, key=lambda c: (c.number, c.submittedAt))

    def cancelCall(self, number: int) -> bool:
        """
        Cancel the call in flight (queued or running) with daemon-wide
        number C{number} (see L{ObservedCall.number}): its caller gets a
        C{CancelledError}, and its worker, if it runs, is replaced.

        @return: whether there was such a call.
        """
        for call in list(self._queue) + [c for w in self._processes for c in w.inFlight]:
            if call.number == number and not call.done:
                self._cancel(call)
                return True
        return False

    def _observe(self, call: PoolCall, origin: str | None) -> None:
        """
        Number a call accepted, note when and from whom, and tell the
        observer.  (Its start and end are told by L{taskd._dispatching.Dispatching._started}, L{taskd._endings.CallEndings._finish}
        and L{taskd._endings.CallEndings._cancel}.)
        """
        assert self.observer is not None
        call.origin = origin
        call.number = next(self._numbers)
        call.submittedAt = self.reactor.seconds()
        self.observer.callQueued(call)

    def _observeStart(self, worker: PoolWorker, call: PoolCall) -> None:
        assert self.observer is not None
        call.startedAt = now = self.reactor.seconds()
        call.pid = worker.pid
        self.observer.callStarted(call, worker.pid, now - call.submittedAt)

    def _observeEnd(self, call: PoolCall, outcome: str) -> None:
        assert self.observer is not None
        call.outcome = outcome
        started = call.startedAt
        self.observer.callEnded(
            call, outcome, None if started is None else self.reactor.seconds() - started
        )

    def _observeWorkerEnd(self, worker: PoolWorker, previous: WorkerState) -> None:
        assert self.observer is not None
        killedFor = retiredFor = None
        if previous is WorkerState.TERMINATING:
            first = worker.inFlight[0] if worker.inFlight else None
            # A call not over when its worker was killed timed out and
            # waits for its retry.
            killedFor = "" if first is None else first.outcome or ("" if first.done else "timeout")
        elif previous is WorkerState.RETIRING:
            retiredFor = worker.leavingBecause or ""
        self.observer.workerEnded(
            worker.pid, workerEndReason(killedFor, retiredFor, not self._serving())
        )
