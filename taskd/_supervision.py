# -*- test-case-name: tests.test_pool,tests.test_pool_unit -*-
"""
Supervising the workers: spawning, letting go (gracefully or at once),
replacing the ones that end within a respawn budget, backing off while
workers cannot start, resizing the pool and rolling restarts.
"""

from __future__ import annotations

from attrs import define, evolve, field
from twisted.internet.defer import Deferred, fail

from taskd import errors
from taskd._poolstate import PoolRooms, PoolWorker
from taskd._workerprocess import WorkerProcess, WorkerState


@define
class Rolling:
    """
    A rolling restart under way (see L{ProcessPool.restartWorkers}).

    @ivar old: the workers still to replace, the next first.
    @ivar fresh: whether the next one's replacement is starting.
    """

    old: list[PoolWorker]
    fresh: bool = False
    replaced: int = 0
    _waiting: list[Deferred[int]] = field(factory=list)

    def waiting(self) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self._waiting.append(d)
        return d

    def done(self, replaced: int) -> None:
        for d in self._waiting:
            d.callback(replaced)

    def failed(self, error: Exception) -> None:
        for d in self._waiting:
            d.errback(error)


class WorkerSupervision(PoolRooms):
    """
    A room of L{taskd.pool.ProcessPool}: see this module's docstring.
    """

    def _spawn(self) -> None:
        try:
            worker: PoolWorker = WorkerProcess.spawn(self.reactor, self, self.config, self._slots, self.writes)
        except Exception as e:
            self._startFailed(errors.WorkerStartError(f"cannot spawn a worker: {e}"))
            return
        self._live.add(worker)
        self._processes.add(worker)

    def _anyReady(self) -> bool:
        return any(w.state is WorkerState.READY for w in self._live)

    def _release(self, worker: PoolWorker) -> None:
        """
        Let a worker go gracefully: it exits when its request pipe closes.
        """
        self._forget(worker)
        worker.retire()

    def _discard(self, worker: PoolWorker) -> None:
        """
        Let a worker go at once: terminate it.  The call it runs must have
        been finished by the caller; the calls waiting in its pipe are
        settled when it has ended (see L{taskd.pool.ProcessPool.workerEnded}).
        """
        if worker.leaving:
            return
        self._forget(worker)
        worker.terminate()
        self._replace(None)

    def _respawnDelay(self) -> float:
        """
        How long the replacement of a killed or crashed worker waits, so
        that no caller (a call-then-cancel loop, a task that always
        crashes) can make the pool spawn processes at an unbounded rate:
        C{workers} replacements may start at once, then one every
        L{PoolConfig.minRestartDelay} seconds (a token bucket).
        """
        now = self.reactor.seconds()
        interval = max(self.config.minRestartDelay, 1e-3)
        capacity = float(self.config.workers)
        self._respawnTokens = min(
            capacity, self._respawnTokens + (now - self._respawnTokensAt) / interval
        )
        self._respawnTokensAt = now
        self._respawnTokens -= 1
        return 0.0 if self._respawnTokens >= 0 else -self._respawnTokens * interval

    def _forget(self, worker: PoolWorker) -> None:
        self._live.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)

    def _replace(self, delay: float | None = 0.0) -> None:
        """
        Start a worker in place of one that is gone, after C{delay} seconds
        (C{None}: a killed or crashed worker's; see L{_respawnDelay}), if
        the pool is short of one then.
        """
        if not self._serving():
            return
        if len(self._live) + len(self._restartTimers) >= self.config.workers:
            return
        if delay is None:
            delay = self._respawnDelay()
        if delay <= 0:
            self._spawn()
            return

        def restart() -> None:
            self._restartTimers.discard(timer)
            self._spawn()

        timer = self.reactor.callLater(delay, restart)
        self._restartTimers.add(timer)

    def _startFailed(self, error: errors.WorkerStartError) -> None:
        if self._rolling is not None:
            self._rollFailed(error)
        if self._starting is not None:
            # Fail start() only once every worker is gone again.
            starting, self._starting = self._starting, None
            self.stop().addBoth(lambda _: starting.errback(error))
            return
        self._startError = error
        if not self._anyReady():
            self._failQueue(error)
        delay = self._restartDelay
        self._restartDelay = min(delay * 2, self.config.maxRestartDelay)
        self._replace(delay)

    def resize(self, workers: int) -> None:
        """
        Run C{workers} worker processes from now on, without failing a call:
        new ones start at once; of the ones too many, starting and idle ones
        go at once and busy ones when their calls are answered (they take
        no new call).

        @raise ValueError: if C{workers} is out of L{PoolConfig}'s range.
        """
        self.config = evolve(self.config, workers=workers)
        if not self._serving():
            return
        self.log.info("pool resized to {n} workers", n=workers)
        excess = len(self._live) - workers
        if excess < 0:
            for _ in range(-excess - len(self._restartTimers)):
                self._spawn()
            return
        order = {WorkerState.STARTING: 0, WorkerState.READY: 1}
        for worker in sorted(self._live, key=lambda w: (order.get(w.state, 2), len(w.inFlight))):
            if excess <= 0:
                break
            excess -= 1
            self._letGo(worker)

    def restartWorkers(self) -> Deferred[int]:
        """
        A rolling restart: replace every worker, one at a time, with a fresh
        one that imports the task modules again, without failing a call.
        Each fresh worker starts first; once it is ready, the one it
        replaces takes no new call and exits when its calls are answered.

        @return: a C{Deferred} firing with the number of workers replaced,
            or failing with L{errors.WorkerStartError} if a fresh worker
            cannot start (the remaining old ones then keep serving), or
            with L{errors.PoolStopping}.
        """
        if not self._serving():
            return fail(errors.PoolStopping(f"the pool is not running (it is {self.state.value})"))
        if self._rolling is not None:
            return self._rolling.waiting()
        self._rolling = Rolling(sorted(self._live, key=lambda w: w.pid or 0))
        d = self._rolling.waiting()
        self.log.info("rolling restart of {n} workers", n=len(self._rolling.old))
        self._rollOn()
        return d

    def _letGo(self, worker: PoolWorker) -> None:
        """
        Let C{worker} go without failing its calls: at once if it is idle
        or starting; when its calls are answered if it is busy.
        """
        if worker.state is WorkerState.STARTING:
            self._forget(worker)
            worker.terminate()
        elif worker.inFlight:
            self._forget(worker)
            self._surplus = {w for w in self._surplus if w.state is WorkerState.READY}
            self._surplus.add(worker)
        else:
            self._release(worker)

    def _rollOn(self) -> None:
        """
        The next step of the rolling restart: start the next fresh worker,
        or, when every old one is let go, say it is done.
        """
        rolling = self._rolling
        assert rolling is not None
        while rolling.old:
            if rolling.old[0] in self._live:
                rolling.fresh = True
                self._spawn()
                return
            rolling.old.pop(0)
        self._rolling = None
        self.log.info("rolling restart done: {n} workers replaced", n=rolling.replaced)
        rolling.done(rolling.replaced)

    def _rolled(self) -> None:
        """
        A worker became ready during a rolling restart: if it is the fresh
        one, let the old one it replaces go, and go on.
        """
        rolling = self._rolling
        if rolling is None or not rolling.fresh:
            return
        rolling.fresh = False
        old = rolling.old.pop(0)
        if old in self._live:
            rolling.replaced += 1
            self._letGo(old)
        self._rollOn()

    def _rollFailed(self, error: errors.WorkerStartError) -> None:
        rolling, self._rolling = self._rolling, None
        if rolling is not None:
            rolling.failed(error)
