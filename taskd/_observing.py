# -*- test-case-name: tests.test_pool,tests.test_pool_unit -*-
"""
Telling the pool's observer (L{taskd.observer.PoolObserver}) about calls
and workers, and what an operator may ask of running calls: the list,
and cancelling one by its number.

Every call is numbered when accepted and notes where and when it last
started (a few attribute stores, observer or not); what costs more per call
(counting, histograms) is the observer's, and only a call's end is told
to it.
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
            accepted.
        """
        calls = []
        for worker in self._processes:
            call = worker.call
            if call is not None and not call.done and worker.state is not WorkerState.ENDED:
                calls.append(call)
        return sorted(calls, key=lambda c: (c.number, c.submittedAt))

    def served(self) -> dict[int | None, int]:
        """
        @return: how many calls each worker process not yet ended has
            answered, by process id.
        """
        return {worker.pid: worker.calls for worker in self._processes}

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
