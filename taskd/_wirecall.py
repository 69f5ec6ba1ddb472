# -*- test-case-name: tests.test_wire -*-
"""
The call request and the rules every request's decoding shares: the
C{Call} message, ids, L{ProtocolError} and the precise L{errors.BadRequest}
errors, decoding and encoding a call.  Below L{taskd.wire} (which
re-exports these names, and is the one entry point for decoding) and the
job and admin message rooms (L{taskd._wirejobs}, L{taskd._wireadmin}),
which decode a C{submit} as a call with more fields.
"""

from __future__ import annotations

from typing import Any, Union

from attrs import frozen

from taskd import _json, errors
from taskd._frames import splitArguments
from taskd.registry import MAX_PRIORITY, MIN_PRIORITY

#: Stands for "no id": the call is answered in arrival order.
NO_ID: Any = None

CallId = Union[str, int, None]


@frozen
class Call:
    """
    Run a task.

    @ivar function: the task's registered name.
    @ivar args: positional arguments.
    @ivar kwargs: keyword arguments.
    @ivar id: the client's id for the call, or L{NO_ID}.
    @ivar timeout: seconds the call may run, or C{None} for the daemon's
        default.
    @ivar raw: the request line itself, which holds the arguments in the
        form a worker reads (see L{taskd.pool.ProcessPool.submitEncoded}).
    @ivar progress: whether the client wants the task's progress reports.
    @ivar priority: the call's priority (L{MIN_PRIORITY} to L{MAX_PRIORITY},
        higher first), or C{None} for its task's default.
    @ivar deadline: seconds the call may wait in the daemon's queue before
        it starts (past them it fails with L{errors.Expired}), or C{None}.
    """

    function: str
    args: list[Any]
    kwargs: dict[str, Any]
    id: CallId = NO_ID
    timeout: float | None = None
    raw: bytes = b""
    progress: bool = False
    priority: int | None = None
    deadline: float | None = None



class ProtocolError(Exception):
    """
    A line could not be decoded into a request.

    @ivar error: the error to reply with.
    @ivar id: the id of the call the line was meant to be, if it could be
        read, so the error reply can carry it.
    """

    def __init__(self, error: errors.TaskdError, id: CallId = NO_ID) -> None:
        super().__init__(error.message)
        self.error = error
        self.id = id


def badRequest(message: str, id: CallId = NO_ID) -> ProtocolError:
    """
    @return: the L{ProtocolError} for an L{errors.BadRequest} saying C{message}.
    """
    return ProtocolError(errors.BadRequest(message), id)


def checkId(value: Any) -> CallId:
    """
    @return: a request's C{id} field, checked.
    @raise ProtocolError: if it is neither a string nor an integer.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise badRequest("'id' must be a string or an integer")



def decodeCall(message: dict[str, Any], id: CallId, line: bytes) -> Call:
    """
    Decode a call from its request's object C{message} (its C{id}
    checked already; C{line}, the request line, is kept as its C{raw}).

    @raise ProtocolError: if it is not a valid call.
    """
    function = message.get("function")
    if function is None:
        raise badRequest("missing 'function': the name of the task to run", id)
    if not isinstance(function, str) or not function:
        raise badRequest("'function' must be a non-empty string", id)
    args = message.get("args")
    kwargs = message.get("kwargs")
    if type(args) is list and kwargs is None:
        kwargs = {}  # the usual case
    else:
        try:
            args, kwargs = splitArguments(args, kwargs)
        except ValueError as e:
            raise badRequest(str(e), id)
    timeout = message.get("timeout")
    if timeout is not None:
        if (
            not isinstance(timeout, (int, float))
            or isinstance(timeout, bool)
            or not 0 < timeout < float("inf")
        ):
            raise badRequest("'timeout' must be a positive number of seconds", id)
        timeout = float(timeout)
    progress = message.get("progress", False)
    if not isinstance(progress, bool):
        raise badRequest("'progress' must be true or false", id)
    if progress and id is None:
        raise badRequest("'progress' needs an 'id' to tell whose progress it is")
    priority = message.get("priority")
    if priority is not None and (
        type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise badRequest(
            f"'priority' must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}", id
        )
    deadline = message.get("deadline")
    if deadline is not None:
        if (
            not isinstance(deadline, (int, float))
            or isinstance(deadline, bool)
            or not 0 < deadline < float("inf")
        ):
            raise badRequest("'deadline' must be a positive number of seconds", id)
        deadline = float(deadline)
    return Call(function, args, kwargs, id, timeout, line, progress, priority, deadline)



def encodeCall(call: Call) -> bytes:
    """
    Encode a call request as a line, line ending included.
    """
    message: dict[str, Any] = {"function": call.function}
    if call.args:
        message["args"] = call.args
    if call.kwargs:
        message["kwargs"] = call.kwargs
    if call.timeout is not None:
        message["timeout"] = call.timeout
    if call.progress:
        message["progress"] = True
    if call.priority is not None:
        message["priority"] = call.priority
    if call.deadline is not None:
        message["deadline"] = call.deadline
    if call.id is not None:
        message["id"] = call.id
    return _json.encodeASCII(message) + b"\n"


__all__ = [
    "NO_ID",
    "CallId",
    "Call",
    "ProtocolError",
    "badRequest",
    "checkId",
    "decodeCall",
    "encodeCall",
]
