# -*- test-case-name: tests.test_workerprocess,tests.test_lifecycle -*-
"""
What a worker process is to its owner: the states of its life
(L{WorkerState}, L{WORKER_TRANSITIONS}), what it tells its owner
(L{WorkerEvents}), and what it needs of a call (L{Runnable}) and of the
configuration (L{WorkerConfig}).  The process itself is
L{taskd._workerprocess.WorkerProcess}.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence, TypeVar

from twisted.python.failure import Failure

from taskd import errors

if TYPE_CHECKING:
    from taskd._workerprocess import WorkerProcess


class WorkerState(Enum):
    """
    Where a worker process is in its life.
    """

    #: Spawned; importing its task modules.
    STARTING = "starting"
    #: Said it is ready; takes calls.
    READY = "ready"
    #: Let go gracefully: its request pipe is closed.
    RETIRING = "retiring"
    #: Killed (SIGKILL; SIGTERM to the rest of its process group).
    TERMINATING = "terminating"
    #: Exited, every reply read.
    ENDED = "ended"


_S = WorkerState

#: Every transition of a worker's lifecycle: its name, the states it may be
#: taken from, and the state it leads to.
WORKER_TRANSITIONS = {
    "ready": (frozenset({_S.STARTING}), _S.READY),
    "retire": (frozenset({_S.READY}), _S.RETIRING),
    "terminate": (frozenset({_S.STARTING, _S.READY, _S.RETIRING}), _S.TERMINATING),
    "end": (frozenset({_S.STARTING, _S.READY, _S.RETIRING, _S.TERMINATING}), _S.ENDED),
}


class Runnable(Protocol):
    """
    What a worker process needs of a call: the task's name and its
    arguments as a JSON object.
    """

    @property
    def name(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


C = TypeVar("C", bound=Runnable)


class WorkerEvents(Protocol[C]):
    """
    What a L{WorkerProcess} tells its owner.
    """

    def workerReady(self, worker: WorkerProcess[C]) -> None:
        """
        C{worker} has loaded its tasks and takes calls.
        """

    def workerReplied(
        self, worker: WorkerProcess[C], call: C, reply: bytes | errors.TaskdError
    ) -> None:
        """
        C{worker} answered C{call} (the first of its calls, unless it runs
        several at once): with its result (one JSON value, checked) or
        with the call's error.  A call it was asked to stop
        (L{WorkerProcess.cancel}) is answered too, when it has stopped.
        """

    def workerProgress(self, worker: WorkerProcess[C], call: C, report: bytes) -> None:
        """
        C{call}, which C{worker} runs, reported its progress (as JSON).
        """

    def workerMisbehaved(self, worker: WorkerProcess[C], error: errors.TaskdError) -> None:
        """
        C{worker} broke the frame protocol (a task wrote to its pipes, say);
        it must be stopped.

        @param error: what to fail the running call with.
        """

    def workerLeaving(self, worker: WorkerProcess[C], reason: str) -> None:
        """
        C{worker} said goodbye: it exits now of its own accord, having
        answered every call it started (the calls still in its
        L{WorkerProcess.inFlight} never started).  Or (C{"stuck"}) a call it
        was asked to stop did not stop within the kill grace: it must take
        no more calls; it exits once it has answered its other calls, and
        is killed if it has not after the drain bound.

        @param reason: C{"signal"} (it received SIGTERM), C{"memory"}
            (its resident memory went over its limit) or C{"stuck"}.
        """

    def workerEnded(
        self, worker: WorkerProcess[C], reason: Failure, previous: WorkerState
    ) -> None:
        """
        C{worker} has exited and every reply it wrote has been read: the
        calls still in its L{WorkerProcess.inFlight} were not answered,
        and only the first L{WorkerProcess.started} of them ever started.

        @param previous: the state it was in when it ended.
        """

    def workerGone(self, worker: WorkerProcess[C]) -> None:
        """
        Nothing is left of C{worker}'s process group (after
        L{workerEnded}).
        """


class WorkerConfig(Protocol):
    """
    How to start a worker (L{taskd.pool.PoolConfig} is one).
    """

    @property
    def tasks(self) -> Sequence[str]: ...

    @property
    def python(self) -> str: ...

    @property
    def env(self) -> Mapping[str, str] | None: ...

    @property
    def maxResult(self) -> int: ...

    @property
    def maxMemory(self) -> int | None: ...

    @property
    def maxWorkerRSS(self) -> int | None: ...

    @property
    def killGrace(self) -> float: ...

    @property
    def grace(self) -> float: ...
