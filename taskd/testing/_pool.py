# -*- test-case-name: tests.test_testing -*-
"""
The fake pool: L{FakePool}.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from taskd import _json, errors
from taskd._frames import DEFAULT_MAX_RESULT
from taskd._lifecycle import Lifecycle
from taskd._pipes import WriteBatch
from taskd.pool import POOL_TRANSITIONS, Answer, PoolState
from taskd.registry import Registry, TaskOptions, loadTaskModules, registry as defaultRegistry
from taskd.testing._calls import USE_DEFAULT, FakeCalls, decodedProgress, encodeArguments

class FakePool(FakeCalls, Lifecycle[PoolState]):
    """
    A stand-in for L{taskd.pool.ProcessPool} in unit tests of code that
    embeds the pool, with its API (L{start}, L{submit}, L{submitEncoded},
    L{stop}, L{stats}, L{pids}, L{state}).  Calls run their task in this
    process, at once, unless C{hold} is set: then each of the C{workers}
    fake workers takes one call, which waits for the test to answer it or
    L{FakeCall.run} it, and further calls queue (up to C{maxQueue}; past
    it, calls fail with L{errors.PoolBusy}).

    @ivar tasks: the task modules L{start} imports.
    @ivar workers: how many calls may run at once.
    @ivar maxQueue: how many calls may wait for a worker.
    @ivar timeout: the default limit on the time a call runs, in seconds.
    @ivar grace: on L{stop}, how long running calls may go on.
    """

    transitions = POOL_TRANSITIONS

    def __init__(
        self,
        clock: IReactorTime,
        tasks: Sequence[str] = ("taskd.examples",),
        workers: int = 1,
        *,
        maxQueue: int = 1000,
        timeout: float | None = None,
        grace: float = 10.0,
        maxResult: int = DEFAULT_MAX_RESULT,
        registry: Registry | None = None,
        hold: bool = False,
    ) -> None:
        """
        @param clock: the clock timeouts and the grace period are measured
            on.
        @param registry: where the tasks are registered (the default
            registry, which C{@taskd.task} fills, by default).
        @param hold: see C{hold}.
        @param maxResult: see C{maxResult}.
        """
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        if maxQueue < 0:
            raise ValueError("maxQueue must not be negative")
        super().__init__(
            clock,
            defaultRegistry if registry is None else registry,
            workers,
            maxQueue,
            maxResult,
            hold,
        )
        self.tasks = list(tasks)
        self.workers = workers
        self.maxQueue = maxQueue
        self.timeout = timeout
        self.grace = grace
        self.state = PoolState.NEW
        self._stopping: list[Deferred[None]] = []
        #: As L{taskd.pool.ProcessPool.writes} (this pool writes to no
        #: pipe: holding it changes nothing).
        self.writes = WriteBatch()
        self._graceTimer: IDelayedCall | None = None

    def start(self) -> Deferred[None]:
        """
        Import the task modules, as L{taskd.pool.ProcessPool.start} does.

        @return: a C{Deferred} that has fired with C{None}, or failed with
            the import error (after which the pool is stopped).
        """
        if self.state is not PoolState.NEW:
            return fail(RuntimeError(f"cannot start a pool that is {self.state.value}"))
        try:
            loadTaskModules(self.tasks)
        except Exception:
            self._go("abandon")
            return fail()
        self._go("start")
        self._go("started")
        return succeed(None)

    def submit(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = USE_DEFAULT,
        progress: Callable[[Any], object] | None = None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[Any]:
        """
        Run task C{name} with C{args} and C{kwargs}, as
        L{taskd.pool.ProcessPool.submit} does.

        @param timeout: seconds the call may run once a worker takes it;
            the pool's default if not given, no limit if C{None}.
        @param progress: called with each progress report before the
            result.
        @param priority: recorded as L{FakeCall.priority} (checked, not
            used: calls run in arrival order).
        @param deadline: recorded as L{FakeCall.deadline} (checked; calls
            do not expire).
        @return: a C{Deferred} firing with the task's result, or failing
            with an L{errors.TaskdError} (or
            C{twisted.internet.defer.CancelledError} if cancelled).
        """
        try:
            payload = encodeArguments(args, kwargs)
        except errors.BadRequest as e:
            return fail(e)
        d = self.submitEncoded(
            name,
            payload,
            timeout=timeout,
            progress=decodedProgress(progress),
            priority=priority,
            deadline=deadline,
        )
        return d.addCallback(_json.loads)

    def submitEncoded(
        self,
        name: str,
        payload: bytes,
        *,
        timeout: float | None = USE_DEFAULT,
        progress: Callable[[bytes], object] | None = None,
        priority: int | None = None,
        deadline: float | None = None,
        origin: str | None = None,
        onStart: Callable[[], object] | None = None,
    ) -> Deferred[bytes]:
        """
        Like L{submit}, with the arguments already encoded and the result
        (and progress reports) left encoded, as
        L{taskd.pool.ProcessPool.submitEncoded} does.

        @param payload: a UTF-8 JSON object whose C{"args"} is an array or
            an object and whose optional C{"kwargs"} is an object.
        @param origin: who sent the call (the real pool tells its observer;
            this one ignores it).
        @param onStart: called when the call starts (within this method
            if it starts at once).
        @return: a C{Deferred} firing with the result as JSON bytes.
        """
        if self.state is not PoolState.RUNNING:
            return fail(
                errors.PoolStopping(f"the pool is not running (it is {self.state.value})")
            )
        return self._submit(
            name,
            payload,
            self.timeout if timeout is USE_DEFAULT else timeout,
            progress,
            priority,
            deadline,
            onStart,
        )

    def relay(
        self,
        name: str,
        payload: bytes,
        answer: Answer,
        key: Any,
        *,
        timeout: float | None = USE_DEFAULT,
        progress: Callable[[bytes], object] | None = None,
        priority: int | None = None,
        deadline: float | None = None,
        origin: str | None = None,
        onStart: Callable[[], object] | None = None,
    ) -> Deferred[None] | None:
        """
        Like L{submitEncoded}, answering as L{taskd.pool.ProcessPool.relay}
        does: C{answer(key, outcome)} once, before this returns (and
        C{None} is returned) if the call is refused or ends at once.

        @return: what cancels the call (its C{cancel()}), or C{None}.
        """
        d = self.submitEncoded(
            name, payload, timeout=timeout, progress=progress, priority=priority,
            deadline=deadline, origin=origin, onStart=onStart,
        )
        ended = d.called
        told = d.addBoth(lambda outcome: answer(key, outcome)).addCallback(lambda _: None)
        return None if ended else told

    def stop(self) -> Deferred[None]:
        """
        Stop as L{taskd.pool.ProcessPool.stop} does: refuse new calls, fail
        queued ones with L{errors.PoolStopping}, give running ones C{grace}
        seconds on the clock to be answered (then fail them with
        L{errors.PoolStopping}).

        @return: a C{Deferred} that fires once no call runs.
        """
        if self.state is PoolState.NEW:
            self._go("abandon")
        if self.state is PoolState.STOPPED:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stopping.append(d)
        if self.state is PoolState.STOPPING:
            return d
        self._go("stop")
        for call in list(self._queue):
            self._finish(call, Failure(errors.PoolStopping("the pool is stopping")))
        if self._running:
            self._graceTimer = self.clock.callLater(self.grace, self._graceOver)
        self._checkStopped()
        return d

    def stats(self) -> dict[str, Any]:
        """
        @return: the counts L{taskd.pool.ProcessPool.stats} gives, as a
            pool with C{workers} workers and these calls would show them.
        """
        if self.state in (PoolState.NEW, PoolState.STOPPED):
            workers = 0
        elif self.state is PoolState.STOPPING:
            workers = len(self._running)
        else:
            workers = self.workers
        return {
            "workers": workers,
            "idle": workers - len(self._running),
            "busy": len(self._running),
            "queued": len(self._queue),
            "processes": workers,
            "memoryRecycled": 0,
            "queuedByPriority": {"0": len(self._queue)} if self._queue else {},
            "queuedByTask": _countByName(self._queue),
            "retrying": 0,
        }

    def taskPolicies(self) -> dict[str, TaskOptions]:
        """
        @return: the scheduling options of the registry's tasks, as
            L{taskd.pool.ProcessPool.taskPolicies} gives them (the fake
            does not apply them).
        """
        registry = self.registry
        return {} if registry is None else registry.optionsByName()

    def pids(self) -> set[int]:
        """
        @return: an empty set: the fake has no worker processes.
        """
        return set()

    def _freed(self) -> None:
        if self.state is PoolState.STOPPING:
            self._checkStopped()
        else:
            super()._freed()

    def _graceOver(self) -> None:
        self._graceTimer = None
        for call in list(self._running):
            self._finish(
                call,
                Failure(
                    errors.PoolStopping(
                        f"task {call.name!r} did not finish within the "
                        f"{self.grace}-second shutdown grace period"
                    )
                ),
            )

    def _checkStopped(self) -> None:
        if self.state is not PoolState.STOPPING or self._running:
            return
        self._go("stopped")
        if self._graceTimer is not None and self._graceTimer.active():
            self._graceTimer.cancel()
        self._graceTimer = None
        waiting, self._stopping = self._stopping, []
        for d in waiting:
            d.callback(None)


def _countByName(calls: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.name] = counts.get(call.name, 0) + 1
    return dict(sorted(counts.items()))
