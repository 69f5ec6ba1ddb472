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


#: The errors after which a call is sent to another daemon, if it did not
#: start: the daemon was full, stopping, or the call was never sent.
_FAILOVER = (errors.PoolBusy, errors.PoolStopping, errors.ConnectionLost)


@define(eq=False)
class _Outgoing:
    """
    One call of a L{ReconnectingClient}, from the caller's C{Deferred} to
    its answer, over the daemons it is sent to.
    """

    name: str
    args: Sequence[Any]
    kwargs: dict[str, Any] | None
    timeout: float | None
    progress: Callable[[Any], object] | None
    priority: int | None
    deadline: float | None
    deferred: Deferred[Any] = field(init=False)
    # Its wait for a connection, while no daemon is connected.
    timer: IDelayedCall | None = None
    # The call on the daemon it was last sent to.
    sent: Deferred[Any] | None = None
    # The connections it was sent to and that refused it without running it.
    tried: list[TaskClientProtocol] = field(factory=list)


class ReconnectingClient(Caller, MultiService):
    """
    A client of one or more daemons that stays connected.

    It keeps a connection to every endpoint (a
    C{twisted.application.internet.ClientService} each, reconnecting with
    backoff) and sends each call to the connected daemon with the fewest
    calls outstanding on its connection; a daemon that is down is skipped
    until it is back.  A call made while no daemon is connected waits up
    to C{waitTimeout} seconds for one (at most C{maxWaiting} calls wait),
    or fails at once with L{errors.NotConnected} if C{failFast}.

    Failover: a call that a daemon refused without running it (C{busy}, or
    C{stopping} with C{started} false), or that was never sent on a
    connection that was lost, goes to another connected daemon, each at
    most once; when none is left it fails with the last error (a call
    never sent waits for a connection instead).  A call whose connection
    was lost after it was sent is not sent again: it fails with
    L{errors.ConnectionLost}, since it may have run.  C{expired} is final.

    Add it to a service tree, or call C{startService()} yourself.

    @ivar reactor: the reactor it runs on.
    @ivar token: the daemons' shared secret, if they require one.
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
        self.reactor = reactor
        self.waitTimeout = waitTimeout
        self.maxWaiting = maxWaiting
        self.failFast = failFast
        self._connected: list[TaskClientProtocol] = []
        self._turn = 0
        self._waiting: deque[_Outgoing] = deque()
        self._stopping = False
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
        call = _Outgoing(name, args, kwargs, timeout, progress, priority, deadline)

        def cancel(d: Deferred[Any]) -> None:
            if call.sent is not None:
                call.sent.cancel()
            elif call in self._waiting:
                self._unwait(call)

        call.deferred = Deferred(cancel)
        if self._connected:
            self._sendTo(self._leastBusy(self._connected), call)
        else:
            self._wait(call)
        return call.deferred

    def _leastBusy(self, protocols: Sequence[TaskClientProtocol]) -> TaskClientProtocol:
        """
        @return: the connection with the fewest calls outstanding; among
            equals, each in turn.
        """
        self._turn += 1
        start = self._turn % len(protocols)
        best = protocols[start]
        for i in range(1, len(protocols)):
            protocol = protocols[(start + i) % len(protocols)]
            if protocol.outstanding < best.outstanding:
                best = protocol
        return best

    def _sendTo(self, protocol: TaskClientProtocol, call: _Outgoing) -> None:
        sent = call.sent = protocol.call(
            call.name,
            call.args,
            call.kwargs,
            call.timeout,
            call.progress,
            call.priority,
            call.deadline,
        )
        sent.addCallbacks(self._answered, self._failed, (call,), errbackArgs=(call, protocol))

    def _answered(self, result: Any, call: _Outgoing) -> None:
        call.sent = None
        call.deferred.callback(result)

    def _failed(self, failure: Failure, call: _Outgoing, protocol: TaskClientProtocol) -> None:
        """
        A daemon answered C{call} with an error: fail over if it did not
        start and another daemon may take it.
        """
        call.sent = None
        error = failure.value
        if (
            isinstance(error, _FAILOVER)
            and not error.started
            and not self._stopping
            and not call.deferred.called
        ):
            call.tried.append(protocol)
            others = [p for p in self._connected if p not in call.tried]
            if others:
                self.log.info(
                    "taskd: {type} from a daemon; sending {name!r} to another",
                    type=error.type,
                    name=call.name,
                )
                self._sendTo(self._leastBusy(others), call)
                return
            if isinstance(error, errors.ConnectionLost) and not self.failFast:
                self._wait(call)
                return
        call.deferred.errback(failure)

    def _wait(self, call: _Outgoing) -> None:
        """
        Hold C{call} until a daemon is connected.
        """
        if self.failFast:
            call.deferred.errback(errors.NotConnected("no daemon is connected"))
            return
        if len(self._waiting) >= self.maxWaiting:
            call.deferred.errback(
                errors.NotConnected(
                    f"no daemon is connected and {self.maxWaiting} calls "
                    "are already waiting for one"
                )
            )
            return
        call.timer = self.reactor.callLater(self.waitTimeout, self._expire, call)
        self._waiting.append(call)

    def _unwait(self, call: _Outgoing) -> None:
        self._waiting.remove(call)
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None

    def _expire(self, call: _Outgoing) -> None:
        call.timer = None
        self._waiting.remove(call)
        call.deferred.errback(
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
            call = self._waiting[0]
            self._unwait(call)
            self._sendTo(self._leastBusy(self._connected), call)

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
        self._stopping = True
        while self._waiting:
            call = self._waiting[0]
            self._unwait(call)
            call.deferred.errback(errors.NotConnected("the client was stopped"))
        connected, self._connected = self._connected, []
        for protocol in connected:
            protocol.close()
        return super().stopService()  # type: ignore[no-any-return]

    def startService(self) -> None:
        self._stopping = False
        super().startService()


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
