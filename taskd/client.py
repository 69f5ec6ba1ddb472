# -*- test-case-name: tests.test_client -*-
"""
The Deferred-based client of a taskd daemon.

    client = await connect(reactor, "tcp:127.0.0.1:12345")
    result = await client.call("send_mail", "a@example.com", subject="hi")
    await client.close()

Every call carries an id, so many run at once on one connection and are
matched to their replies as they finish.  Cancelling a call's L{Deferred}
fails it at once with
L{twisted.internet.defer.CancelledError} and tells the daemon, which frees
the worker.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from taskd import errors
from taskd.protocol import (
    Call,
    Cancel,
    ErrorReply,
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
        self._lostWaiters: list[Deferred[None]] = []
        self._closed = False

    def call(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        if self._closed:
            return _failed(errors.ConnectionLost("the connection is closed"))
        id = next(self._ids)
        try:
            line = encodeRequest(Call(name, list(args), dict(kwargs or {}), id, timeout))
        except (TypeError, ValueError) as e:
            return _failed(errors.BadRequest(f"arguments cannot be sent as JSON: {e}"))

        def cancel(d: Deferred[Any]) -> None:
            if self._pending.pop(id, None) is not None and not self._closed:
                self.transport.write(encodeRequest(Cancel(id)))

        d: Deferred[Any] = Deferred(cancel)
        self._pending[id] = d
        self.transport.write(line)
        return d

    def lineReceived(self, line: bytes) -> None:
        try:
            reply = decodeReply(line)
        except ValueError as e:
            self.log.warn("ignoring a reply taskd.client cannot read: {error}", error=e)
            return
        if isinstance(reply, (Result, ErrorReply)):
            d = self._pending.pop(reply.id, None) if isinstance(reply.id, int) else None
            if d is None:
                if isinstance(reply, ErrorReply) and reply.id is None:
                    # An error about the connection itself, e.g. "busy".
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
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(errors.ConnectionLost(f"connection to taskd lost: {reason.getErrorMessage()}"))
        waiters, self._lostWaiters = self._lostWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def whenLost(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once the connection is gone.
        """
        if self._closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._lostWaiters.append(d)
        return d


class TaskClient:
    """
    A connection to a taskd daemon.
    """

    def __init__(self, protocol: TaskClientProtocol) -> None:
        self._protocol = protocol

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run task C{name} with these arguments.

        @return: a L{Deferred} firing with the result, or failing with an
            L{errors.TaskdError} (L{errors.TaskFailed} carries the remote
            type and traceback) or L{errors.ConnectionLost}; cancelling it cancels
            the call.
        """
        return self._protocol.call(name, args, kwargs)

    def callWith(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """
        Like L{call}, with call options (C{timeout}, in seconds) kept apart
        from the task's arguments.
        """
        return self._protocol.call(name, args, kwargs, timeout)

    def close(self) -> Deferred[None]:
        """
        Cancel the pending calls on the daemon and close the connection;
        the pending calls fail with L{errors.ConnectionLost}.

        @return: a L{Deferred} that fires once the connection is closed.
        """
        protocol = self._protocol
        lost = protocol.whenLost()
        # The daemon takes a clean end of stream as "done sending" and would
        # still run these calls (see docs/protocol.md): cancel them first.
        for id in list(protocol._pending):
            protocol.transport.write(encodeRequest(Cancel(id)))
        protocol.transport.loseConnection()
        return lost


def connect(reactor: Any, endpoint: str | IStreamClientEndpoint) -> Deferred[TaskClient]:
    """
    Connect to a taskd daemon.

    @param endpoint: a client endpoint, or its string description
        (C{"tcp:127.0.0.1:12345"}, C{"unix:/run/taskd.sock"}, C{"tls:..."}).
    @return: a L{Deferred} firing with a connected L{TaskClient}.
    """
    if isinstance(endpoint, str):
        endpoint = clientFromString(reactor, endpoint)
    assert IStreamClientEndpoint.providedBy(endpoint)
    d: Deferred[Any] = endpoint.connect(Factory.forProtocol(TaskClientProtocol))
    return d.addCallback(_wrap)


def _wrap(protocol: TaskClientProtocol) -> TaskClient:
    return TaskClient(protocol)


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d


__all__ = ["connect", "TaskClient", "TaskClientProtocol"]
