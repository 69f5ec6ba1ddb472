# -*- test-case-name: tests.test_pool,tests.test_pool_unit -*-
"""
Stopping the pool: refusing calls, failing the queued ones, the grace
period for running ones, and knowing when every worker has ended.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from taskd import errors
from taskd._poolstate import PoolRooms, PoolState
from taskd._workerprocess import WorkerState


class Stopping(PoolRooms):
    """
    A room of L{taskd.pool.ProcessPool}: see this module's docstring.
    """

    def stop(self) -> Deferred[None]:
        """
        Stop: refuse new calls, fail queued ones with L{errors.PoolStopping},
        give running calls C{grace} seconds to finish (then fail them with
        L{errors.PoolStopping} and terminate their workers), and end every
        worker.

        @return: a C{Deferred} that fires when every worker process has
            exited.
        """
        if self.state is PoolState.NEW:
            self._go("abandon")
        if self.state is PoolState.STOPPED and not self._processes:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stopping.append(d)
        if self.state is PoolState.STOPPING:
            return d
        self._go("stop")
        for timer in self._restartTimers:
            timer.cancel()
        self._restartTimers.clear()
        if self._starting is not None:
            starting, self._starting = self._starting, None
            starting.errback(errors.PoolStopping("the pool was stopped while starting"))
        self._failQueue(errors.PoolStopping("the pool is stopping"))
        for call in list(self._retrying):
            self._finish(
                call,
                Failure(errors.PoolStopping("the pool is stopping before the call's retry", started=True)),
            )
        for worker in list(self._processes):
            # Calls waiting in a worker's pipe are not run; the worker may
            # have begun one already.
            for call in worker.waiting:
                self._finish(call, Failure(errors.PoolStopping("the pool is stopping", started=True)))
            if worker.state is WorkerState.STARTING:
                self._discard(worker)
            elif worker.state is WorkerState.READY and not worker.inFlight:
                self._release(worker)
        if any(self._busy(w) for w in self._processes):
            self._graceTimer = self.reactor.callLater(self.config.grace, self._graceOver)
        self._checkStopped()
        return d

    def _graceOver(self) -> None:
        self._graceTimer = None
        for worker in list(self._processes):
            # (Only the first call of a single-call worker is left by now.)
            for call in list(worker.inFlight):
                self._finish(
                    call,
                    Failure(
                        errors.PoolStopping(
                            f"task {call.name!r} did not finish within the "
                            f"{self.config.grace}-second shutdown grace period",
                            started=True,
                        )
                    ),
                )
            if worker.inFlight:
                self._discard(worker)

    def _checkStopped(self) -> None:
        if self.state is not PoolState.STOPPING or self._processes:
            return
        self._go("stopped")
        if self._graceTimer is not None and self._graceTimer.active():
            self._graceTimer.cancel()
        self._graceTimer = None
        waiting, self._stopping = self._stopping, []
        for d in waiting:
            d.callback(None)

    def _failQueue(self, error: Exception) -> None:
        for call in self._queue.drain():
            self._finish(call, Failure(error))
        if self._wakeTimer is not None:
            self._wakeTimer.cancel()
            self._wakeTimer = None
