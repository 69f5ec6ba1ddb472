# -*- test-case-name: tests.test_pool,tests.test_pool_unit -*-
"""
The scheduler: a pool of long-lived worker processes running registered
tasks.

L{ProcessPool} keeps C{workers} L{WorkerProcess}es running, queues calls
in a bounded L{CallQueue} (a FIFO unless priorities, concurrency caps or
rate limits are used: see C{docs/scheduling.md}) and hands each to a
worker: an idle one, or (with C{prefetch}) a busy one's pipe.  It owns every policy: limits, timeouts,
cancellation, crash replacement with backoff, recycling, and a graceful
stop.  It takes a task name and the arguments as a JSON object and gives
back the task's result as JSON, so a server can pass bytes from the
network to a worker and back without decoding and encoding them again.

L{ProcessPool} is one state machine, built from rooms that each hold one
concern (L{taskd._poolstate} declares the state they share): this module
holds what its workers tell it (the C{WorkerEvents}), its counters and how
it starts; L{taskd._accepting} takes calls in (C{submit}, C{submitEncoded},
C{relay}), L{taskd._dispatching} hands them to workers,
L{taskd._endings} ends them, L{taskd._retrying} retries them,
L{taskd._supervision} keeps the workers, L{taskd._placement} places calls
in workers that run several at once, L{taskd._observing} tells the
observer, and L{taskd._stopping} stops.  The policies that choose the
next call (priorities, caps, rates) are in L{taskd._queue}.

The pool's lifecycle (L{PoolState}, L{POOL_TRANSITIONS})::

    NEW --start--> STARTING --started--> RUNNING
     |                 |                    |
     +--abandon--+     +-------stop---------+--> STOPPING --stopped--> STOPPED
                 +-----------------------------------------------------^
"""

from __future__ import annotations

import random
from collections import deque
from itertools import count
from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd import errors
from taskd._accepting import Accepting
from taskd._children import describeExit
from taskd._dispatching import Dispatching
from taskd._endings import CallEndings
from taskd._lifecycle import Lifecycle
from taskd._observing import Observing
from taskd._pipes import WriteBatch
from taskd._placement import MultiCallPlacement
from taskd._poolstate import (
    POOL_TRANSITIONS,
    Answer,
    CallCancelled,
    PoolCall,
    PoolState,
    PoolWorker,
)
from taskd._queue import CallQueue
from taskd._retrying import Retrying
from taskd._slots import Slots
from taskd._stopping import Stopping
from taskd._supervision import Rolling, WorkerSupervision
from taskd._workerprocess import WorkerState
from taskd.config import PoolConfig
from taskd.observer import PoolObserver
from taskd.registry import (
    Registry,
    TaskOptions,
    loadTaskModules,
    registry as defaultRegistry,
)



class ProcessPool(
    Accepting,
    Dispatching,
    CallEndings,
    Retrying,
    WorkerSupervision,
    MultiCallPlacement,
    Observing,
    Stopping,
    Lifecycle[PoolState],
):
    """
    A pool of worker processes running registered tasks.

    @ivar config: how it runs (a L{PoolConfig}).  It may be replaced (with
        C{attrs.evolve}) while the pool runs; a new C{workers} count takes
        effect as workers are replaced.
    @ivar registry: the tasks it accepts calls for.
    @ivar reactor: the reactor it runs on.
    @ivar state: where it is in its life (L{POOL_TRANSITIONS}).
    @ivar jitter: returns a number from 0 to 1 that spreads each retry's
        delay over its upper half (C{random.random}; tests replace it).
    @ivar observer: told of calls and workers (a
        L{taskd.observer.PoolObserver}), or C{None}.
    """

    log = Logger()
    transitions = POOL_TRANSITIONS

    def __init__(
        self,
        reactor: Any,
        tasks: Sequence[str] = ("taskd.examples",),
        workers: int | None = None,
        *,
        registry: Registry | None = None,
        config: PoolConfig | None = None,
        **options: Any,
    ) -> None:
        """
        @param tasks: see L{PoolConfig.tasks}.
        @param workers: see L{PoolConfig.workers}; one per CPU by default.
        @param options: any other field of L{PoolConfig} (C{timeout=30},
            C{maxQueue=100}, ...).
        @param config: a whole L{PoolConfig}, instead of C{tasks},
            C{workers} and C{options}.
        @param registry: the tasks' registry (the one C{@task} fills by
            default).
        @raise ValueError: for a value out of its range.
        """
        if config is None:
            if workers is not None:
                options["workers"] = workers
            config = PoolConfig(tasks=tasks, **options)
        self.config = config
        self.reactor = reactor
        self.registry = defaultRegistry if registry is None else registry
        self.state = PoolState.NEW
        self._queue: CallQueue[PoolCall] = CallQueue(reactor.seconds, config.agingInterval)
        self._wakeTimer: IDelayedCall | None = None
        self._idle: list[PoolWorker] = []
        # Workers counted against capacity: starting or ready.
        self._live: set[PoolWorker] = set()
        # Every worker process not yet ended, leaving ones included.
        self._processes: set[PoolWorker] = set()
        self._restartDelay = config.minRestartDelay
        self._restartTimers: set[IDelayedCall] = set()
        self._respawnTokens = float(config.workers)
        self._respawnTokensAt = reactor.seconds()
        self._memoryRecycled = 0
        self._startError: errors.WorkerStartError | None = None
        self._starting: Deferred[None] | None = None
        self._stopping: list[Deferred[None]] = []
        self._graceTimer: IDelayedCall | None = None
        # Tasks with retries, and calls waiting for their next attempt.
        self._retryPolicies: dict[str, TaskOptions] = {}
        self._retrying: set[PoolCall] = set()
        # How long each task's calls have been taking, with prefetch (see
        # taskd._dispatching).
        self._runTimes: dict[str, float] = {}
        self.jitter: Callable[[], float] = random.random
        # Workers that run several calls at once: their slots, and the
        # tasks whose mode is not THREAD.
        self._slots: Slots | None = None
        self._modes: dict[str, str] = {}
        self.observer: PoolObserver | None = None
        self._numbers = count(1)
        # Ready workers let go once idle (see resize), and the rolling
        # restart under way (see restartWorkers).
        self._surplus: set[PoolWorker] = set()
        self._rolling: Rolling | None = None
        #: Holds the frames written to workers while a caller relays a
        #: burst of calls (L{WriteBatch.hold}, then L{WriteBatch.release}):
        #: one write per worker for the burst.  The pool holds them itself
        #: while it handles a chunk of a worker's replies.
        self.writes = WriteBatch()

    # -- public API -------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Import the task modules here, start the workers and wait until all
        of them are ready.

        @return: a C{Deferred} that fires with C{None} once every worker is
            ready, or fails with the import error, C{ValueError} for task
            limits (L{PoolConfig.taskLimits}) of a task no module
            registers, or L{errors.WorkerStartError} (after which the pool
            is stopped).
        """
        if self.state is not PoolState.NEW:
            return fail(RuntimeError(f"cannot start a pool that is {self.state.value}"))
        try:
            loadTaskModules(self.config.tasks)
            unknown = sorted(set(self.config.taskLimits) - set(self.registry))
            if unknown:
                raise ValueError(
                    f"task limits are set for {', '.join(map(repr, unknown))}, "
                    "which no task module registers"
                )
        except Exception:
            self._go("abandon")
            return fail()
        self._configureQueue()
        self._configureSlots()
        self._go("start")
        starting = self._starting = Deferred()
        for _ in range(self.config.workers):
            if self._starting is not starting:
                break  # a spawn failed and stopped the pool
            self._spawn()
        return starting

    def taskPolicies(self) -> dict[str, TaskOptions]:
        """
        @return: each task's scheduling options: its C{@task(...)} options,
            with L{PoolConfig.taskLimits} over them; tasks with none are
            left out.
        """
        policies = self.registry.optionsByName()
        for name, override in self.config.taskLimits.items():
            if name in policies:
                policies[name] = policies[name].merged(override)
            else:
                policies[name] = override
        return policies

    def _configureQueue(self) -> None:
        """
        Give the queue each task's policies (see L{taskPolicies}).
        """
        policies = self.taskPolicies()
        self._queue.agingInterval = self.config.agingInterval
        self._queue.configure(policies)
        self._retryPolicies = {
            name: options for name, options in policies.items() if options.retries
        }

    def stats(self) -> dict[str, Any]:
        """
        @return: counts of workers and calls, for monitoring: integers
            (C{retrying}: calls waiting for their next attempt), and
            (C{queuedByPriority}, C{queuedByTask}) the queued calls counted
            by priority (as a string, highest first) and by task name.
        """
        return {
            "workers": len(self._live),
            "idle": len(self._idle),
            "busy": sum(1 for w in self._live if self._busy(w)),
            "queued": self._queue.size,
            "processes": len(self._processes),
            "memoryRecycled": self._memoryRecycled,
            "queuedByPriority": self._queue.byPriority(),
            "queuedByTask": self._queue.byTask(),
            "retrying": len(self._retrying),
        }

    def pids(self) -> set[int]:
        """
        @return: the process ids of every worker process not yet ended.
        """
        return {
            w.pid
            for w in self._processes
            if w.pid is not None and w.state is not WorkerState.ENDED
        }

    # -- what workers tell the pool (WorkerEvents) ------------------------

    def workerReady(self, worker: PoolWorker) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerReady}.
        """
        self.log.info("worker {pid} started", pid=worker.pid)
        if self.observer is not None:
            self.observer.workerStarted(worker.pid)
        self._restartDelay = self.config.minRestartDelay
        self._startError = None
        if self.state is PoolState.STOPPING:
            self._release(worker)
            return
        self._feed(worker)
        if self._rolling is not None:
            self._rolled()
        if self._starting is not None and all(
            w.state is not WorkerState.STARTING for w in self._live
        ):
            starting, self._starting = self._starting, None
            self._go("started")
            starting.callback(None)

    def workerReplied(self, worker: PoolWorker, call: PoolCall, reply: bytes | errors.TaskdError) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerReplied}.  A reply
        for a call the pool no longer has on this worker (it timed out or
        was cancelled and waits for a retry, or runs elsewhere now) is
        dropped.
        """
        if call.worker is worker:
            if call.expected:
                worker.expected -= call.expected
            if call.startedAt is not None and self.config.prefetch != 1 and not worker.concurrent:
                self._ran(call.name, self.reactor.seconds() - call.startedAt)
            self._finish(call, reply if isinstance(reply, bytes) else Failure(reply))
        if not worker.inFlight:
            worker.expected = 0.0  # (no rounding left over)
        # (A worker that replies is READY, or being let go; or it has exited
        # and its last replies are being read: it takes nothing more.)
        if worker.state is not WorkerState.READY or worker.exited:
            return  # being let go; workerEnded settles the rest
        if worker.inFlight and not worker.concurrent:
            self._started(worker)
            if worker.state is not WorkerState.READY:
                return
        if not self._serving():
            if not worker.inFlight:
                self._release(worker)
                self._checkStopped()
        elif (
            self.config.maxTasksPerWorker is not None
            and worker.calls >= self.config.maxTasksPerWorker
        ):
            self._release(worker)
            self._replace()
        elif worker in self._surplus:
            if not worker.inFlight:
                self._surplus.discard(worker)
                self._release(worker)
        else:
            self._feed(worker)

    def workerProgress(self, worker: PoolWorker, call: PoolCall, report: bytes) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerProgress}.
        """
        if call.progress is not None and not call.done:
            try:
                call.progress(report)
            except Exception:
                self.log.failure("a progress callback of task {name!r} failed", name=call.name)

    def workerMisbehaved(self, worker: PoolWorker, error: errors.TaskdError) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerMisbehaved}.
        """
        call = worker.call
        self._discard(worker)
        if call is not None:
            self._finish(call, Failure(error))

    def workerLeaving(self, worker: PoolWorker, reason: str) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerLeaving}.  A worker
        over its memory limit is replaced at once; one that received
        SIGTERM after L{PoolConfig.minRestartDelay} (by then a daemon that
        is being stopped as a whole is stopping, and starts none).
        """
        if worker.state is not WorkerState.READY:
            return
        if reason == "memory":
            self._memoryRecycled += 1
        self._release(worker)
        self._replace(0.0 if reason in ("memory", "stuck") else self.config.minRestartDelay)

    def workerEnded(self, worker: PoolWorker, reason: Failure, previous: WorkerState) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerEnded}.
        """
        wasLive = worker in self._live
        if self.observer is not None:
            self._observeWorkerEnd(worker, previous)
        self._forget(worker)
        how = describeExit(reason)
        started = worker.started()
        inFlight, worker.inFlight = worker.inFlight, deque()
        for _ in range(started):
            # Every reply the worker wrote has been read by now, so these
            # calls were running; the others never started.  A call the
            # pool has moved on from (it timed out here and waits for its
            # retry, or runs elsewhere) is not this worker's to settle.
            call = inFlight.popleft()
            if call.worker is worker:
                self._finish(
                    call,
                    Failure(
                        errors.WorkerCrashed(
                            f"the worker running task {call.name!r} (pid {worker.pid}) {how}"
                        )
                    ),
                )
        self._requeue(deque(call for call in inFlight if call.worker is worker))
        if previous is WorkerState.STARTING and wasLive:
            error = worker.startError or errors.WorkerStartError(
                f"worker {worker.pid} {how} before it was ready"
            )
            self.log.error(
                "worker {pid} could not start: {message}\n{traceback}",
                pid=worker.pid,
                message=error.message,
                traceback=error.remoteTraceback,
            )
            self._startFailed(error)
        else:
            self.log.info("worker {pid} {how}", pid=worker.pid, how=how)
            if wasLive:
                self._replace(None)

    def workerGone(self, worker: PoolWorker) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerGone}.
        """
        self._processes.discard(worker)
        self._checkStopped()

    # -- shared by the rooms ----------------------------------------------

    def _serving(self) -> bool:
        state = self.state
        return state is PoolState.RUNNING or state is PoolState.STARTING

    @staticmethod
    def _busy(worker: PoolWorker) -> bool:
        return worker.state is WorkerState.READY and bool(worker.inFlight)


class PoolService(Service):
    """
    A L{ProcessPool} as a service: started with its parent, and stopping
    (with the pool's grace period) before its parent's C{stopService} is
    done.
    """

    log = Logger()

    def __init__(
        self, pool: ProcessPool, onStartFailure: Callable[[], object] | None = None
    ) -> None:
        """
        @param onStartFailure: called (after the failure is logged) if the
            pool cannot start; the daemon stops its reactor.
        """
        self.pool = pool
        self._onStartFailure = onStartFailure

    def startService(self) -> None:
        super().startService()
        self.pool.start().addCallbacks(self._started, self._startFailed)

    def _started(self, _: None) -> None:
        self.log.info(
            "pool ready: {n} worker{s} running {tasks}",
            n=self.pool.config.workers,
            s="" if self.pool.config.workers == 1 else "s",
            tasks=", ".join(self.pool.config.tasks),
        )

    def _startFailed(self, failure: Failure) -> None:
        if not self.running and failure.check(errors.PoolStopping):
            return  # stopped while starting: a stop, not a failure
        self.log.failure("the pool could not start", failure)
        if self._onStartFailure is not None:
            self._onStartFailure()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.pool.stop()


__all__ = ["Answer", "CallCancelled", "POOL_TRANSITIONS", "PoolCall", "PoolService", "PoolState", "ProcessPool"]
