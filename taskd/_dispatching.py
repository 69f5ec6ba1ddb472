# -*- test-case-name: tests.test_pool,tests.test_pool_unit -*-
"""
Handing queued calls to workers: an idle worker, a busy one's pipe (with
C{prefetch}), or a free slot of a worker that runs several calls at once;
waking up when a rate limit lets a held call start.

A call goes ahead into a busy worker's pipe only if the calls the worker
holds, with it, are expected to run within C{prefetchTime}: each is
expected to take as long as its task's calls have been taking (the pool
learns it from their replies: a longer run counts at once, a shorter one
a quarter of the way), and a task none of whose calls has ended yet is
expected to be quick.  So a task seen to be long waits for an idle
worker, and no call is sent ahead behind it.
"""

from __future__ import annotations

from taskd._poolstate import PoolCall, PoolRooms, PoolWorker
from taskd._workerprocess import WorkerState


#: How far a shorter run moves a task's expected run time towards it.
SHORTER_WEIGHT = 0.25


class Dispatching(PoolRooms):
    """
    A room of L{taskd.pool.ProcessPool}: see this module's docstring.
    """

    def _ran(self, name: str, seconds: float) -> None:
        """
        A call of task C{name} ran for C{seconds} (until its reply, or its
        timeout): update what the task's calls are expected to take.
        """
        runTimes = self._runTimes
        expected = runTimes.get(name)
        if expected is None or seconds >= expected:
            runTimes[name] = seconds
        else:
            runTimes[name] = expected + (seconds - expected) * SHORTER_WEIGHT

    def _fitsAhead(self, worker: PoolWorker, call: PoolCall | None) -> bool:
        """
        @return: whether C{call} (or, if C{None}, a call expected to be
            quick) may wait in busy C{worker}'s pipe: the calls it holds,
            with this one, are expected to run within C{prefetchTime}.
        """
        within = self.config.prefetchTime
        if within is None:
            return True
        expected = 0.0 if call is None else self._runTimes.get(call.name, 0.0)
        return worker.expected + expected <= within

    def _capacity(self, worker: PoolWorker) -> int:
        """
        @return: how many calls C{worker} may hold now.
        """
        depth = self.config.prefetch if self._slots is None else self._slots.total
        if self.config.maxTasksPerWorker is not None:
            depth = min(depth, self.config.maxTasksPerWorker - worker.calls)
        return depth

    def _sendAheadTo(self, call: PoolCall | None) -> PoolWorker | None:
        """
        @param call: the call to place, if known: needed when workers run
            several calls at once.
        @return: a busy worker that may take C{call} now (it runs several
            calls at once, and has room), or in its pipe, if sending ahead
            is on (and, if C{call} is given, it fits: see L{_fitsAhead}).
        """
        if self._slots is not None:
            return None if call is None else self._roomFor(call)
        if self.config.prefetch == 1:
            return None
        best = None
        for worker in self._live:
            if (
                worker.state is WorkerState.READY
                and worker.inFlight
                and len(worker.inFlight) < self._capacity(worker)
                and not worker.exited
                and self._fitsAhead(worker, call)
            ):
                if best is None or len(worker.inFlight) < len(best.inFlight):
                    best = worker
        return best

    def _feed(self, worker: PoolWorker) -> None:
        """
        Give C{worker} queued calls up to its capacity; idle it if none.
        """
        capacity = self._capacity(worker)
        queue = self._queue
        while queue.size and len(worker.inFlight) < capacity:
            call = queue.next()
            if call is None:
                break
            if self._slots is not None and not worker.fits(call, call.mode):
                other = self._roomFor(call)
                if other is None:
                    self._putBack(call)
                    break
                self._run(other, call)
                continue
            if worker.inFlight and not self._fitsAhead(worker, call):
                self._putBack(call)
                break
            self._run(worker, call)
        if not worker.inFlight:
            self._idle.append(worker)
            if queue.size:
                self._wakeLater()

    def _dispatch(self) -> None:
        """
        Hand the queued calls that may start now to idle workers, then (with
        C{prefetch}) send them ahead to busy ones; if some are held back by
        a rate limit, wake up when the next may start.
        """
        queue = self._queue
        idle = self._idle
        while queue.size and idle:
            worker = idle.pop()
            self._feed(worker)
            if idle and idle[-1] is worker:
                return  # nothing may start now (_feed set the wake-up)
        if self._slots is not None:
            while queue.size:
                call = queue.next()
                if call is None:
                    return
                busy = self._roomFor(call)
                if busy is None:
                    self._putBack(call)
                    return
                self._run(busy, call)
            return
        while queue.size:
            busy = self._sendAheadTo(None)
            if busy is None:
                return
            call = queue.next()
            if call is None:
                return
            if not self._fitsAhead(busy, call):
                self._putBack(call)
                return
            self._run(busy, call)

    def _wakeLater(self) -> None:
        """
        Calls wait that are held back by their tasks' limits while a worker
        could take them: dispatch again when the earliest rate limit lets
        one start.  (A concurrency cap frees up when a call ends; see
        L{taskd._endings.CallEndings._finish}.)
        """
        at = self._queue.wakeAt()
        if at is None:
            return
        timer = self._wakeTimer
        if timer is not None:
            if timer.getTime() <= at:
                return
            timer.cancel()
        self._wakeTimer = self.reactor.callLater(
            max(0.0, at - self.reactor.seconds()), self._wake
        )

    def _wake(self) -> None:
        self._wakeTimer = None
        if self._serving():
            self._dispatch()

    def _run(self, worker: PoolWorker, call: PoolCall) -> None:
        if call.timer is not None:
            # Its deadline: it leaves the queue in time.
            call.timer.cancel()
            call.timer = None
        call.worker = worker
        if not worker.concurrent and self.config.prefetch != 1:
            call.expected = expected = self._runTimes.get(call.name, 0.0)
            worker.expected += expected
        worker.run(call, call.mode)
        if call.onStart is not None:
            call.onStart()
        if worker.concurrent:
            # It starts now, beside the worker's other calls.
            call.startedAt = self.reactor.seconds()
            call.pid = worker.pid
            if call.timeout is not None:
                call.timer = self.reactor.callLater(call.timeout, self._timedOut, call)
        elif len(worker.inFlight) == 1:
            self._started(worker)

    def _started(self, worker: PoolWorker) -> None:
        """
        The first call in C{worker}'s pipe is now the one it runs: start its
        clock.  A call cancelled (or failed by a stop) while it waited in
        the pipe is not let run: the worker is stopped, and the calls behind
        it go back to the queue when the worker has ended.
        """
        call = worker.inFlight[0]
        if call.done:
            self._discard(worker)
            return
        if call.timeout is not None:
            call.timer = self.reactor.callLater(call.timeout, self._timedOut, call)
        # For the list of running calls (taskd._observing.running).
        call.startedAt = self.reactor.seconds()
        call.pid = worker.pid
