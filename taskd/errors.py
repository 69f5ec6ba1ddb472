# -*- test-case-name: tests.test_errors -*-
"""
One exception hierarchy shared by the pool, the server and the client.

Every error that can end a call has a stable, machine-readable C{type}
string (the C{type} field of an error reply on the wire), a human
C{message}, and says whether the task had C{started}: C{False} is a
promise that this call did not run and never will (a caller may safely
send it again, here or to another daemon); C{True} means it ran, or may
have.  L{errorFromDict} turns a wire error back into the right class.
"""

from __future__ import annotations

from typing import Any


class TaskdError(Exception):
    """
    Base class of every error taskd reports.

    @cvar type: the stable machine-readable name of this kind of error.
    @ivar message: a human-readable explanation.
    @ivar started: whether the task had started running: C{False} promises
        the call did not run and will not; C{True} means it ran or may
        have.  Each class has a default; errors that can come either way
        (L{PoolStopping}, L{TaskCancelled}) are given it.
    @ivar attempts: how many times the call ran (more than 1 for a task
        with retries; see C{docs/scheduling.md}).
    """

    type = "error"
    started = True
    attempts = 1

    def __init__(self, message: str, *, started: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if started is not None:
            self.started = started

    def toDict(self) -> dict[str, Any]:
        """
        @return: the error as the JSON object an error reply carries.
        """
        d = {"type": self.type, "message": self.message, "started": self.started}
        if self.attempts != 1:
            d["attempts"] = self.attempts
        return d


class BadRequest(TaskdError):
    """
    The request is malformed: not JSON, wrong field types, arguments of the
    wrong shape.
    """

    type = "bad_request"
    started = False


class LineTooLong(BadRequest):
    """
    A request line is longer than the daemon accepts.  The daemon replies,
    then closes the connection: it cannot tell where the next request
    starts.
    """

    type = "line_too_long"


class LineTimeout(BadRequest):
    """
    A request line was started and not finished within the daemon's
    C{--line-timeout}.  The daemon replies, then closes the connection.
    """

    type = "line_timeout"


class IdleTimeout(TaskdError):
    """
    The connection had no call in flight and sent nothing for the daemon's
    C{--idle-timeout}.  The daemon sends this, then closes the connection.
    """

    type = "idle_timeout"
    started = False


class DuplicateId(BadRequest):
    """
    A call reused the C{id} of a call still in flight on the connection.
    The new call is refused; the one in flight goes on.
    """

    type = "duplicate_id"


class Unauthenticated(TaskdError):
    """
    The daemon requires a token and the connection has not (or not
    correctly) authenticated; the daemon closes the connection.
    """

    type = "unauthenticated"
    started = False


class UnknownTask(TaskdError):
    """
    No task is registered under the requested name.
    """

    type = "unknown_task"
    started = False


class TaskFailed(TaskdError):
    """
    The task raised an exception in its worker.

    @ivar remoteType: the name of the remote exception's class, e.g.
        C{"ValueError"} or C{"myapp.errors.MailRejected"}.
    @ivar remoteTraceback: the remote traceback, as text (C{""} when the
        daemon sent none), or C{None} in a daemon that withholds it (see
        C{--tracebacks}): then L{toDict} has no C{traceback} field.
    """

    type = "task_failed"

    def __init__(
        self,
        message: str,
        remoteType: str = "",
        remoteTraceback: str | None = "",
        *,
        started: bool | None = None,
    ) -> None:
        super().__init__(message, started=started)
        self.remoteType = remoteType
        self.remoteTraceback = remoteTraceback

    def __str__(self) -> str:
        return f"{self.remoteType}: {self.message}"

    def toDict(self) -> dict[str, Any]:
        d = super().toDict()
        d["exception"] = self.remoteType
        if self.remoteTraceback is not None:
            d["traceback"] = self.remoteTraceback
        return d


class ResultNotSerializable(TaskdError):
    """
    The task returned a value that JSON cannot hold (an arbitrary object,
    NaN, a set, bytes ...).
    """

    type = "bad_result"


class ResultTooLarge(TaskdError):
    """
    The task's encoded result is larger than the pool allows.
    """

    type = "result_too_large"


class TaskTimeout(TaskdError):
    """
    The task ran longer than its timeout; its worker was terminated.
    """

    type = "timeout"


class WorkerCrashed(TaskdError):
    """
    The worker process running the task died (it exited, was killed or
    crashed) before it replied.
    """

    type = "worker_crashed"


class WorkerProtocolError(TaskdError):
    """
    The worker running the call broke the frame protocol: its reply was
    not one JSON value, or it wrote frames the pool cannot read (a task
    that writes to the worker's protocol pipes does that).  The worker was
    replaced; the call's outcome is unknown.
    """

    type = "worker_protocol_error"


class PoolBusy(TaskdError):
    """
    The pool's queue is full, or the daemon has as many connections as it
    accepts; the call (or connection) was not accepted.
    """

    type = "busy"
    started = False


class PoolStopping(TaskdError):
    """
    The pool is stopping (or stopped) and does not accept or finish the call:
    C{started} is C{False} for a call that was refused or still queued,
    C{True} for one cut short by the end of the shutdown grace period (or
    sent ahead to a worker, which may have begun it).
    """

    type = "stopping"
    started = False


class Expired(TaskdError):
    """
    The call waited in the queue past its C{deadline} and was not run.
    """

    type = "expired"
    started = False


class TaskCancelled(TaskdError):
    """
    The call was cancelled.  On the Python side a cancelled C{Deferred}
    fails with C{twisted.internet.defer.CancelledError}; this class names
    the same outcome on the wire, where C{started} says whether it was
    cancelled while still queued (C{False}) or while running (C{True}).
    """

    type = "cancelled"
    started = False


class ConnectionLost(TaskdError):
    """
    The client's connection to the daemon was lost (or closed) before the
    call's reply arrived.  The call may or may not have run (C{started} is
    C{True}), unless it was never sent (C{started} is C{False}).  Never
    sent on the wire.
    """

    type = "connection_lost"


class NotConnected(TaskdError):
    """
    The reconnecting client has no connection to any daemon, and either
    fails fast or could not get one within its wait timeout.  The call was
    not sent.  Never sent on the wire.
    """

    type = "not_connected"
    started = False


class WorkerStartError(TaskdError):
    """
    A worker process could not start, most often because a task module
    failed to import in it.

    @ivar remoteTraceback: the worker's traceback, if it sent one; C{None}
        in a daemon that withholds it (as for L{TaskFailed}).
    """

    type = "worker_start_failed"
    started = False

    def __init__(
        self, message: str, remoteTraceback: str | None = "", *, started: bool | None = None
    ) -> None:
        super().__init__(message, started=started)
        self.remoteTraceback = remoteTraceback

    def toDict(self) -> dict[str, Any]:
        d = super().toDict()
        if self.remoteTraceback is not None:
            d["traceback"] = self.remoteTraceback
        return d


_byType: dict[str, type[TaskdError]] = {
    cls.type: cls
    for cls in (
        BadRequest,
        LineTooLong,
        LineTimeout,
        IdleTimeout,
        DuplicateId,
        Unauthenticated,
        UnknownTask,
        TaskFailed,
        ResultNotSerializable,
        ResultTooLarge,
        TaskTimeout,
        WorkerCrashed,
        WorkerProtocolError,
        PoolBusy,
        PoolStopping,
        Expired,
        TaskCancelled,
        ConnectionLost,
        NotConnected,
        WorkerStartError,
    )
}


class Forbidden(TaskdError):
    """
    An admin request from a connection that may not make it: without the
    admin token, or (when the daemon has none) not on a loopback or
    C{unix:} listener.
    """

    type = "forbidden"
    started = False


_byType[Forbidden.type] = Forbidden


def errorFromDict(d: dict[str, Any]) -> TaskdError:
    """
    Build the exception an error object (as made by L{TaskdError.toDict})
    stands for.  An unknown C{type} gives a plain L{TaskdError} that keeps
    the type, so newer peers do not break older ones.
    A missing or non-boolean C{started} (an older daemon's error) takes
    the class's default; C{attempts} is kept when it is a whole number.
    """
    kind = str(d.get("type", "error"))
    message = str(d.get("message", ""))
    started = d.get("started")
    if not isinstance(started, bool):
        started = None
    cls = _byType.get(kind)
    err: TaskdError
    if cls is TaskFailed:
        err = TaskFailed(
            message, str(d.get("exception", "")), str(d.get("traceback", "")), started=started
        )
    elif cls is WorkerStartError:
        err = WorkerStartError(message, str(d.get("traceback", "")), started=started)
    elif cls is None:
        err = TaskdError(message, started=started)
        err.type = kind
    else:
        err = cls(message, started=started)
    attempts = d.get("attempts")
    if type(attempts) is int and attempts > 1:
        err.attempts = attempts
    return err


# -- background jobs (taskd.jobs) -------------------------------------------


class UnknownJob(TaskdError):
    """
    No job has this id: it was never submitted to this daemon, or it ended
    longer ago than the daemon keeps jobs (C{--job-ttl}, C{--max-jobs}).
    """

    type = "unknown_job"
    started = False


class JobInterrupted(TaskdError):
    """
    The job was running when the daemon stopped or died, and its task does
    not opt into retries (C{@task(retries=...)}): it may have run in part,
    and it is not run again.
    """

    type = "interrupted"


_byType.update({cls.type: cls for cls in (UnknownJob, JobInterrupted)})


# -- the shared (PostgreSQL) journal (taskd.pgjournal) ---------------------


class JournalUnavailable(TaskdError):
    """
    The daemon cannot reach or write its jobs' journal (a PostgreSQL server
    that is down or unreachable, an SQLite file on a full disk).  For a
    submit: the job was not accepted and left no trace; try again once the
    journal is back.  For a C{wait} at the daemon's stop: the job's end
    could not be written, and the next start treats it as interrupted.
    Jobs accepted earlier are safe in the journal (see C{docs/jobs.md}).
    """

    type = "journal_unavailable"
    started = False


_byType[JournalUnavailable.type] = JournalUnavailable
