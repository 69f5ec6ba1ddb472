# -*- test-case-name: tests.test_observer -*-
"""
What a L{taskd.pool.ProcessPool} tells an observer: calls queued,
started and ended, workers started and ended.

A pool has no observer by default (L{taskd.pool.ProcessPool.observer} is
C{None}) and then pays nothing for this.  The daemon sets one
(L{taskd.activity.Activity}) when C{--http} is given; a program embedding
the pool may set its own.  An observer is called synchronously from the
pool's own methods: it must be quick, and must not raise.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from taskd import errors

#: The outcome of a call that returned its result.
RESULT = "result"

#: The outcome of a call that was cancelled (by its caller, or because
#: its connection was lost).
CANCELLED = "cancelled"

#: Why a worker process ended (L{PoolObserver.workerEnded}).
WORKER_END_REASONS = (
    # It died of its own accord (a crash, a signal from outside, os._exit).
    "crash",
    # The pool killed it: its call ran past its timeout.
    "timeout",
    # The pool killed it: its call was cancelled.
    "cancel",
    # The pool killed it: it broke the frame protocol.
    "protocol",
    # The pool let it go after maxTasksPerWorker calls, or to replace it
    # (a rolling restart, a smaller pool).
    "recycle",
    # It was over its resident memory limit after a call.
    "memory",
    # It received SIGTERM and left after its call.
    "signal",
    # The pool is stopping.
    "stop",
)


class ObservedCall(Protocol):
    """
    What an observer may read of a call.  The pool sets its C{number},
    C{submittedAt}, C{startedAt} and C{pid} before it tells the observer.
    """

    @property
    def name(self) -> str:
        """
        The task's name.
        """

    @property
    def priority(self) -> int:
        """
        Its priority.
        """

    @property
    def origin(self) -> str | None:
        """
        Who sent it (a connection's peer, as C{"tcp:127.0.0.1:5000"}), if
        its submitter said.
        """

    @property
    def number(self) -> int:
        """
        Its daemon-wide number: 1 for the first call the pool accepted
        while observed, and so on.
        """

    @property
    def submittedAt(self) -> float:
        """
        When it was accepted (the pool's clock).
        """

    @property
    def startedAt(self) -> float | None:
        """
        When it last started running, or C{None} if it has not.
        """

    @property
    def pid(self) -> int | None:
        """
        The process id of the worker it last started in, if any.
        """

    def cancel(self) -> None:
        """
        Cancel the call, as cancelling the C{Deferred} its submitter got
        does.
        """


class PoolObserver(Protocol):
    """
    What a L{taskd.pool.ProcessPool} tells its observer.
    """

    def callEnded(self, call: ObservedCall, outcome: str, ran: float | None) -> None:
        """
        C{call} is over: its caller has its result or error.  (Only a
        call's end is told, once per call: when it was accepted and when
        and where it started are on the call.)

        @param outcome: L{RESULT}, L{CANCELLED}, or the C{type} of the
            error it failed with (C{"timeout"}, C{"task_failed"}, ...).
        @param ran: seconds it ran in a worker, or C{None} if it never
            started.
        """

    def workerStarted(self, pid: int | None) -> None:
        """
        The worker with process id C{pid} is ready.
        """

    def workerEnded(self, pid: int | None, reason: str) -> None:
        """
        The worker with process id C{pid} has exited.

        @param reason: one of L{WORKER_END_REASONS}.
        """


def outcomeOf(result: object) -> str:
    """
    @param result: what a call's C{Deferred} fired with: its result, or a
        C{Failure}.
    @return: the call's outcome, as L{PoolObserver.callEnded} takes it.
    """
    if not isinstance(result, Failure):
        return RESULT
    error = result.value
    if isinstance(error, errors.TaskdError):
        return error.type
    if isinstance(error, CancelledError):
        return CANCELLED
    return "error"


def workerEndReason(killedFor: str | None, retiredFor: str | None, stopping: bool) -> str:
    """
    Name why a worker ended (one of L{WORKER_END_REASONS}).

    @param killedFor: if the pool killed it, the outcome of the call it was
        running then (or C{""} if none); C{None} if it was not killed.
    @param retiredFor: if the pool let it go gracefully, why the worker
        said goodbye (C{"memory"}, C{"signal"}) or C{""}; C{None} if it
        was not let go.
    @param stopping: whether the pool is stopping.
    """
    if retiredFor is not None:
        if retiredFor in ("memory", "signal"):
            return retiredFor
        return "stop" if stopping else "recycle"
    if killedFor is not None:
        if killedFor == "timeout":
            return "timeout"
        if killedFor == CANCELLED:
            return "cancel"
        if killedFor in ("worker_protocol_error", "result_too_large"):
            return "protocol"
        if stopping or killedFor == "stopping":
            return "stop"
        return "recycle" if killedFor in ("", RESULT) else "crash"
    return "stop" if stopping else "crash"
