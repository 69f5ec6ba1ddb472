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

This module is one state machine, and over 450 lines on purpose: the
queue, the idle list, the live and ending workers and the timers are read
and changed together by every method below, and splitting them over
files would hide that.  Policies that choose the next call (priorities,
caps, rates) belong in a queue room of their own beside it.

The pool's lifecycle (L{PoolState}, L{POOL_TRANSITIONS})::

    NEW --start--> STARTING --started--> RUNNING
     |                 |                    |
     +--abandon--+     +-------stop---------+--> STOPPING --stopped--> STOPPED
                 +-----------------------------------------------------^
"""

from __future__ import annotations

import copy
import random
from collections import deque
from itertools import count
from enum import Enum
from typing import Any, Callable, Sequence

from attrs import define, evolve, field
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd import _json, errors
from taskd._lifecycle import Lifecycle
from taskd._children import describeExit
from taskd._queue import CallQueue
from taskd._slots import Slots
from taskd._workerprocess import WorkerProcess, WorkerState
from taskd.config import PoolConfig
from taskd.observer import CANCELLED, ObservedCall, PoolObserver, outcomeOf, workerEndReason
from taskd.registry import (
    ASYNC,
    MAX_BACKOFF,
    MAX_PRIORITY,
    MIN_PRIORITY,
    PROCESS,
    THREAD,
    Registry,
    TaskOptions,
    loadTaskModules,
    registry as defaultRegistry,
)

#: Marks "use the pool's default" where C{None} means "no limit".
_DEFAULT: Any = object()


class PoolState(Enum):
    """
    Where a pool is in its life.
    """

    #: Built; not started.
    NEW = "new"
    #: Starting its workers; takes calls (they wait).
    STARTING = "starting"
    #: Every worker was ready once; serving.
    RUNNING = "running"
    #: Refusing calls; running ones finish within the grace period.
    STOPPING = "stopping"
    #: Every worker has exited.
    STOPPED = "stopped"


_P = PoolState

#: Every transition of a pool's lifecycle: its name, the states it may be
#: taken from, and the state it leads to.
POOL_TRANSITIONS = {
    "start": (frozenset({_P.NEW}), _P.STARTING),
    "abandon": (frozenset({_P.NEW}), _P.STOPPED),
    "started": (frozenset({_P.STARTING}), _P.RUNNING),
    "stop": (frozenset({_P.STARTING, _P.RUNNING}), _P.STOPPING),
    "stopped": (frozenset({_P.STOPPING}), _P.STOPPED),
}

_READY = WorkerState.READY

#: The first retry's delay, in seconds, for a task that sets none.
DEFAULT_BACKOFF = 1.0


class CallCancelled(CancelledError):
    """
    A call's C{Deferred} was cancelled: what it fails with.

    @ivar started: whether the call had started (or may have: it was sent
        ahead to a worker, or an earlier attempt ran); C{False} promises
        it never ran.
    """

    def __init__(self, started: bool) -> None:
        super().__init__("the call was cancelled")
        self.started = started


@define(eq=False)
class _Call:
    """
    One submitted call, from L{ProcessPool.submitEncoded} to its end.
    """

    name: str
    payload: bytes
    timeout: float | None
    progress: Callable[[bytes], object] | None = None
    priority: int = 0
    deadline: float | None = None
    deferred: Deferred[bytes] = field(init=False)
    worker: WorkerProcess[_Call] | None = None
    # Its run timeout's timer once it runs; its deadline's while queued.
    timer: IDelayedCall | None = None
    done: bool = False
    queuedAt: float = 0.0
    seq: int = 0
    # How many times it has been given to a worker (more with retries).
    attempts: int = 1
    # How it runs in a worker that runs several calls at once.
    mode: str = THREAD
    # Set only while the pool has an observer (see ProcessPool._observe).
    origin: str | None = None
    number: int = 0
    submittedAt: float = 0.0
    startedAt: float | None = None
    pid: int | None = None
    outcome: str | None = None


_Worker = WorkerProcess[_Call]


@define
class _Rolling:
    """
    A rolling restart under way (see L{ProcessPool.restartWorkers}).

    @ivar old: the workers still to replace, the next first.
    @ivar fresh: whether the next one's replacement is starting.
    """

    old: list[_Worker]
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


class ProcessPool(Lifecycle[PoolState]):
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
        self._queue: CallQueue[_Call] = CallQueue(reactor.seconds, config.agingInterval)
        self._wakeTimer: IDelayedCall | None = None
        self._idle: list[_Worker] = []
        # Workers counted against capacity: starting or ready.
        self._live: set[_Worker] = set()
        # Every worker process not yet ended, leaving ones included.
        self._processes: set[_Worker] = set()
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
        self._retrying: set[_Call] = set()
        self.jitter: Callable[[], float] = random.random
        # Workers that run several calls at once: their slots, and the
        # tasks whose mode is not THREAD.
        self._slots: Slots | None = None
        self._modes: dict[str, str] = {}
        self.observer: PoolObserver | None = None
        self._numbers = count(1)
        # Ready workers let go once idle (see resize), and the rolling
        # restart under way (see restartWorkers).
        self._surplus: set[_Worker] = set()
        self._rolling: _Rolling | None = None

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

    def timeoutFor(self, requested: float | None) -> float | None:
        """
        The timeout policy for callers that may shorten the pool's limit
        but not lengthen it (a network client, say).

        @param requested: the limit the caller asked for, in seconds, or
            C{None} if it asked for none.
        @return: the limit to pass to L{submitEncoded}.
        """
        limit = self.config.timeout
        if requested is None:
            return limit
        return requested if limit is None else min(requested, limit)

    def submit(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = _DEFAULT,
        progress: Callable[[Any], object] | None = None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[Any]:
        """
        Run task C{name} with C{args} and C{kwargs} in a worker.

        @param timeout: seconds the call may run in its worker; the pool's
            default if not given, no limit if C{None}.
        @param progress: called with each value the task reports with
            L{taskd.worker.progress}, before the result.
        @param priority: from L{MIN_PRIORITY} to L{MAX_PRIORITY}, higher
            first; the task's default (see L{taskd.registry.TaskOptions})
            if C{None}.
        @param deadline: seconds the call may wait in the queue; past them
            it fails with L{errors.Expired} without running.  C{None}: no
            limit.
        @return: a C{Deferred} firing with the task's result (decoded from
            JSON), or failing with an L{errors.TaskdError} (or L{CallCancelled},
            a C{twisted.internet.defer.CancelledError}, if cancelled).  Its
            C{started} says whether the task had started.  A task with
            retries (see L{taskd.registry.TaskOptions}) is run again after
            a crash, a timeout or an exception it lists, and the C{Deferred}
            fires once, with the last attempt's outcome.
        """
        try:
            payload = _json.encodeASCII({"args": list(args), "kwargs": kwargs or {}})
        except (TypeError, ValueError) as e:
            return fail(errors.BadRequest(f"arguments cannot be sent as JSON: {e}"))
        encodedProgress = None
        if progress is not None:
            encodedProgress = lambda value: progress(_json.loads(value))  # noqa: E731
        d = self.submitEncoded(
            name,
            payload,
            timeout=timeout,
            progress=encodedProgress,
            priority=priority,
            deadline=deadline,
        )
        return d.addCallback(_json.loads)

    def submitEncoded(
        self,
        name: str,
        payload: bytes,
        *,
        timeout: float | None = _DEFAULT,
        progress: Callable[[bytes], object] | None = None,
        priority: int | None = None,
        deadline: float | None = None,
        origin: str | None = None,
    ) -> Deferred[bytes]:
        """
        Like L{submit}, with the arguments already encoded and the result
        (and progress reports) left encoded.

        @param payload: a UTF-8 JSON object whose C{"args"} is an array
            (positional arguments) or an object (keyword arguments) and
            whose optional C{"kwargs"} is an object; other keys are ignored,
            so a whole request line from the wire will do.
        @param origin: who sent the call, for the pool's observer.
        @return: a C{Deferred} firing with the result as JSON bytes.
        """
        if not self._serving():
            return fail(
                errors.PoolStopping(f"the pool is not running (it is {self.state.value})")
            )
        if name not in self.registry:
            return fail(errors.UnknownTask(f"no task named {name!r}"))
        if self._startError is not None and not self._anyReady():
            return fail(self._startError)
        queue = self._queue
        if priority is None:
            priority = queue.defaultPriorities.get(name, 0) if queue.defaultPriorities else 0
        elif type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            return fail(
                errors.BadRequest(
                    f"priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}"
                )
            )
        if deadline is not None and not deadline > 0:
            return fail(errors.BadRequest("deadline must be a positive number of seconds"))
        maxQueue = self.config.maxQueue
        # Whether the call may start now as far as its task's limits go.
        free = not queue.limiters or queue.mayStart(name)
        if queue.size >= maxQueue and not (self._idle and free):
            return fail(
                errors.PoolBusy(
                    f"the queue is full ({maxQueue} calls waiting); try again later"
                )
            )
        call = _Call(
            name,
            payload,
            self.config.timeout if timeout is _DEFAULT else timeout,
            progress,
            priority,
            deadline,
        )
        call.deferred = Deferred(lambda d: self._cancel(call))
        if self._slots is not None:
            call.mode = self._modes.get(name, THREAD)
        if self.observer is not None:
            self._observe(call, origin)
        if free and not queue.size:
            # Nothing waits: the call goes straight to a worker if one may
            # take it (with no policies, this is the only path).
            ready = self._idle.pop() if self._idle else self._sendAheadTo(call)
            if ready is not None:
                if queue.limiters:
                    queue.started(name)
                self._run(ready, call)
                return call.deferred
        queue.push(call)
        if deadline is not None:
            call.timer = self.reactor.callLater(deadline, self._expired, call)
        if queue.limiters:
            # It may have been held back while a worker is free.
            self._dispatch()
            if self._idle and queue.size:
                self._wakeLater()
        return call.deferred

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

    # -- public API: resizing and rolling restarts ---------------------------

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
        order = {WorkerState.STARTING: 0, _READY: 1}
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
        self._rolling = _Rolling(sorted(self._live, key=lambda w: w.pid or 0))
        d = self._rolling.waiting()
        self.log.info("rolling restart of {n} workers", n=len(self._rolling.old))
        self._rollOn()
        return d

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
                call.deferred.cancel()
                return True
        return False

    def _letGo(self, worker: _Worker) -> None:
        """
        Let C{worker} go without failing its calls: at once if it is idle
        or starting; when its calls are answered if it is busy.
        """
        if worker.state is WorkerState.STARTING:
            self._forget(worker)
            worker.terminate()
        elif worker.inFlight:
            self._forget(worker)
            self._surplus = {w for w in self._surplus if w.state is _READY}
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

    # -- what workers tell the pool (WorkerEvents) ------------------------

    def workerReady(self, worker: _Worker) -> None:
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

    def workerReplied(self, worker: _Worker, call: _Call, reply: bytes | errors.TaskdError) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerReplied}.  A reply
        for a call the pool no longer has on this worker (it timed out or
        was cancelled and waits for a retry, or runs elsewhere now) is
        dropped.
        """
        if call.worker is worker:
            self._finish(call, reply if isinstance(reply, bytes) else Failure(reply))
        # (A worker that replies is READY, or being let go; or it has exited
        # and its last replies are being read: it takes nothing more.)
        if worker.state is not _READY or worker.exited:
            return  # being let go; workerEnded settles the rest
        if worker.inFlight and not worker.concurrent:
            self._started(worker)
            if worker.state is not _READY:
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

    def workerProgress(self, worker: _Worker, call: _Call, report: bytes) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerProgress}.
        """
        if call.progress is not None and not call.done:
            try:
                call.progress(report)
            except Exception:
                self.log.failure("a progress callback of task {name!r} failed", name=call.name)

    def workerMisbehaved(self, worker: _Worker, error: errors.TaskdError) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerMisbehaved}.
        """
        call = worker.call
        self._discard(worker)
        if call is not None:
            self._finish(call, Failure(error))

    def workerLeaving(self, worker: _Worker, reason: str) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerLeaving}.  A worker
        over its memory limit is replaced at once; one that received
        SIGTERM after L{PoolConfig.minRestartDelay} (by then a daemon that
        is being stopped as a whole is stopping, and starts none).
        """
        if worker.state is not _READY:
            return
        if reason == "memory":
            self._memoryRecycled += 1
        self._release(worker)
        self._replace(0.0 if reason in ("memory", "stuck") else self.config.minRestartDelay)

    def workerEnded(self, worker: _Worker, reason: Failure, previous: WorkerState) -> None:
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

    def workerGone(self, worker: _Worker) -> None:
        """
        See L{taskd._workerprocess.WorkerEvents.workerGone}.
        """
        self._processes.discard(worker)
        self._checkStopped()

    # -- telling the observer (see taskd.observer) --------------------------

    def _observe(self, call: _Call, origin: str | None) -> None:
        """
        Number a call accepted, note when and from whom, and tell the
        observer.  (Its start and end are told by L{_started}, L{_finish}
        and L{_cancel}.)
        """
        assert self.observer is not None
        call.origin = origin
        call.number = next(self._numbers)
        call.submittedAt = self.reactor.seconds()
        self.observer.callQueued(call)

    def _observeStart(self, worker: _Worker, call: _Call) -> None:
        assert self.observer is not None
        call.startedAt = now = self.reactor.seconds()
        call.pid = worker.pid
        self.observer.callStarted(call, worker.pid, now - call.submittedAt)

    def _observeEnd(self, call: _Call, outcome: str) -> None:
        assert self.observer is not None
        call.outcome = outcome
        started = call.startedAt
        self.observer.callEnded(
            call, outcome, None if started is None else self.reactor.seconds() - started
        )

    def _observeWorkerEnd(self, worker: _Worker, previous: WorkerState) -> None:
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

    # -- workers ----------------------------------------------------------

    def _spawn(self) -> None:
        try:
            worker: _Worker = WorkerProcess.spawn(self.reactor, self, self.config, self._slots)
        except Exception as e:
            self._startFailed(errors.WorkerStartError(f"cannot spawn a worker: {e}"))
            return
        self._live.add(worker)
        self._processes.add(worker)

    def _serving(self) -> bool:
        state = self.state
        return state is PoolState.RUNNING or state is PoolState.STARTING

    @staticmethod
    def _busy(worker: _Worker) -> bool:
        return worker.state is _READY and bool(worker.inFlight)

    def _anyReady(self) -> bool:
        return any(w.state is WorkerState.READY for w in self._live)

    def _capacity(self, worker: _Worker) -> int:
        """
        @return: how many calls C{worker} may hold now.
        """
        depth = self.config.prefetch if self._slots is None else self._slots.total
        if self.config.maxTasksPerWorker is not None:
            depth = min(depth, self.config.maxTasksPerWorker - worker.calls)
        return depth

    def _sendAheadTo(self, call: _Call | None) -> _Worker | None:
        """
        @param call: the call to place, if known: needed when workers run
            several calls at once.
        @return: a busy worker that may take C{call} now (it runs several
            calls at once, and has room), or in its pipe, if sending ahead
            is on.
        """
        if self._slots is not None:
            return None if call is None else self._roomFor(call)
        if self.config.prefetch == 1:
            return None
        best = None
        for worker in self._live:
            if (
                worker.state is _READY
                and worker.inFlight
                and len(worker.inFlight) < self._capacity(worker)
                and not worker.exited
            ):
                if best is None or len(worker.inFlight) < len(best.inFlight):
                    best = worker
        return best

    def _feed(self, worker: _Worker) -> None:
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
            self._run(busy, call)

    def _wakeLater(self) -> None:
        """
        Calls wait that are held back by their tasks' limits while a worker
        could take them: dispatch again when the earliest rate limit lets
        one start.  (A concurrency cap frees up when a call ends; see
        L{_finish}.)
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

    def _run(self, worker: _Worker, call: _Call) -> None:
        if call.timer is not None:
            # Its deadline: it leaves the queue in time.
            call.timer.cancel()
            call.timer = None
        call.worker = worker
        worker.run(call, call.mode)
        if worker.concurrent:
            # It starts now, beside the worker's other calls.
            if call.timeout is not None:
                call.timer = self.reactor.callLater(call.timeout, self._timedOut, call)
        elif len(worker.inFlight) == 1:
            self._started(worker)

    def _started(self, worker: _Worker) -> None:
        """
        The first call in C{worker}'s pipe is now the one it runs: start its
        clock.  A call cancelled (or failed by a stop) while it waited in
        the pipe is not let run: the worker is stopped, and the calls behind
        it go back to the queue when the worker has ended.
        """
        call = worker.inFlight[0]
        if call.done:
            self._discard(worker)
        elif call.timeout is not None:
            call.timer = self.reactor.callLater(call.timeout, self._timedOut, call)
        if self.observer is not None and not call.done:
            self._observeStart(worker, call)

    def _release(self, worker: _Worker) -> None:
        """
        Let a worker go gracefully: it exits when its request pipe closes.
        """
        self._forget(worker)
        worker.retire()

    def _discard(self, worker: _Worker) -> None:
        """
        Let a worker go at once: terminate it.  The call it runs must have
        been finished by the caller; the calls waiting in its pipe are
        settled when it has ended (see L{workerEnded}).
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

    def _forget(self, worker: _Worker) -> None:
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

    # -- calls ------------------------------------------------------------

    def _finish(self, call: _Call, result: bytes | Failure) -> None:
        if call.done:
            return
        if self._retryPolicies and isinstance(result, Failure) and self._retries(call, result):
            return
        call.done = True
        if self.observer is not None:
            self._observeEnd(call, outcomeOf(result))
        freed = call.worker is not None and bool(self._queue.limiters) and self._queue.ended(call)
        call.worker = None
        if self._retrying:
            self._retrying.discard(call)
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        if call.attempts != 1 and isinstance(result, Failure) and isinstance(result.value, errors.TaskdError):
            error = copy.copy(result.value)
            error.started = True
            error.attempts = call.attempts
            result = Failure(error)
        call.deferred.callback(result)
        if freed and self._serving():
            self._dispatch()

    def _retries(self, call: _Call, failure: Failure) -> bool:
        """
        If C{call}'s task has retries left for this failure, schedule the
        next attempt instead of answering: after the task's backoff,
        doubled for each attempt so far, and spread by L{jitter} over its
        upper half.

        @return: whether it will be run again.
        """
        options = self._retryPolicies.get(call.name)
        error = failure.value
        if (
            options is None
            or call.attempts > (options.retries or 0)
            or call in self._retrying
            or not self._serving()
        ):
            return False
        if not isinstance(error, (errors.TaskTimeout, errors.WorkerCrashed)) and not (
            isinstance(error, errors.TaskFailed) and error.remoteType in (options.retryOn or ())
        ):
            return False
        freed = call.worker is not None and bool(self._queue.limiters) and self._queue.ended(call)
        call.worker = None
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        backoff = DEFAULT_BACKOFF if options.backoff is None else options.backoff
        delay = min(backoff * 2 ** (call.attempts - 1), MAX_BACKOFF) * (1 + self.jitter()) / 2
        self.log.warn(
            "task {name!r} failed ({error}); attempt {attempt} of {attempts} in {delay:.3f} s",
            name=call.name,
            error=error.type,
            attempt=call.attempts + 1,
            attempts=(options.retries or 0) + 1,
            delay=delay,
        )
        self._retrying.add(call)
        call.timer = self.reactor.callLater(delay, self._retry, call)
        if freed:
            self._dispatch()
        return True

    def _retry(self, call: _Call) -> None:
        """
        Queue C{call} again for its next attempt, ahead of the calls that
        came after it.
        """
        call.timer = None
        self._retrying.discard(call)
        call.attempts += 1
        self._queue.pushFront(call)
        self._dispatch()

    def _requeue(self, calls: deque[_Call]) -> None:
        """
        Put calls that never started back at the front of the queue.
        """
        queue = self._queue
        for call in reversed(calls):
            if not call.done:
                if call.timer is not None:
                    # It was about to run (a reply made it the worker's
                    # first call): time spent queued again is not its run.
                    call.timer.cancel()
                    call.timer = None
                if queue.limiters:
                    queue.ended(call)
                call.worker = None
                queue.pushFront(call)
        if not self._serving():
            self._failQueue(errors.PoolStopping("the pool is stopping"))
        else:
            self._dispatch()

    def _failQueue(self, error: Exception) -> None:
        for call in self._queue.drain():
            self._finish(call, Failure(error))
        if self._wakeTimer is not None:
            self._wakeTimer.cancel()
            self._wakeTimer = None

    def _expired(self, call: _Call) -> None:
        """
        C{call} waited in the queue past its deadline.
        """
        call.timer = None
        self._queue.remove(call)
        self._finish(
            call,
            Failure(
                errors.Expired(
                    f"task {call.name!r} waited {call.deadline} seconds in the queue "
                    "without starting (its deadline)"
                )
            ),
        )

    def _timedOut(self, call: _Call) -> None:
        worker = call.worker
        call.timer = None
        if worker is not None:
            # Let the worker go first: answering the call may start others
            # (a freed cap, a caller's retry), which must not go to it.
            self._stopIn(worker, call)
        self._finish(
            call,
            Failure(
                errors.TaskTimeout(
                    f"task {call.name!r} did not finish within {call.timeout} seconds"
                )
            ),
        )

    def _cancel(self, call: _Call) -> None:
        if call.done:
            return
        worker = call.worker
        call.done = True
        if self.observer is not None:
            self._observeEnd(call, CANCELLED)
        call.worker = None
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        started = worker is not None or call.attempts > 1 or call in self._retrying
        if worker is None:
            if call in self._retrying:
                self._retrying.discard(call)
            else:
                self._queue.remove(call)
            call.deferred.errback(CallCancelled(started))
            return
        freed = bool(self._queue.limiters) and self._queue.ended(call)
        if worker.concurrent:
            self._stopIn(worker, call)
        elif worker.call is call:
            self._discard(worker)
        # else it waits in the worker's pipe: see _started.
        call.deferred.errback(CallCancelled(started))
        if freed and self._serving():
            self._dispatch()

    # -- workers that run several calls at once ------------------------------

    def _roomFor(self, call: _Call) -> _Worker | None:
        """
        @return: the busy worker with fewest calls that has room for
            C{call} now, if any (idle workers are in C{_idle}).
        """
        best = None
        mode = call.mode
        for worker in self._live:
            if (
                worker.state is _READY
                and worker.inFlight
                and not worker.exited
                and worker.fits(call, mode)
                and len(worker.inFlight) < self._capacity(worker)
            ):
                if best is None or len(worker.inFlight) < len(best.inFlight):
                    best = worker
        return best

    def _putBack(self, call: _Call) -> None:
        """
        Return C{call}, taken from the queue, to its front: no worker has
        room for its mode now.
        """
        if self._queue.limiters:
            self._queue.ended(call)
        self._queue.pushFront(call)

    def _stopIn(self, worker: _Worker, call: _Call) -> None:
        """
        Stop C{call}, which C{worker} runs (timed out or cancelled): kill
        the worker, unless it runs several calls at once and the call is
        not of mode C{PROCESS}; then ask the worker to stop it.
        """
        if worker.concurrent and call.mode != PROCESS:
            worker.cancel(call)
        else:
            self._discard(worker)

    # -- stopping ---------------------------------------------------------

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
