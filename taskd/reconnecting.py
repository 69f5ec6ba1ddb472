# -*- test-case-name: tests.test_reconnecting -*-
"""
A client of one or more taskd daemons that stays connected, as a service::

    client = ReconnectingClient(reactor, ["tcp:10.0.0.1:12345", "tcp:10.0.0.2:12345"])
    client.setServiceParent(application)
    result = await client.call("send_mail", "a@example.com", subject="hi")
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Sequence

from attrs import define, field
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd import errors
from taskd.client import Caller, TaskClientProtocol, authenticate


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
    priority: int | None = None
    deadline: float | None = None


class ReconnectingClient(Caller, MultiService):
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

    @ivar reactor: the reactor it runs on.
    @ivar token: the daemons' shared secret, if they require one.
    """

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
        self.reactor = reactor
        self.waitTimeout = waitTimeout
        self.maxWaiting = maxWaiting
        self.failFast = failFast
        self._connected: list[TaskClientProtocol] = []
        self._turn = 0
        self._waiting: deque[_Waiting] = deque()
        self.token = token
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
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[Any]:
        if not self.running:
            return fail(errors.NotConnected("the client is not running"))
        if self._connected:
            protocol = self._connected[self._turn % len(self._connected)]
            self._turn += 1
            return protocol.call(name, args, kwargs, timeout, progress, priority, deadline)
        if self.failFast:
            return fail(errors.NotConnected("no daemon is connected"))
        if len(self._waiting) >= self.maxWaiting:
            return fail(
                errors.NotConnected(
                    f"no daemon is connected and {self.maxWaiting} calls "
                    "are already waiting for one"
                )
            )
        waiting = _Waiting(name, args, kwargs, timeout, progress, priority=priority, deadline=deadline)

        def cancel(d: Deferred[Any]) -> None:
            if waiting.sent is not None:
                waiting.sent.cancel()
            else:
                self._unwait(waiting)

        waiting.deferred = Deferred(cancel)
        waiting.timer = self.reactor.callLater(self.waitTimeout, self._expire, waiting)
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

    def connectionReady(self, protocol: TaskClientProtocol) -> None:
        """
        C{protocol} is connected and authenticated: use it, and send it the
        calls that were waiting for a connection.
        """
        self._connected.append(protocol)
        protocol.whenClosing().addCallback(lambda _: self._unusable(protocol))
        while self._waiting and self._connected:
            waiting = self._waiting[0]
            self._unwait(waiting)
            waiting.sent = self._send(
                waiting.name,
                waiting.args,
                waiting.kwargs,
                waiting.timeout,
                waiting.progress,
                waiting.priority,
                waiting.deadline,
            )
            waiting.sent.chainDeferred(waiting.deferred)

    def _unusable(self, protocol: TaskClientProtocol) -> None:
        """
        Send no more calls on C{protocol}: it is lost, or the daemon closes
        it (an idle connection); calls go to the other daemons, or wait for
        the reconnection.
        """
        if protocol in self._connected:
            self._connected.remove(protocol)

    def stopService(self) -> Deferred[Any]:
        """
        Fail the calls waiting for a connection, cancel the ones in flight
        on the daemons, and close every connection.
        """
        while self._waiting:
            waiting = self._waiting[0]
            self._unwait(waiting)
            waiting.deferred.errback(errors.NotConnected("the client was stopped"))
        connected, self._connected = self._connected, []
        for protocol in connected:
            protocol.close()
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
            clock=client.reactor,
            prepareConnection=self._connected,
        )
        self._endpoint = endpoint

    def _connected(self, protocol: Any) -> None:
        # Not waited for: see the class docstring.
        authenticate(protocol, self._client.token, self._client.reactor).addCallbacks(
            self._ready, self._refused
        )

    def _ready(self, protocol: Any) -> None:
        self._helloFailures = 0
        self._client.connectionReady(protocol)

    def _refused(self, failure: Failure) -> None:
        self._helloFailures += 1
        self.log.error(
            "taskd at {endpoint} refused the connection: {error}",
            endpoint=self._endpoint,
            error=failure.getErrorMessage(),
        )


__all__ = ["ReconnectingClient"]
