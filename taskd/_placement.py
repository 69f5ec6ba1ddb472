# -*- test-case-name: tests.test_pool,tests.test_pool_unit -*-
"""
Workers that run several calls at once (C{--threads}, C{async def}
tasks): their slots, which worker has room for a call of a given mode,
and stopping one call in such a worker without killing it.
"""

from __future__ import annotations

from taskd._poolstate import PoolCall, PoolRooms, PoolWorker
from taskd._slots import Slots
from taskd._workerprocess import WorkerState
from taskd.registry import ASYNC, PROCESS, THREAD


class MultiCallPlacement(PoolRooms):
    """
    A room of L{taskd.pool.ProcessPool}: see this module's docstring.
    """

    def _configureSlots(self) -> None:
        """
        Decide whether workers run several calls at once (with more than
        one thread each, or for C{async def} tasks), and how each task's
        calls run then.
        """
        registry, threads = self.registry, self.config.threads
        modes = {}
        for name in registry:
            mode = registry.mode(name)
            if mode == THREAD and threads == 1 and registry.options(name).mode is None:
                # With one thread a plain task keeps its worker to itself,
                # as it does where no task is async.
                mode = PROCESS
            if mode != THREAD:
                modes[name] = mode
        self._modes = modes
        asyncTasks = ASYNC in modes.values()
        if threads > 1 or asyncTasks:
            self._slots = Slots(threads, self.config.asyncConcurrency if asyncTasks else 0)

    def _roomFor(self, call: PoolCall) -> PoolWorker | None:
        """
        @return: the busy worker with fewest calls that has room for
            C{call} now, if any (idle workers are in C{_idle}).
        """
        best = None
        mode = call.mode
        for worker in self._live:
            if (
                worker.state is WorkerState.READY
                and worker.inFlight
                and not worker.exited
                and worker.fits(call, mode)
                and len(worker.inFlight) < self._capacity(worker)
            ):
                if best is None or len(worker.inFlight) < len(best.inFlight):
                    best = worker
        return best

    def _putBack(self, call: PoolCall) -> None:
        """
        Return C{call}, taken from the queue, to its front: no worker has
        room for its mode now.
        """
        if self._queue.limiters:
            self._queue.ended(call)
        self._queue.pushFront(call)

    def _stopIn(self, worker: PoolWorker, call: PoolCall) -> None:
        """
        Stop C{call}, which C{worker} runs (timed out or cancelled): kill
        the worker, unless it runs several calls at once and the call is
        not of mode C{PROCESS}; then ask the worker to stop it.
        """
        if worker.concurrent and call.mode != PROCESS:
            worker.cancel(call)
        else:
            self._discard(worker)
