# -*- test-case-name: tests.test_wire -*-
"""
The JSON-lines wire codec: message types, decoding with precise errors,
and encoding.  No I/O happens here (the protocols that do it are
L{taskd.server} and L{taskd.client}).  C{docs/protocol.md} is the
specification; this module follows it.

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
from taskd._frames import jsonType, splitArguments
from taskd.registry import MAX_PRIORITY, MIN_PRIORITY

#: The protocol version this module speaks.
VERSION = 1

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


# -- background jobs (taskd.jobs): requests --------------------------------


@frozen
class Submit:
    """
    Queue a job: a call with a life of its own, answered at once with
    L{Accepted} once the job is journaled.

    @ivar call: the call to run (its C{id} is the submit's).
    @ivar delay: seconds to wait before it may start, or C{None}.
    @ivar at: when it may start (seconds since the epoch), or C{None}.
    @ivar key: an idempotency key, or C{None}.
    """

    call: Call
    delay: float | None = None
    at: float | None = None
    key: str | None = None


@frozen
class JobStatus:
    """
    Ask for a job's state (answered with L{JobReply}).
    """

    job: str
    id: CallId = NO_ID


@frozen
class Wait:
    """
    Wait for a job to end; answered as a call is (L{Result} or
    L{ErrorReply}, after L{Progress} reports if C{progress}).
    """

    job: str
    id: CallId = NO_ID
    progress: bool = False


@frozen
class CancelJob:
    """
    Cancel a job (answered with its L{JobReply} once it has ended).
    """

    job: str
    id: CallId = NO_ID


JobRequest = Union[Submit, JobStatus, Wait, CancelJob]

#: The request types about jobs.
JOB_REQUESTS = (Submit, JobStatus, Wait, CancelJob)


@frozen
class Admin:
    """
    An admin request (see C{docs/operations.md}): C{command} is one of
    L{ADMIN_COMMANDS}; C{fields} are its other fields (C{"token"}, the
    admin token; C{"number"}, C{"count"}).
    """

    command: str
    fields: dict[str, Any]


#: The admin requests' commands.
ADMIN_COMMANDS = ("running", "cancel", "workers", "drain", "restart")


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


# -- background jobs (taskd.jobs): replies ---------------------------------


@frozen
class Accepted:
    """
    A submitted job is journaled: C{job} is its id.  C{existing} says the
    submit's key belonged to a job already known, whose id this is.
    """

    id: CallId
    job: str
    existing: bool = False


@frozen
class JobReply:
    """
    A job's state: C{job} (its id), C{state}, and in C{fields} the rest
    as sent (C{function}, C{submitted}, C{runAt}, C{started}, C{finished},
    C{key}, C{progress}, and C{result} or C{error} once it has ended).
    """

    id: CallId
    job: str
    state: str
    fields: dict[str, Any]


@frozen
class AdminReply:
    """
    The answer to an L{Admin} request: its C{command}, and what it says.
    """

    command: str
    fields: dict[str, Any]


def encodeAdminReply(reply: AdminReply) -> bytes:
    """
    Encode the answer to an admin request.
    """
    return _json.encodeASCII({"type": "admin", "command": reply.command, **reply.fields}) + b"\n"


Reply = Union[Result, Progress, ErrorReply, HelloReply, StatsReply, TasksReply, Accepted, JobReply, AdminReply]


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


def _bad(message: str, id: CallId = NO_ID) -> ProtocolError:
    return ProtocolError(errors.BadRequest(message), id)


def _checkId(value: Any) -> CallId:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _bad("'id' must be a string or an integer")


def decodeRequest(line: bytes) -> Request:
    """
    Decode one request line (without its line ending).

    @raise ProtocolError: if the line is not a valid request; the error says
        precisely what is wrong.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(f"the line is not valid UTF-8 (byte {e.start})")
    try:
        message = _json.loads(text)
    except ValueError as e:
        raise _bad(f"the line is not valid JSON: {e}")
    except RecursionError:
        # 2,000 "[" fit in 4 KiB, before authentication.
        raise _bad("the line nests arrays or objects too deeply")
    if not isinstance(message, dict):
        raise _bad(f"a request must be a JSON object, not {jsonType(message)}")
    id = _checkId(message.get("id"))
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


def _decodeAdmin(message: dict[str, Any]) -> Admin:
    command = message.get("command")
    if command not in ADMIN_COMMANDS:
        raise _bad(f"an admin request needs a 'command', one of {', '.join(ADMIN_COMMANDS)}")
    name = {"cancel": "number", "workers": "count"}.get(command)
    if name is not None:
        value = message.get(name)
        if type(value) is not int or value < 1:
            raise _bad(f"admin {command} needs {name!r}, a whole number above 0")
    token = message.get("token")
    if token is not None and not isinstance(token, str):
        raise _bad("'token' must be a string")
    return Admin(command, {k: v for k, v in message.items() if k not in ("type", "command")})


def _decodeCall(message: dict[str, Any], id: CallId, line: bytes) -> Call:
    function = message.get("function")
    if function is None:
        raise _bad("missing 'function': the name of the task to run", id)
    if not isinstance(function, str) or not function:
        raise _bad("'function' must be a non-empty string", id)
    try:
        args, kwargs = splitArguments(message.get("args"), message.get("kwargs"))
    except ValueError as e:
        raise _bad(str(e), id)
    timeout = message.get("timeout")
    if timeout is not None:
        if (
            not isinstance(timeout, (int, float))
            or isinstance(timeout, bool)
            or not 0 < timeout < float("inf")
        ):
            raise _bad("'timeout' must be a positive number of seconds", id)
        timeout = float(timeout)
    progress = message.get("progress", False)
    if not isinstance(progress, bool):
        raise _bad("'progress' must be true or false", id)
    if progress and id is None:
        raise _bad("'progress' needs an 'id' to tell whose progress it is")
    priority = message.get("priority")
    if priority is not None and (
        type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise _bad(
            f"'priority' must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}", id
        )
    deadline = message.get("deadline")
    if deadline is not None:
        if (
            not isinstance(deadline, (int, float))
            or isinstance(deadline, bool)
            or not 0 < deadline < float("inf")
        ):
            raise _bad("'deadline' must be a positive number of seconds", id)
        deadline = float(deadline)
    return Call(function, args, kwargs, id, timeout, line, progress, priority, deadline)


def encodeRequest(request: Request) -> bytes:
    """
    Encode a request as a line, line ending included.
    """
    message: dict[str, Any]
    if isinstance(request, JOB_REQUESTS):
        return encodeJobRequest(request)
    if isinstance(request, Call):
        message = {"function": request.function}
        if request.args:
            message["args"] = request.args
        if request.kwargs:
            message["kwargs"] = request.kwargs
        if request.timeout is not None:
            message["timeout"] = request.timeout
        if request.progress:
            message["progress"] = True
        if request.priority is not None:
            message["priority"] = request.priority
        if request.deadline is not None:
            message["deadline"] = request.deadline
    elif isinstance(request, Cancel):
        message = {"type": "cancel", "id": request.id}
    elif isinstance(request, Stats):
        message = {"type": "stats"}
    elif isinstance(request, Tasks):
        message = {"type": "tasks"}
    elif isinstance(request, Admin):
        message = {"type": "admin", "command": request.command, **request.fields}
    else:
        message = {"type": "hello", "version": request.version, **request.fields}
    if isinstance(request, Call) and request.id is not None:
        message["id"] = request.id
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
        return AdminReply(str(message.get("command")), {k: v for k, v in message.items() if k not in ("type", "command")})
    if kind == "tasks":
        tasks = message.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise ValueError("a tasks reply needs a 'tasks' array of objects")
        return TasksReply(tasks)
    if kind in ("accepted", "job"):
        return decodeJobReply(message)
    raise ValueError(f"unknown reply type {kind!r}")


# -- background jobs (taskd.jobs): decoding and encoding ----------------------

_JOB_KINDS = frozenset({"submit", "job", "wait"})

#: Job ids are made by the daemon; a longer one is no id of ours.
MAX_JOB_ID = 200


def _seconds(message: dict[str, Any], name: str, id: CallId, what: str) -> float | None:
    value = message.get(name)
    if value is None:
        return None
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not 0 <= value < float("inf")
    ):
        raise _bad(f"{name!r} must be {what}", id)
    return float(value)


def _jobId(message: dict[str, Any], kind: str, id: CallId) -> str:
    job = message.get("job")
    if job is None:
        raise _bad(f"a {kind} needs the 'job' id that submit answered", id)
    if not isinstance(job, str) or not 0 < len(job) <= MAX_JOB_ID:
        raise _bad(f"'job' must be a job id: a string of 1 to {MAX_JOB_ID} characters", id)
    return job


def decodeJobRequest(kind: str, message: dict[str, Any], id: CallId, line: bytes) -> JobRequest:
    """
    Decode a request about jobs (C{submit}, C{job}, C{wait}, or a
    C{cancel} with a C{job}).

    @raise ProtocolError: if it is not valid; the error says what is wrong.
    """
    if kind == "submit":
        if message.get("progress") is not None:
            raise _bad("a submit takes no 'progress': ask for it with a wait", id)
        call = _decodeCall(message, id, line)
        delay = _seconds(message, "delay", id, "a number of seconds, 0 or more")
        at = _seconds(message, "at", id, "a time in seconds since the epoch")
        if delay is not None and at is not None:
            raise _bad("give 'delay' or 'at', not both", id)
        key = message.get("key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 1000):
            raise _bad("'key' must be a string of 1 to 1000 characters", id)
        return Submit(call, delay, at, key)
    job = _jobId(message, kind, id)
    if kind == "wait":
        progress = message.get("progress", False)
        if not isinstance(progress, bool):
            raise _bad("'progress' must be true or false", id)
        if progress and id is None:
            raise _bad("'progress' needs an 'id' to tell whose progress it is")
        return Wait(job, id, progress)
    if kind == "cancel":
        return CancelJob(job, id)
    return JobStatus(job, id)


def encodeJobRequest(request: JobRequest) -> bytes:
    """
    Encode a request about jobs as a line, line ending included.
    """
    message: dict[str, Any]
    if isinstance(request, Submit):
        message = _json.loads(encodeRequest(request.call))
        message["type"] = "submit"
        for name, value in (("delay", request.delay), ("at", request.at), ("key", request.key)):
            if value is not None:
                message[name] = value
        return _json.encodeASCII(message) + b"\n"
    kind = {JobStatus: "job", Wait: "wait", CancelJob: "cancel"}[type(request)]
    message = {"type": kind, "job": request.job}
    if isinstance(request, Wait) and request.progress:
        message["progress"] = True
    if request.id is not None:
        message["id"] = request.id
    return _json.encodeASCII(message) + b"\n"


def encodeAccepted(id: CallId, job: str, existing: bool) -> bytes:
    """
    Encode the answer to a submit.
    """
    message: dict[str, Any] = {"type": "accepted", "job": job}
    if id is not None:
        message["id"] = id
    if existing:
        message["existing"] = True
    return _json.encodeASCII(message) + b"\n"


def encodeJobReply(
    id: CallId,
    fields: dict[str, Any],
    result: bytes | None = None,
    progress: bytes | None = None,
) -> bytes:
    """
    Encode a job's state: C{fields} (C{job}, C{state}, its timestamps, an
    C{error} object), and its C{result} and last C{progress} report as the
    worker encoded them.
    """
    message: dict[str, Any] = {"type": "job"}
    if id is not None:
        message["id"] = id
    message.update(fields)
    line = _json.encodeASCII(message)
    extra = [
        b',"%s":%s' % (name, value)
        for name, value in ((b"progress", progress), (b"result", result))
        if value is not None
    ]
    if extra:
        line = line[:-1] + b"".join(extra) + b"}"
    return line + b"\n"


def decodeJobReply(message: dict[str, Any]) -> Accepted | JobReply:
    """
    Decode an C{accepted} or C{job} reply, as a client does.

    @raise ValueError: if it lacks the job's id, or a C{job} its state.
    """
    id = message.get("id")
    job = message.get("job")
    if not isinstance(job, str):
        raise ValueError(f"a {message.get('type')} reply needs a 'job' id")
    if message.get("type") == "accepted":
        return Accepted(id, job, message.get("existing") is True)
    state = message.get("state")
    if not isinstance(state, str):
        raise ValueError("a job reply needs its 'state'")
    fields = {k: v for k, v in message.items() if k not in ("type", "id", "job", "state")}
    return JobReply(id, job, state, fields)
