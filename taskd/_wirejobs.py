# -*- test-case-name: tests.test_wire -*-
"""
The background jobs' messages (L{taskd.jobs}): the C{submit}, C{job},
C{wait} and job C{cancel} requests, the C{accepted} and C{job} replies,
their decoding with precise errors and their encoding.  L{taskd.wire}
re-exports these names and calls L{decodeJobRequest} and
L{decodeJobReply} from its one entry point for each direction.
"""

from __future__ import annotations

from typing import Any, Union

from attrs import frozen

from taskd import _json
from taskd._wirecall import NO_ID, Call, CallId, badRequest as _bad, decodeCall, encodeCall

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



#: The C{type}s of the requests about jobs (and a C{cancel} with a C{job}).
JOB_KINDS = frozenset({"submit", "job", "wait"})

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
        call = decodeCall(message, id, line)
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
        message = _json.loads(encodeCall(request.call))
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


__all__ = [
    "Submit",
    "JobStatus",
    "Wait",
    "CancelJob",
    "JobRequest",
    "JOB_REQUESTS",
    "JOB_KINDS",
    "Accepted",
    "JobReply",
    "MAX_JOB_ID",
    "decodeJobRequest",
    "encodeJobRequest",
    "encodeAccepted",
    "encodeJobReply",
    "decodeJobReply",
]
