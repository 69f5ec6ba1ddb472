# -*- test-case-name: tests.test_client -*-
"""
The Deferred-based client of a taskd daemon::

    client = await connect(reactor, "tcp:127.0.0.1:12345")
    result = await client.call("send_mail", "a@example.com", subject="hi")
    await client.close()

Every call carries an id, so many run at once on one connection and are
matched to their replies as they finish.  Cancelling a call's C{Deferred}
fails it at once with
C{twisted.internet.defer.CancelledError} and tells the daemon, which frees
the worker.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred, TimeoutError as HelloTimeout
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory

from taskd import errors
from taskd.jobclient import JobHandle, Submitter
from taskd.wire import Submit
from taskd._callmany import DEFAULT_WINDOW, CallBatch, DeferredBatch
from taskd._clientprotocol import TaskClientProtocol

#: How long a new connection's hello may take to be answered, by default.
HELLO_TIMEOUT = 30.0


class Caller:
    """
    The calling API shared by L{TaskClient} and
    L{taskd.reconnecting.ReconnectingClient}: subclasses say how a call is
    sent.
    """

    def _send(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
        progress: Callable[[Any], object] | None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[Any]:
        raise NotImplementedError()

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run task C{name} with these arguments: every positional and keyword
        argument goes to the task.

        @return: a C{Deferred} firing with the result, or failing with an
            L{errors.TaskdError} (L{errors.TaskFailed} carries the remote
            type and traceback) or L{errors.ConnectionLost}; cancelling it
            cancels the call.
        """
        return self._send(name, args, kwargs, None, None)

    def callWith(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        progress: Callable[[Any], object] | None = None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[Any]:
        """
        Like L{call}, with call options kept apart from the task's
        arguments.

        @param timeout: seconds the call may run (the daemon's own limit
            still applies).
        @param progress: called with each progress report the task makes
            (see L{taskd.worker.progress}), before the result arrives.
        @param priority: the call's priority, -100 to 100, higher first
            (the task's default if C{None}; see C{docs/scheduling.md}).
        @param deadline: seconds the call may wait in the daemon's queue;
            past them it fails with L{errors.Expired}, not run.
        """
        return self._send(name, args, kwargs, timeout, progress, priority, deadline)

    def callMany(
        self, name: str, argLists: Iterable[Sequence[Any]], *, window: int = DEFAULT_WINDOW
    ) -> Deferred[list[Any]]:
        """
        Run task C{name} once for each argument list of C{argLists}, at
        most C{window} calls at once: the way to run many calls (a
        C{DeferredSemaphore} around L{call} does the same at several times
        the client's cost).  C{argLists} is read as calls are sent, so it
        may be a generator.

        @param argLists: each call's positional arguments.
        @param window: at most this many calls are unanswered at once.
        @return: a C{Deferred} firing with the results, in the order of
            C{argLists}; or failing with the first call's error, once
            which the calls not yet sent are not sent and those still
            unanswered are cancelled.  Cancelling it cancels them too.
        @raise ValueError: if C{window} is not a positive integer.
        """
        batch = DeferredBatch(lambda name, args: self._send(name, args, None, None, None), name, argLists, window)
        batch.fill()
        return batch.done


class TaskClient(Caller, Submitter):
    """
    A connection to a taskd daemon.
    """

    def __init__(self, protocol: TaskClientProtocol) -> None:
        self._protocol = protocol

    def _send(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
        progress: Callable[[Any], object] | None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[Any]:
        return self._protocol.call(name, args, kwargs, timeout, progress, priority, deadline)

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        See L{Caller.call}: here straight to the protocol, a step less per
        call.
        """
        return self._protocol.call(name, args, kwargs)

    def callMany(
        self, name: str, argLists: Iterable[Sequence[Any]], *, window: int = DEFAULT_WINDOW
    ) -> Deferred[list[Any]]:
        """
        Run task C{name} once for each argument list of C{argLists}, at
        most C{window} calls at once, without a C{Deferred} per call; see
        L{Caller.callMany}.
        """
        batch = CallBatch(self._protocol, name, argLists, window)
        batch.fill()
        return batch.done

    def close(self) -> Deferred[None]:
        """
        Cancel the pending calls on the daemon and close the connection;
        the pending calls fail with L{errors.ConnectionLost}.

        @return: a C{Deferred} that fires once the connection is closed.
        """
        return self._protocol.close()

    # -- background jobs (taskd.jobclient) -----------------------------------

    def _submitJob(self, request: Callable[[int], Submit]) -> Deferred[JobHandle]:
        protocol = self._protocol
        d = protocol.askAboutJob(request)
        return d.addCallback(lambda reply: JobHandle(protocol, reply.job, reply.existing))

    def job(self, jobId: str) -> JobHandle:
        """
        @return: a handle on the job with this id (submitted from anywhere).
        """
        return JobHandle(self._protocol, jobId)


def connect(
    reactor: Any, endpoint: str | IStreamClientEndpoint, *, token: str | None = None
) -> Deferred[TaskClient]:
    """
    Connect to a taskd daemon.

    @param endpoint: a client endpoint, or its string description
        (C{"tcp:127.0.0.1:12345"}, C{"unix:/run/taskd.sock"},
        C{"tls:taskd.example.com:12345"}; C{tls:} verifies the daemon's
        certificate and host name).
    @param token: the daemon's shared secret, if it requires one.
    @return: a C{Deferred} firing with a connected (and authenticated)
        L{TaskClient}, or failing with the connection error or
        L{errors.Unauthenticated}.
    """
    if isinstance(endpoint, str):
        endpoint = clientFromString(reactor, endpoint)
    assert IStreamClientEndpoint.providedBy(endpoint)
    d: Deferred[Any] = endpoint.connect(Factory.forProtocol(TaskClientProtocol))
    return d.addCallback(authenticate, token, reactor).addCallback(TaskClient)


def authenticate(
    protocol: TaskClientProtocol,
    token: str | None,
    clock: IReactorTime | None = None,
    timeout: float = HELLO_TIMEOUT,
    goodbye: bool = False,
) -> Deferred[TaskClientProtocol]:
    """
    Open a new connection's conversation with a hello (carrying C{token}):
    a refused token, a TLS certificate that does not verify, or a peer
    that is not taskd (or does not answer) fail here, at connect time,
    rather than on the first call.  On failure the connection is closed.

    @param clock: to time the answer with (no limit without one).
    @param timeout: seconds the daemon has to answer the hello.
    @param goodbye: ask the daemon to say goodbye when it drains or stops
        (see docs/protocol.md): the connection then takes no more calls,
        and is closed once its calls are answered.  For a client that can
        go to another daemon (L{taskd.reconnecting.ReconnectingClient});
        without it, a draining daemon goes on serving the connection.
    @return: a C{Deferred} firing with C{protocol}, its
        L{TaskClientProtocol.serverHello} set, or failing with the
        daemon's error, or L{errors.NotConnected} if it did not answer.
    """
    return Deferred.fromCoroutine(_authenticate(protocol, token, clock, timeout, goodbye))


async def _authenticate(
    protocol: TaskClientProtocol, token: str | None, clock: IReactorTime | None, timeout: float,
    goodbye: bool = False,
) -> TaskClientProtocol:
    fields: dict[str, Any] = {} if token is None else {"token": token}
    if goodbye:
        fields["goodbye"] = True
    hello = protocol.hello(fields)
    if clock is not None:
        hello.addTimeout(timeout, clock)
    try:
        protocol.serverHello = await hello
    except HelloTimeout:
        protocol.transport.abortConnection()
        raise errors.NotConnected(f"the daemon did not answer the hello within {timeout} seconds")
    except BaseException:
        protocol.transport.loseConnection()
        raise
    fields = protocol.serverHello.fields
    maxLine = fields.get("maxLineLength")
    if isinstance(maxLine, int) and not isinstance(maxLine, bool) and maxLine > 0:
        protocol.setMaxLine(maxLine)
    maxInFlight = fields.get("maxInFlight")
    if isinstance(maxInFlight, int) and not isinstance(maxInFlight, bool) and maxInFlight > 0:
        protocol.setMaxInFlight(maxInFlight)
    return protocol


__all__ = ["connect", "authenticate", "Caller", "JobHandle", "TaskClient", "TaskClientProtocol"]
