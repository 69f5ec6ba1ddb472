# -*- test-case-name: tests.test_jobs_client -*-
"""
The client's side of background jobs (L{taskd.jobs}): sending the
requests about jobs on a connection (L{JobAsking}, mixed into
L{taskd.client.TaskClientProtocol}), the L{JobHandle}, and the submitting
API shared by L{taskd.client.TaskClient} and
L{taskd.reconnecting.ReconnectingClient} (L{Submitter})::

    handle = await client.submit("send_mail", "a@example.com", subject="hi")
    result = await handle.result()

Why mixins rather than a jobs object beside the client: C{client.submit}
is the documented API, on both clients, as C{client.call} is; and a
request about a job takes an id, a place among the pending replies and a
check of the daemon's longest line from the connection, exactly as a
call does, so it is a method of the connection that lives here, in the
room of the one concern it serves.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Protocol, Sequence

from twisted.internet.defer import Deferred, fail

from taskd import errors
from taskd.wire import (
    Accepted,
    Call,
    CancelJob,
    JobReply,
    JobRequest,
    JobStatus,
    Submit,
    Wait,
    encodeRequest,
)


class JobAsker(Protocol):
    """
    What a L{JobHandle} sends its requests through: a connection (a
    L{taskd.client.TaskClientProtocol}), or a L{ReconnectingClient
    <taskd.reconnecting.ReconnectingClient>}'s way to the daemon that
    holds the job.
    """

    def askAboutJob(
        self,
        request: Callable[[int], JobRequest],
        progress: Callable[[Any], object] | None = None,
    ) -> Deferred[Any]:
        """
        Send the request C{request} makes from the id it gets.

        @return: a C{Deferred} firing with its answer.
        """


class JobAsking:
    """
    The requests about jobs on one connection: a mixin of
    L{taskd.client.TaskClientProtocol}, whose state it shares (declared
    here for the type checker).
    """

    transport: Any
    closing: bool
    _ids: itertools.count[int]
    _pending: dict[int, Any]  # Deferreds, or any taskd._clientprotocol.Answer
    _progress: dict[int, Callable[[Any], object]]
    _maxLine: int

    def _notSent(self) -> errors.TaskdError:
        raise NotImplementedError()

    def askAboutJob(
        self,
        request: Callable[[int], JobRequest],
        progress: Callable[[Any], object] | None = None,
    ) -> Deferred[Any]:
        """
        Send a request about jobs, made by C{request} from the id it gets.
        Cancelling the C{Deferred} only stops waiting for the answer (a
        job goes on: cancel it with a L{CancelJob}).

        @return: a C{Deferred} firing with the L{Accepted} or L{JobReply}
            answer, or, for a L{Wait}, the job's result; or failing with the
            daemon's error.
        """
        if self.closing:
            return fail(self._notSent())
        id = next(self._ids)
        try:
            line = encodeRequest(request(id))
        except (TypeError, ValueError, RecursionError) as e:
            return fail(errors.BadRequest(f"arguments cannot be sent as JSON: {e!r}"))
        if len(line) > self._maxLine:
            return fail(
                errors.LineTooLong(
                    f"the request is a {len(line)}-byte line; the daemon takes at most "
                    f"{self._maxLine - 1} bytes; it was not sent"
                )
            )

        def forget(d: Deferred[Any]) -> None:
            self._progress.pop(id, None)
            self._pending.pop(id, None)

        d: Deferred[Any] = Deferred(forget)
        self._pending[id] = d
        if progress is not None:
            self._progress[id] = progress
        self.transport.write(line)
        return d

    def _jobAnswered(self, reply: Accepted | JobReply) -> None:
        d = self._pending.pop(reply.id, None) if isinstance(reply.id, int) else None
        if d is not None:
            d.callback(reply)


class JobHandle:
    """
    A background job on a daemon: its id, and what can be asked about it
    (from any connection: a handle made by L{TaskClient.job
    <taskd.client.TaskClient.job>} in another process works as well).

    @ivar id: the job's id.
    @ivar existing: whether the submit found an earlier job by its key
        (this is that job).
    """

    def __init__(self, protocol: JobAsker, jobId: str, existing: bool = False) -> None:
        self._protocol = protocol
        self.id = jobId
        self.existing = existing

    def result(self, progress: Callable[[Any], object] | None = None) -> Deferred[Any]:
        """
        Wait for the job to end.

        @param progress: called with each progress report the job makes
            from now on.
        @return: a C{Deferred} firing with its result, or failing with its
            error (as a call's), L{errors.JobInterrupted} or
            L{errors.UnknownJob}.  Cancelling it stops waiting; the job
            goes on.
        """
        return self._protocol.askAboutJob(
            lambda id: Wait(self.id, id, progress is not None), progress
        )

    def status(self) -> Deferred[JobReply]:
        """
        @return: a C{Deferred} firing with the job's L{JobReply}: its
            C{state}, and in C{fields} its timestamps and, once it has
            ended, its C{result} or C{error} object.
        """
        return self._protocol.askAboutJob(lambda id: JobStatus(self.id, id))

    def cancel(self) -> Deferred[JobReply]:
        """
        Cancel the job.

        @return: a C{Deferred} firing with its L{JobReply} once it has
            ended (C{cancelled}, or the state it had already ended in).
        """
        return self._protocol.askAboutJob(lambda id: CancelJob(self.id, id))


class Submitter:
    """
    The submitting API shared by L{taskd.client.TaskClient} and
    L{taskd.reconnecting.ReconnectingClient}, as L{taskd.client.Caller}
    is the calling one: subclasses say where a submit is sent
    (L{_submitJob}) and where a handle asks (L{job}).
    """

    def _submitJob(self, request: Callable[[int], Submit]) -> Deferred[JobHandle]:
        """
        Send the submit C{request} makes from the id it gets.

        @return: a C{Deferred} firing with the accepted job's handle.
        """
        raise NotImplementedError()

    def job(self, jobId: str) -> JobHandle:
        """
        @return: a handle on the job with this id (submitted from anywhere).
        """
        raise NotImplementedError()

    def submit(self, name: str, /, *args: Any, **kwargs: Any) -> Deferred[JobHandle]:
        """
        Queue task C{name} as a background job with these arguments.

        @return: a C{Deferred} firing with its L{JobHandle} once the daemon
            has it on disk, or failing with L{errors.UnknownTask},
            L{errors.PoolBusy} (the daemon holds its C{--max-jobs}), ...
        """
        return self.submitWith(name, args, kwargs)

    def submitWith(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        delay: float | None = None,
        at: float | None = None,
        key: str | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[JobHandle]:
        """
        Like L{submit}, with the job's options kept apart from the task's
        arguments.

        @param delay: seconds before it may start.
        @param at: when it may start, in seconds since the epoch.
        @param key: an idempotency key: while a job with this key is known,
            the answer is that job's handle (with C{existing} set).
        @param timeout: seconds it may run.
        @param priority: its priority, as a call's.
        @param deadline: seconds it may wait past its time before it
            starts; past them it ends C{expired}.
        """

        def request(id: int) -> Submit:
            call = Call(name, list(args), dict(kwargs or {}), id, timeout, priority=priority, deadline=deadline)
            return Submit(call, delay, at, key)

        return self._submitJob(request)


__all__ = ["JobAsker", "JobAsking", "JobHandle", "Submitter"]
