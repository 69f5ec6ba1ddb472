# -*- test-case-name: tests.test_wire -*-
"""
The JSON-lines wire codec: message types, decoding with precise errors,
and encoding.  No I/O happens here (the protocols that do it are
L{taskd.server} and L{taskd.client}).  C{docs/protocol.md} is the
specification; this module follows it.  It is the one entry point for
decoding (L{decodeRequest}, L{decodeReply}) and re-exports the messages
of its rooms: the call and the shared decoding rules
(L{taskd._wirecall}), the background jobs' messages (L{taskd._wirejobs})
and the admin requests' (L{taskd._wireadmin}).

Requests (one JSON object per line)::

    {"function": "add", "args": [1, 2], "id": 7, "timeout": 5}
    {"function": "add", "args": [1, 2], "priority": 10, "deadline": 30}
    {"type": "cancel", "id": 7}
    {"type": "hello", "version": 1}
    {"type": "stats"}
    {"type": "tasks"}

Replies::

    {"type": "progress", "id": 7, "progress": {"done": 1, "of": 2}}
    {"type": "result", "id": 7, "result": 3}
    {"type": "error", "id": 7, "error": {"type": "timeout", "message": "..."}}
    {"type": "hello", "version": 1, "server": "taskd", "serverVersion": "0.1.0", ...}
    {"type": "stats", "workers": 2, ...}
    {"type": "tasks", "tasks": [{"name": "add", "signature": "(a, b)", "doc": "..."}]}
"""

from __future__ import annotations

from typing import Any, Union

from attrs import frozen

from taskd import _json, errors
from taskd._frames import jsonType
from taskd._wireadmin import (
    ADMIN_COMMANDS,
    Admin,
    AdminReply,
    decodeAdmin as _decodeAdmin,
    decodeAdminReply,
    encodeAdmin,
    encodeAdminReply,
)
from taskd._wirecall import (
    NO_ID,
    Call,
    CallId,
    ProtocolError,
    badRequest as _bad,
    checkId as _checkId,
    decodeCall as _decodeCall,
    encodeCall,
)
from taskd._wirejobs import (
    JOB_KINDS as _JOB_KINDS,
    JOB_REQUESTS,
    MAX_JOB_ID,
    Accepted,
    CancelJob,
    JobReply,
    JobRequest,
    JobStatus,
    Submit,
    Wait,
    decodeJobReply,
    decodeJobRequest,
    encodeAccepted,
    encodeJobReply,
    encodeJobRequest,
)

#: The protocol version this module speaks.
VERSION = 1


@frozen
class Cancel:
    """
    Cancel the call in flight with this id.
    """

    id: str | int


@frozen
class Hello:
    """
    Open a conversation: the highest protocol version the client speaks,
    and any other fields it sends (C{"token"}, to authenticate).
    """

    version: int
    fields: dict[str, Any]


@frozen
class Stats:
    """
    Ask for the daemon's counters (workers, queue, connections).
    """


@frozen
class Tasks:
    """
    Ask for the tasks the daemon serves, with their signatures and the
    first line of their docstrings.
    """


Request = Union[Call, Cancel, Hello, Stats, Tasks, JobRequest, Admin]


@frozen
class Result:
    """
    A call's result.  C{result} is the decoded value.
    """

    id: CallId
    result: Any


@frozen
class Progress:
    """
    A progress report of a running call, as its task made it.
    """

    id: CallId
    progress: Any


@frozen
class ErrorReply:
    """
    A call's (or a bad line's) error.
    """

    id: CallId
    error: errors.TaskdError


@frozen
class HelloReply:
    """
    The daemon's answer to L{Hello}.
    """

    version: int
    fields: dict[str, Any]


@frozen
class StatsReply:
    """
    The daemon's counters, as names and integers.
    """

    fields: dict[str, Any]


@frozen
class TasksReply:
    """
    The tasks the daemon serves: one object per task, with its C{name},
    C{signature} and C{doc} (the first line of its docstring, or C{""}).
    """

    tasks: list[dict[str, str]]


@frozen
class Goodbye:
    """
    The daemon drains or stops: it sends this (C{{"type": "goodbye"}}) on
    each connection whose hello asked for it (C{"goodbye": true}), before
    it closes the connection.  Send nothing more on it: what was sent is
    answered, and the daemon closes the connection once the client has
    closed it, or after a grace period (see docs/protocol.md).
    """


#: The goodbye line, as the daemon writes it.
GOODBYE_LINE = b'{"type":"goodbye"}\n'


Reply = Union[Result, Progress, ErrorReply, HelloReply, StatsReply, TasksReply, Accepted, JobReply, AdminReply, Goodbye]


def decodeRequest(line: bytes) -> Request:
    """
    Decode one request line (without its line ending).

    @raise ProtocolError: if the line is not a valid request; the error says
        precisely what is wrong.
    """
    try:
        message = _json.loadsUTF8(line)
    except UnicodeDecodeError as e:
        raise _bad(f"the line is not valid UTF-8 (byte {e.start})")
    except ValueError as e:
        raise _bad(f"the line is not valid JSON: {e}")
    except RecursionError:
        # 2,000 "[" fit in 4 KiB, before authentication.
        raise _bad("the line nests arrays or objects too deeply")
    if type(message) is not dict:
        raise _bad(f"a request must be a JSON object, not {jsonType(message)}")
    id = message.get("id")
    if type(id) is not int and type(id) is not str:
        id = _checkId(id)
    kind = message.get("type", "call")
    if kind == "call":
        return _decodeCall(message, id, line)
    if (isinstance(kind, str) and kind in _JOB_KINDS) or (kind == "cancel" and "job" in message):
        return decodeJobRequest(kind, message, id, line)
    if kind == "cancel":
        if id is None:
            raise _bad("a cancel needs the 'id' of the call to cancel")
        return Cancel(id)
    if kind == "hello":
        version = message.get("version", VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise _bad("'version' must be a positive integer")
        fields = {k: v for k, v in message.items() if k not in ("type", "version")}
        return Hello(version, fields)
    if kind == "stats":
        return Stats()
    if kind == "tasks":
        return Tasks()
    if kind == "admin":
        return _decodeAdmin(message)
    raise _bad(f"unknown request type {kind!r}", id)


def encodeRequest(request: Request) -> bytes:
    """
    Encode a request as a line, line ending included.
    """
    message: dict[str, Any]
    if isinstance(request, JOB_REQUESTS):
        return encodeJobRequest(request)
    if isinstance(request, Call):
        return encodeCall(request)
    if isinstance(request, Admin):
        return encodeAdmin(request)
    if isinstance(request, Cancel):
        message = {"type": "cancel", "id": request.id}
    elif isinstance(request, Stats):
        message = {"type": "stats"}
    elif isinstance(request, Tasks):
        message = {"type": "tasks"}
    else:
        message = {"type": "hello", "version": request.version, **request.fields}
    return _json.encodeASCII(message) + b"\n"


def _idField(id: CallId) -> bytes:
    if id is None:
        return b""
    if type(id) is int:
        return b'"id":%d,' % (id,)  # the usual case, 10 times faster than JSON
    return b'"id":' + _json.encodeASCII(id) + b","


def encodeResult(id: CallId, encodedResult: bytes) -> bytes:
    """
    Encode a result reply around a result that is already JSON.
    """
    if type(id) is int:
        # The usual case, in one step (the result, maybe large, is copied once).
        return b'{"type":"result","id":%d,"result":%b}\n' % (id, encodedResult)
    # One join: the result may be large, and each + would copy it.
    return b"".join(
        (b'{"type":"result",', _idField(id), b'"result":', encodedResult, b"}\n")
    )


def encodeProgress(id: CallId, encodedProgress: bytes) -> bytes:
    """
    Encode a progress report around a value that is already JSON.
    """
    return b"".join(
        (b'{"type":"progress",', _idField(id), b'"progress":', encodedProgress, b"}\n")
    )


def encodeError(id: CallId, error: errors.TaskdError) -> bytes:
    """
    Encode an error reply.
    """
    return (
        b'{"type":"error",'
        + _idField(id)
        + b'"error":'
        + _json.encodeASCII(error.toDict())
        + b"}\n"
    )


def encodeHelloReply(reply: HelloReply) -> bytes:
    """
    Encode the daemon's hello reply.
    """
    return _json.encodeASCII({"type": "hello", "version": reply.version, **reply.fields}) + b"\n"


def encodeStatsReply(reply: StatsReply) -> bytes:
    """
    Encode the daemon's stats reply.
    """
    return _json.encodeASCII({"type": "stats", **reply.fields}) + b"\n"


def encodeTasksReply(reply: TasksReply) -> bytes:
    """
    Encode the daemon's list of tasks.
    """
    return _json.encodeASCII({"type": "tasks", "tasks": reply.tasks}) + b"\n"


def decodeReply(line: bytes) -> Reply:
    """
    Decode one reply line, as a client does.

    @raise ValueError: if the line is not a reply this version understands.
    """
    try:
        return _decodeReply(line)
    except (TypeError, RecursionError) as e:
        raise ValueError(f"a reply this client cannot read: {e!r}") from None


def _decodeReply(line: bytes) -> Reply:
    message = _json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a reply must be a JSON object")
    kind = message.get("type")
    id = message.get("id")
    if kind == "result":
        return Result(id, message.get("result"))
    if kind == "progress":
        return Progress(id, message.get("progress"))
    if kind == "error":
        error = message.get("error")
        if not isinstance(error, dict):
            raise ValueError("an error reply needs an 'error' object")
        return ErrorReply(id, errors.errorFromDict(error))
    if kind == "hello":
        fields = {k: v for k, v in message.items() if k not in ("type", "version")}
        return HelloReply(int(message.get("version", VERSION)), fields)
    if kind == "stats":
        return StatsReply({k: v for k, v in message.items() if k != "type"})
    if kind == "admin":
        return decodeAdminReply(message)
    if kind == "tasks":
        tasks = message.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise ValueError("a tasks reply needs a 'tasks' array of objects")
        return TasksReply(tasks)
    if kind in ("accepted", "job"):
        return decodeJobReply(message)
    if kind == "goodbye":
        return Goodbye()
    raise ValueError(f"unknown reply type {kind!r}")


__all__ = [
    "VERSION",
    "NO_ID",
    "CallId",
    "Call",
    "Cancel",
    "Hello",
    "Stats",
    "Tasks",
    "Request",
    "Result",
    "Progress",
    "ErrorReply",
    "HelloReply",
    "StatsReply",
    "TasksReply",
    "Reply",
    "Goodbye",
    "GOODBYE_LINE",
    "ProtocolError",
    "decodeRequest",
    "encodeRequest",
    "encodeResult",
    "encodeProgress",
    "encodeError",
    "encodeHelloReply",
    "encodeStatsReply",
    "encodeTasksReply",
    "decodeReply",
    # The background jobs' messages (taskd._wirejobs).
    "Submit",
    "JobStatus",
    "Wait",
    "CancelJob",
    "JobRequest",
    "JOB_REQUESTS",
    "Accepted",
    "JobReply",
    "MAX_JOB_ID",
    "decodeJobRequest",
    "encodeJobRequest",
    "encodeAccepted",
    "encodeJobReply",
    "decodeJobReply",
    # The admin requests' messages (taskd._wireadmin).
    "Admin",
    "ADMIN_COMMANDS",
    "AdminReply",
    "encodeAdminReply",
]
