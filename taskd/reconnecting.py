# -*- test-case-name: tests.test_reconnecting -*-
"""
A client of one or more taskd daemons that stays connected, as a service::

    client = ReconnectingClient(reactor, ["tcp:10.0.0.1:12345", "tcp:10.0.0.2:12345"])
    client.setServiceParent(application)
    result = await client.call("send_mail", "a@example.com", subject="hi")
    handle = await client.submit("send_mail", "b@example.com", subject="hi")
    result = await handle.result()
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
from taskd.jobclient import JobHandle, Submitter
from taskd.wire import JobRequest, Submit


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
    # For a submit rather than a call: makes the request from its id.
    submit: Callable[[int], Submit] | None = None


class ReconnectingClient(Caller, Submitter, MultiService):
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
    never sent, or refused with C{stopping}, waits for a connection
    instead).  A daemon that drains or stops says goodbye (see
    docs/protocol.md): its connection takes no more calls, is closed once
    its calls are answered, and is opened again (to another daemon,
    through a balancer); so no call is on its way when the daemon closes
    it, and a rolling restart fails none.  A call whose connection
    was lost after it was sent is not sent again: it fails with
    L{errors.ConnectionLost}, since it may have run.  C{expired} is final.

    Background jobs: C{submit} and C{submitWith} go where a call would (the
    least busy connected daemon), and fail over by the same rules: a submit
    refused with C{busy} (the daemon's journal is full) or C{stopping}, or
    never sent, goes to another daemon; one whose connection was lost
    after it was sent is not sent again (the daemon may have journaled
    it: give a C{key} to make a retry safe).  A job lives on the daemon
    that accepted it (each daemon has its own journal), so its
    L{JobHandle} remembers that daemon and asks it, whichever others are
    connected; while that daemon is not connected, the handle's requests
    wait for it as calls wait for a connection (C{waitTimeout},
    C{failFast}), then fail with L{errors.NotConnected}.  A handle from
    L{job} asks each connected daemon in turn until one knows the job,
    and remembers that one.

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
        # The connection service each connected protocol belongs to.
        self._connectionOf: dict[TaskClientProtocol, _Connection] = {}
        self._turn = 0
        self._waiting: deque[_Outgoing] = deque()
        self._stopping = False
        self.token = token
        if retryPolicy is None:
            retryPolicy = backoffPolicy(initialDelay=0.2, maxDelay=10.0)
        for endpoint in endpoints:
            description = endpoint if isinstance(endpoint, str) else repr(endpoint)
            if isinstance(endpoint, str):
                endpoint = clientFromString(reactor, endpoint)
            _Connection(self, endpoint, retryPolicy, description).setServiceParent(self)

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
        return self._start(_Outgoing(name, args, kwargs, timeout, progress, priority, deadline))

    def _start(self, call: _Outgoing) -> Deferred[Any]:
        """
        Send C{call} to the least busy connected daemon, or hold it until
        one is connected.

        @return: C{call}'s C{Deferred}; cancelling it cancels the call
            where it is.
        """

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
        if call.submit is not None:
            sent = call.sent = protocol.askAboutJob(call.submit)
        else:
            sent = call.sent = protocol.call(
                call.name,
                call.args,
                call.kwargs,
                call.timeout,
                call.progress,
                call.priority,
                call.deadline,
            )
        sent.addCallbacks(self._answered, self._failed, (call, protocol), errbackArgs=(call, protocol))

    def _answered(self, result: Any, call: _Outgoing, protocol: TaskClientProtocol) -> None:
        call.sent = None
        if call.submit is not None:
            connection = self._connectionOf.get(protocol)
            asker: Any = protocol if connection is None else connection.jobs
            result = JobHandle(asker, result.job, result.existing)
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
            if isinstance(error, (errors.ConnectionLost, errors.PoolStopping)) and not self.failFast:
                # Unsent, or refused by a stopping daemon: the next daemon
                # to connect (a restarted one, say) takes it.
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

    def connectionReady(
        self, protocol: TaskClientProtocol, connection: _Connection | None = None
    ) -> None:
        """
        C{protocol} is connected and authenticated: use it, and send it the
        calls that were waiting for a connection (and the requests of the
        job handles of its daemon, if C{connection}, its service, is
        given).
        """
        self._connected.append(protocol)
        protocol.whenClosing().addCallback(lambda _: self._unusable(protocol))
        if connection is not None:
            self._connectionOf[protocol] = connection
            connection.jobs.ready(protocol)
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
        connection = self._connectionOf.pop(protocol, None)
        if connection is not None:
            connection.jobs.unusable(protocol)

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
        for service in self:
            if isinstance(service, _Connection):
                service.jobs.stopped()
        connected, self._connected = self._connected, []
        for protocol in connected:
            protocol.close()
        return super().stopService()  # type: ignore[no-any-return]

    def startService(self) -> None:
        self._stopping = False
        super().startService()

    # -- background jobs (taskd.jobclient) -----------------------------------

    def _submitJob(self, request: Callable[[int], Submit]) -> Deferred[JobHandle]:
        if not self.running:
            return fail(errors.NotConnected("the client is not running"))
        name = request(0).call.function
        return self._start(_Outgoing(name, (), None, None, None, None, None, submit=request))

    def job(self, jobId: str) -> JobHandle:
        """
        @return: a handle on the job with this id (submitted from
            anywhere): its first request asks each connected daemon in turn
            until one knows the job; the others go to that daemon.
        """
        return JobHandle(_FindingJob(self), jobId)

    def jobsOn(self, protocol: TaskClientProtocol) -> _JobsAt | None:
        """
        @return: the way to the daemon C{protocol} is connected to for
            requests about its jobs, or C{None} if C{protocol} is not one
            of this client's ready connections.
        """
        connection = self._connectionOf.get(protocol)
        return None if connection is None else connection.jobs

    def connectedProtocols(self) -> list[TaskClientProtocol]:
        """
        @return: the connections ready for use now, in the order they
            became ready.
        """
        return list(self._connected)


class _JobsAt:
    """
    The way to one daemon (one endpoint) for the requests of the handles of
    the jobs it accepted: sent on its connection while it is ready; held,
    while it is not, until it is (at most C{waitTimeout} seconds, or not at
    all if C{failFast}).
    """

    def __init__(self, client: ReconnectingClient, endpoint: object) -> None:
        self._client = client
        self._endpoint = endpoint
        self._protocol: TaskClientProtocol | None = None
        self._held: list[tuple[Callable[[TaskClientProtocol | None], None], IDelayedCall]] = []

    def ready(self, protocol: TaskClientProtocol) -> None:
        """
        Its daemon is connected on C{protocol}: send the held requests.
        """
        self._protocol = protocol
        held, self._held = self._held, []
        for send, timer in held:
            timer.cancel()
            send(protocol)

    def unusable(self, protocol: TaskClientProtocol) -> None:
        """
        C{protocol} is lost or closing: hold requests until the next one.
        """
        if self._protocol is protocol:
            self._protocol = None

    def stopped(self) -> None:
        """
        The client stops: fail the held requests.
        """
        held, self._held = self._held, []
        for send, timer in held:
            timer.cancel()
            send(None)

    def askAboutJob(
        self,
        request: Callable[[int], JobRequest],
        progress: Callable[[Any], object] | None = None,
    ) -> Deferred[Any]:
        """
        Send C{request} to this daemon, now or once it is connected.

        @return: a C{Deferred} firing with its answer, or failing with
            L{errors.NotConnected} if the daemon is not connected in time.
        """
        protocol = self._protocol
        if protocol is not None and not protocol.closing:
            return protocol.askAboutJob(request, progress)
        client = self._client
        if client.failFast or not client.running or client._stopping:
            return fail(self._notConnected("is not connected"))
        sent: list[Deferred[Any]] = []
        entry: tuple[Callable[[TaskClientProtocol | None], None], IDelayedCall]

        def cancel(d: Deferred[Any]) -> None:
            if sent:
                sent[0].cancel()
            elif entry in self._held:
                self._held.remove(entry)
                entry[1].cancel()

        d: Deferred[Any] = Deferred(cancel)

        def send(protocol: TaskClientProtocol | None) -> None:
            if protocol is None:
                d.errback(self._notConnected("is not connected: the client was stopped"))
                return
            sent.append(protocol.askAboutJob(request, progress))
            sent[0].chainDeferred(d)

        def expire() -> None:
            self._held.remove(entry)
            d.errback(
                self._notConnected(f"could not be reached within {client.waitTimeout} seconds")
            )

        entry = (send, client.reactor.callLater(client.waitTimeout, expire))
        self._held.append(entry)
        return d

    def _notConnected(self, why: str) -> errors.NotConnected:
        return errors.NotConnected(
            f"the daemon at {self._endpoint} that holds the job {why}; the request was not sent"
        )


class _FindingJob:
    """
    The way to the daemon that holds a job known only by its id
    (L{ReconnectingClient.job}): each connected daemon is asked in turn
    until one does not answer C{unknown_job}; that one is asked from then
    on.
    """

    def __init__(self, client: ReconnectingClient) -> None:
        self._client = client
        self._found: _JobsAt | None = None

    def askAboutJob(
        self,
        request: Callable[[int], JobRequest],
        progress: Callable[[Any], object] | None = None,
    ) -> Deferred[Any]:
        """
        Send C{request} to the daemon that holds the job, found first if
        need be.

        @return: a C{Deferred} firing with the answer, or failing with
            L{errors.UnknownJob} if no connected daemon knows the job, or
            L{errors.NotConnected} if none is connected.
        """
        if self._found is not None:
            return self._found.askAboutJob(request, progress)
        return Deferred.fromCoroutine(self._find(request, progress))

    async def _find(
        self,
        request: Callable[[int], JobRequest],
        progress: Callable[[Any], object] | None,
    ) -> Any:
        last: errors.TaskdError = errors.NotConnected(
            "no daemon is connected; the request was not sent"
        )
        for protocol in self._client.connectedProtocols():
            try:
                answer = await protocol.askAboutJob(request, progress)
            except (errors.UnknownJob, errors.ConnectionLost) as e:
                last = e
                continue
            except errors.TaskdError:
                # The job's own error (it failed, was cancelled...): found.
                self._found = self._client.jobsOn(protocol)
                raise
            self._found = self._client.jobsOn(protocol)
            return answer
        raise last


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
        description: str | None = None,
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
        #: The way to this daemon for the handles of the jobs it accepted.
        self.jobs = _JobsAt(client, endpoint if description is None else description)

    def _connected(self, protocol: Any) -> None:
        # Not waited for: see the class docstring.
        authenticate(protocol, self._client.token, self._client.reactor, goodbye=True).addCallbacks(
            self._ready, self._refused
        )

    def _ready(self, protocol: Any) -> None:
        self._helloFailures = 0
        self._client.connectionReady(protocol, self)

    def _refused(self, failure: Failure) -> None:
        self._helloFailures += 1
        self.log.error(
            "taskd at {endpoint} refused the connection: {error}",
            endpoint=self._endpoint,
            error=failure.getErrorMessage(),
        )


__all__ = ["ReconnectingClient"]
