# -*- test-case-name: tests.test_pool,tests.test_pool_unit -*-
"""
What every room of the pool shares: the record of a call (L{PoolCall}),
the pool's lifecycle (L{PoolState}), what a cancelled call fails with
(L{CallCancelled}), and L{PoolRooms}, the declarations of the state the
rooms read and change.

L{taskd.pool.ProcessPool} is one object, built from rooms that each hold
one concern: dispatching calls to workers (L{taskd._dispatching}), ending
them (L{taskd._endings}), retries (L{taskd._retrying}), supervising the
workers (L{taskd._supervision}), workers that run several calls at once
(L{taskd._placement}), the observer (L{taskd._observing}) and stopping
(L{taskd._stopping}).  Each room is a mixin of L{ProcessPool}; the state
they share is declared once, here, for the type checker and the reader,
and set in L{ProcessPool.__init__}.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Callable

from attrs import define
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd import errors
from taskd._workerprocess import WorkerProcess, WorkerState
from taskd.registry import THREAD

if TYPE_CHECKING:
    from collections import deque
    from itertools import count

    from taskd._pipes import WriteBatch
    from taskd._queue import CallQueue
    from taskd._slots import Slots
    from taskd._supervision import Rolling
    from taskd.config import PoolConfig
    from taskd.observer import PoolObserver
    from taskd.registry import Registry, TaskOptions


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


#: How a call relayed through L{taskd.pool.ProcessPool.relay} is answered:
#: C{answer(key, outcome)}, with the result as JSON bytes or a C{Failure}.
Answer = Callable[[Any, "bytes | Failure"], object]


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
class PoolCall:
    """
    One submitted call, from L{ProcessPool.submitEncoded} to its end.
    """

    name: str
    payload: bytes
    timeout: float | None
    # Told of its end, once: answer(key, result or Failure).
    answer: Answer
    key: Any
    # The pool's way to cancel it (see cancel).
    canceller: Callable[[PoolCall], None]
    progress: Callable[[bytes], object] | None = None
    priority: int = 0
    deadline: float | None = None
    worker: WorkerProcess[PoolCall] | None = None
    # Its run timeout's timer once it runs; its deadline's while queued.
    timer: IDelayedCall | None = None
    done: bool = False
    queuedAt: float = 0.0
    seq: int = 0
    # How many times it has been given to a worker (more with retries).
    attempts: int = 1
    # How it runs in a worker that runs several calls at once.
    mode: str = THREAD
    # Who sent it, and its daemon-wide number (for the list of running
    # calls and cancelling by number: see taskd._observing).
    origin: str | None = None
    number: int = 0
    # When it was accepted: kept only while the pool has an observer.
    submittedAt: float = 0.0
    # The run time expected of it when it was sent to its worker (see
    # taskd._dispatching).
    expected: float = 0.0
    # When and where it last started.
    startedAt: float | None = None
    pid: int | None = None
    outcome: str | None = None
    # Told when the call is sent to a worker (see ProcessPool.submitEncoded).
    onStart: Callable[[], object] | None = None

    def cancel(self) -> None:
        """
        Cancel this call, if it has not ended: its answer is a
        L{CallCancelled}, and a worker running it is replaced.
        """
        self.canceller(self)


#: A worker process of the pool.
PoolWorker = WorkerProcess[PoolCall]


class PoolRooms:
    """
    The state and the methods the pool's rooms share, declared for the
    type checker (nothing here exists at run time: L{ProcessPool} sets the
    state and its rooms define the methods).
    """

    log = Logger()

    if TYPE_CHECKING:
        # Set by ProcessPool.__init__ (see its docstring).
        config: PoolConfig
        reactor: Any
        registry: Registry
        state: PoolState
        observer: PoolObserver | None
        jitter: Callable[[], float]
        _queue: CallQueue[PoolCall]
        _wakeTimer: IDelayedCall | None
        _idle: list[PoolWorker]
        _live: set[PoolWorker]
        _processes: set[PoolWorker]
        _restartDelay: float
        _restartTimers: set[IDelayedCall]
        _respawnTokens: float
        _respawnTokensAt: float
        _memoryRecycled: int
        _startError: errors.WorkerStartError | None
        _starting: Deferred[None] | None
        _stopping: list[Deferred[None]]
        _graceTimer: IDelayedCall | None
        _retryPolicies: dict[str, TaskOptions]
        _runTimes: dict[str, float]
        _retrying: set[PoolCall]
        _slots: Slots | None
        writes: WriteBatch
        _modes: dict[str, str]
        _numbers: count[int]
        _surplus: set[PoolWorker]
        _rolling: Rolling | None

        # The lifecycle (taskd._lifecycle.Lifecycle).
        def _go(self, transition: str) -> PoolState: ...

        # What the workers tell it (taskd._workerprocess.WorkerEvents).
        def workerReady(self, worker: PoolWorker) -> None: ...
        def workerReplied(self, worker: PoolWorker, call: PoolCall, reply: bytes | errors.TaskdError) -> None: ...
        def workerProgress(self, worker: PoolWorker, call: PoolCall, report: bytes) -> None: ...
        def workerMisbehaved(self, worker: PoolWorker, error: errors.TaskdError) -> None: ...
        def workerLeaving(self, worker: PoolWorker, reason: str) -> None: ...
        def workerEnded(self, worker: PoolWorker, reason: Failure, previous: WorkerState) -> None: ...
        def workerGone(self, worker: PoolWorker) -> None: ...

        # taskd.pool
        def _serving(self) -> bool: ...
        def _busy(self, worker: PoolWorker) -> bool: ...
        def _checkStopped(self) -> None: ...

        # taskd._dispatching
        def _capacity(self, worker: PoolWorker) -> int: ...
        def _sendAheadTo(self, call: PoolCall | None) -> PoolWorker | None: ...
        def _feed(self, worker: PoolWorker) -> None: ...
        def _ran(self, name: str, seconds: float) -> None: ...
        def _dispatch(self) -> None: ...
        def _wakeLater(self) -> None: ...
        def _run(self, worker: PoolWorker, call: PoolCall) -> None: ...
        def _started(self, worker: PoolWorker) -> None: ...

        # taskd._endings
        def _finish(self, call: PoolCall, result: bytes | Failure) -> None: ...
        def _requeue(self, calls: deque[PoolCall]) -> None: ...
        def _timedOut(self, call: PoolCall) -> None: ...

        # taskd._retrying
        def _retries(self, call: PoolCall, failure: Failure) -> bool: ...

        # taskd._supervision
        def _spawn(self) -> None: ...
        def _anyReady(self) -> bool: ...
        def _release(self, worker: PoolWorker) -> None: ...
        def _discard(self, worker: PoolWorker) -> None: ...
        def _forget(self, worker: PoolWorker) -> None: ...
        def _replace(self, delay: float | None = 0.0) -> None: ...
        def _startFailed(self, error: errors.WorkerStartError) -> None: ...
        def _letGo(self, worker: PoolWorker) -> None: ...
        def _rolled(self) -> None: ...

        # taskd._placement
        def _roomFor(self, call: PoolCall) -> PoolWorker | None: ...
        def _putBack(self, call: PoolCall) -> None: ...
        def _stopIn(self, worker: PoolWorker, call: PoolCall) -> None: ...

        # taskd._observing
        def _observeEnd(self, call: PoolCall, outcome: str) -> None: ...
        def _observeWorkerEnd(self, worker: PoolWorker, previous: WorkerState) -> None: ...

        # taskd._stopping
        def _cancel(self, call: PoolCall) -> None: ...
        def _expired(self, call: PoolCall) -> None: ...

        def stop(self) -> Deferred[None]: ...
        def _failQueue(self, error: Exception) -> None: ...
