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

import itertools
from collections import deque
from typing import Any, Callable, Sequence

from attrs import define, field
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from taskd import errors
from taskd.protocol import (
    VERSION,
    Call,
    Cancel,
    ErrorReply,
    Hello,
    HelloReply,
    Progress,
    Result,
    decodeReply,
    encodeRequest,
)

#: The longest reply line the client accepts: a 16 MiB result, escaped.
MAX_REPLY = 128 * 1024 * 1024


class TaskClientProtocol(LineReceiver):
    """
    The client's side of one connection.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_REPLY
    # A stream transport (TCP, TLS, UNIX).
    transport: Any
    log = Logger()

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, Deferred[Any]] = {}
        self._progress: dict[int, Callable[[Any], object]] = {}
        self._lostWaiters: list[Deferred[None]] = []
        self._helloWaiters: deque[Deferred[HelloReply]] = deque()
        self._closed = False
        #: The daemon's answer to the hello sent at connect time.
        self.serverHello: HelloReply | None = None

    def call(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        progress: Callable[[Any], object] | None = None,
    ) -> Deferred[Any]:
        if self._closed:
            return _failed(errors.ConnectionLost("the connection is closed"))
        id = next(self._ids)
        try:
            line = encodeRequest(
                Call(name, list(args), dict(kwargs or {}), id, timeout, progress=progress is not None)
            )
        except (TypeError, ValueError) as e:
            return _failed(errors.BadRequest(f"arguments cannot be sent as JSON: {e}"))

        def cancel(d: Deferred[Any]) -> None:
            self._progress.pop(id, None)
            if self._pending.pop(id, None) is not None and not self._closed:
                self.transport.write(encodeRequest(Cancel(id)))

        d: Deferred[Any] = Deferred(cancel)
        self._pending[id] = d
        if progress is not None:
            self._progress[id] = progress
        self.transport.write(line)
        return d

    def hello(self, fields: dict[str, Any]) -> Deferred[HelloReply]:
        """
        Send a hello (with a token, say) and wait for the daemon's answer.

        @return: a C{Deferred} firing with the L{HelloReply}, or failing
            with the daemon's error (L{errors.Unauthenticated}).
        """
        d: Deferred[HelloReply] = Deferred()
        if self._closed:
            d.errback(errors.ConnectionLost("the connection is closed"))
            return d
        self._helloWaiters.append(d)
        self.transport.write(encodeRequest(Hello(VERSION, fields)))
        return d

    def lineReceived(self, line: bytes) -> None:
        try:
            reply = decodeReply(line)
        except ValueError as e:
            self.log.warn("ignoring a reply taskd.client cannot read: {error}", error=e)
            return
        if isinstance(reply, HelloReply):
            if self._helloWaiters:
                self._helloWaiters.popleft().callback(reply)
            return
        if isinstance(reply, Progress):
            callback = self._progress.get(reply.id) if isinstance(reply.id, int) else None
            if callback is not None:
                try:
                    callback(reply.progress)
                except Exception:
                    self.log.failure("a progress callback failed")
            return
        if isinstance(reply, (Result, ErrorReply)):
            d = None
            if isinstance(reply.id, int):
                self._progress.pop(reply.id, None)
                d = self._pending.pop(reply.id, None)
            if d is None:
                if isinstance(reply, ErrorReply) and reply.id is None:
                    # An error about the connection itself ("busy",
                    # "unauthenticated"), or an answer to our hello.
                    if self._helloWaiters:
                        self._helloWaiters.popleft().errback(reply.error)
                    else:
                        self.log.warn("taskd: {error}", error=reply.error.message)
                return
            if isinstance(reply, Result):
                d.callback(reply.result)
            else:
                d.errback(reply.error)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.error("taskd sent a reply over {max} bytes; disconnecting", max=self.MAX_LENGTH)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._progress.clear()
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(errors.ConnectionLost(f"connection to taskd lost: {reason.getErrorMessage()}"))
        hellos, self._helloWaiters = self._helloWaiters, deque()
        for hello in hellos:
            hello.errback(errors.ConnectionLost(f"connection to taskd lost: {reason.getErrorMessage()}"))
        waiters, self._lostWaiters = self._lostWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def cancelPending(self) -> None:
        """
        Send a cancel for every call still waiting for its reply.  The daemon
        takes a clean end of stream as "done sending" and would still run
        them (see docs/protocol.md), so a client closing on purpose calls
        this first.
        """
        if self._closed:
            return
        for id in list(self._pending):
            self.transport.write(encodeRequest(Cancel(id)))

    def whenLost(self) -> Deferred[None]:
        """
        @return: a C{Deferred} that fires once the connection is gone.
        """
        if self._closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._lostWaiters.append(d)
        return d


class _Calls:
    """
    The calling API shared by L{TaskClient} and L{ReconnectingClient}.
    """

    def _send(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
        progress: Callable[[Any], object] | None,
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
    ) -> Deferred[Any]:
        """
        Like L{call}, with call options kept apart from the task's
        arguments.

        @param timeout: seconds the call may run (the daemon's own limit
            still applies).
        @param progress: called with each progress report the task makes
            (see L{taskd.worker.progress}), before the result arrives.
        """
        return self._send(name, args, kwargs, timeout, progress)


class TaskClient(_Calls):
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
    ) -> Deferred[Any]:
        return self._protocol.call(name, args, kwargs, timeout, progress)

    def close(self) -> Deferred[None]:
        """
        Cancel the pending calls on the daemon and close the connection;
        the pending calls fail with L{errors.ConnectionLost}.

        @return: a C{Deferred} that fires once the connection is closed.
        """
        protocol = self._protocol
        lost = protocol.whenLost()
        protocol.cancelPending()
        protocol.transport.loseConnection()
        return lost


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
    return d.addCallback(_prepare, token).addCallback(TaskClient)


async def _authenticate(protocol: Any, token: str | None) -> Any:
    # Always open with a hello: a refused token, a TLS certificate that
    # does not verify, or a peer that is not taskd fail here, at connect
    # time, rather than on the first call.
    try:
        protocol.serverHello = await protocol.hello(
            {} if token is None else {"token": token}
        )
    except BaseException:
        protocol.transport.loseConnection()
        raise
    return protocol


def _prepare(protocol: Any, token: str | None) -> Deferred[Any]:
    return Deferred.fromCoroutine(_authenticate(protocol, token))


@define(eq=False)
class _Waiting:
    """
    A call made while no daemon was connected.
    """

    name: str
    args: Sequence[Any]
    kwargs: dict[str, Any] | None
    timeout: float | None
    progress: Callable[[Any], object] | None
    deferred: Deferred[Any] = field(init=False)
    timer: IDelayedCall | None = None
    sent: Deferred[Any] | None = None


class ReconnectingClient(_Calls, MultiService):
    """
    A client of one or more daemons that stays connected.

    It keeps a connection to every endpoint (a
    C{twisted.application.internet.ClientService} each, reconnecting with
    backoff) and spreads calls over the connected ones in turn; a daemon
    that is down is skipped until it is back.  A call made while no daemon
    is connected waits up to C{waitTimeout} seconds for one (at most
    C{maxWaiting} calls wait), or fails at once with
    L{errors.NotConnected} if C{failFast}.

    A call already sent is not retried elsewhere when its connection is
    lost: it fails with L{errors.ConnectionLost}, since it may have run.

    Add it to a service tree, or call C{startService()} yourself.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoints: Sequence[str | IStreamClientEndpoint],
        *,
        waitTimeout: float = 30.0,
        maxWaiting: int = 1000,
        failFast: bool = False,
        retryPolicy: Callable[[int], float] | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__()
        if not endpoints:
            raise ValueError("a client needs at least one endpoint")
        self._reactor = reactor
        self.waitTimeout = waitTimeout
        self.maxWaiting = maxWaiting
        self.failFast = failFast
        self._connected: list[TaskClientProtocol] = []
        self._turn = 0
        self._waiting: deque[_Waiting] = deque()
        self._token = token
        if retryPolicy is None:
            retryPolicy = backoffPolicy(initialDelay=0.2, maxDelay=10.0)
        for endpoint in endpoints:
            if isinstance(endpoint, str):
                endpoint = clientFromString(reactor, endpoint)
            _Connection(self, endpoint, retryPolicy).setServiceParent(self)

    def connectedCount(self) -> int:
        """
        @return: how many daemons are connected now.
        """
        return len(self._connected)

    def _send(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
        progress: Callable[[Any], object] | None,
    ) -> Deferred[Any]:
        if self._connected:
            protocol = self._connected[self._turn % len(self._connected)]
            self._turn += 1
            return protocol.call(name, args, kwargs, timeout, progress)
        if not self.running:
            return _failed(errors.NotConnected("the client is not running"))
        if self.failFast:
            return _failed(errors.NotConnected("no daemon is connected"))
        if len(self._waiting) >= self.maxWaiting:
            return _failed(
                errors.NotConnected(
                    f"no daemon is connected and {self.maxWaiting} calls "
                    "are already waiting for one"
                )
            )
        waiting = _Waiting(name, args, kwargs, timeout, progress)

        def cancel(d: Deferred[Any]) -> None:
            if waiting.sent is not None:
                waiting.sent.cancel()
            else:
                self._unwait(waiting)

        waiting.deferred = Deferred(cancel)
        waiting.timer = self._reactor.callLater(self.waitTimeout, self._expire, waiting)
        self._waiting.append(waiting)
        return waiting.deferred

    def _unwait(self, waiting: _Waiting) -> None:
        self._waiting.remove(waiting)
        if waiting.timer is not None and waiting.timer.active():
            waiting.timer.cancel()

    def _expire(self, waiting: _Waiting) -> None:
        waiting.timer = None
        self._waiting.remove(waiting)
        waiting.deferred.errback(
            errors.NotConnected(
                f"no daemon could be reached within {self.waitTimeout} seconds"
            )
        )

    def _ready(self, protocol: Any) -> None:
        self._connected.append(protocol)
        protocol.whenLost().addCallback(lambda _: self._connected.remove(protocol))
        while self._waiting and self._connected:
            waiting = self._waiting[0]
            self._unwait(waiting)
            waiting.sent = self._send(
                waiting.name, waiting.args, waiting.kwargs, waiting.timeout, waiting.progress
            )
            waiting.sent.chainDeferred(waiting.deferred)

    def stopService(self) -> Deferred[Any]:
        """
        Fail the calls waiting for a connection, cancel the ones in flight
        on the daemons, and close every connection.
        """
        while self._waiting:
            waiting = self._waiting[0]
            self._unwait(waiting)
            waiting.deferred.errback(errors.NotConnected("the client was stopped"))
        for protocol in self._connected:
            protocol.cancelPending()
        return super().stopService()  # type: ignore[no-any-return]


class _Connection(ClientService):
    """
    The connection to one daemon of a L{ReconnectingClient}: opened with a
    hello (carrying the token), and used only once the daemon answers it.

    A hello that fails (wrong token, TLS certificate that does not verify)
    closes the connection and lengthens the next reconnection delay as a
    failed connection would.  This is done here rather than with
    C{ClientService}'s C{prepareConnection}: a connection that
    C{prepareConnection} rejects and that then closes drives its state
    machine into an unhandled transition (Twisted 26.10).
    """

    log = Logger()

    def __init__(
        self,
        client: ReconnectingClient,
        endpoint: IStreamClientEndpoint,
        retryPolicy: Callable[[int], float],
    ) -> None:
        self._client = client
        self._helloFailures = 0
        super().__init__(
            endpoint,
            Factory.forProtocol(TaskClientProtocol),
            retryPolicy=lambda attempts: retryPolicy(attempts + self._helloFailures),
            clock=client._reactor,
            prepareConnection=self._connected,
        )
        self._endpoint = endpoint

    def _connected(self, protocol: Any) -> None:
        # Not waited for: see the class docstring.
        _prepare(protocol, self._client._token).addCallbacks(self._ready, self._refused)

    def _ready(self, protocol: Any) -> None:
        self._helloFailures = 0
        self._client._ready(protocol)

    def _refused(self, failure: Failure) -> None:
        self._helloFailures += 1
        self.log.error(
            "taskd at {endpoint} refused the connection: {error}",
            endpoint=self._endpoint,
            error=failure.getErrorMessage(),
        )


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d


__all__ = ["connect", "TaskClient", "TaskClientProtocol", "ReconnectingClient"]
