# -*- test-case-name: tests.test_server -*-
"""
The daemon's network side: a C{LineReceiver} that decodes requests, hands
calls to a L{ProcessPool} and writes the replies.

A request line is passed to the pool as it arrived (the worker reads the
arguments from it) and a result comes back as the worker encoded it, so a
call costs the parent one C{json.loads} of the line and no encoding.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

import taskd
from taskd import errors
from taskd.pool import _DEFAULT, ProcessPool
from taskd.protocol import (
    VERSION,
    Call,
    CallId,
    Cancel,
    Hello,
    HelloReply,
    ProtocolError,
    Request,
    Stats,
    StatsReply,
    Tasks,
    TasksReply,
    decodeRequest,
    encodeError,
    encodeHelloReply,
    encodeProgress,
    encodeResult,
    encodeStatsReply,
    encodeTasksReply,
)

#: Default longest request line, in bytes.
DEFAULT_MAX_LINE = 1024 * 1024

#: Longest line accepted before a connection has authenticated.
MAX_HELLO_LINE = 4096


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class _Slot:
    """
    A place in the line of replies to calls without an id, which are
    written in the order the calls arrived.
    """

    __slots__ = ("line",)

    def __init__(self, line: bytes | None = None) -> None:
        self.line = line


@implementer(IPushProducer)
class _WriteBackpressure:
    """
    Told by the transport when its write buffer is full (the client is not
    reading); the protocol then stops reading new requests.
    """

    def __init__(self, protocol: TaskServerProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol._writeBlocked = True
        self._protocol._updateReading()

    def resumeProducing(self) -> None:
        self._protocol._writeBlocked = False
        self._protocol._updateReading()

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class TaskServerProtocol(LineReceiver):
    """
    One client connection.

    A client may close its sending side once its requests are written (as
    C{nc -q} and C{shutdown(SHUT_WR)} do); every request still gets its
    reply, then the daemon closes the connection.

    @ivar _calls: the calls in flight, keyed by their id, or by their
        L{_Slot} for calls without one.
    @ivar _ordered: the slots of replies without an id, oldest first.
    @ivar _unanswered: requests accepted whose reply is not yet written;
        reading pauses while it is at the factory's C{maxInFlight}.
    """

    delimiter = b"\n"
    factory: TaskServerFactory
    # A stream transport that is also a consumer (TCP, TLS, UNIX).
    transport: Any
    log = Logger()

    _closed = False
    _readClosed = False
    _writeBlocked = False
    _authenticated = True
    _authTimer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        factory = self.factory
        self.MAX_LENGTH = factory.maxLineLength
        self._calls: dict[Any, Deferred[bytes]] = {}
        self._ordered: deque[_Slot] = deque()
        self._unanswered = 0
        if len(factory.connections) >= factory.maxConnections:
            self._closed = True
            error = errors.PoolBusy(
                f"the daemon has {factory.maxConnections} connections, its "
                "limit; try again later"
            )
            self.transport.write(encodeError(None, error))
            self.transport.loseConnection()
            return
        factory.connections.add(self)
        self.transport.registerProducer(_WriteBackpressure(self), True)
        if factory.authToken is not None:
            self._authenticated = False
            # Before authentication a line has no business being long.
            self.MAX_LENGTH = min(self.MAX_LENGTH, MAX_HELLO_LINE)
            self._authTimer = factory.clock.callLater(
                factory.authTimeout, self._authTimedOut
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        if self._authTimer is not None and self._authTimer.active():
            self._authTimer.cancel()
        self.factory._connectionLost(self)
        calls, self._calls = self._calls, {}
        for d in calls.values():
            d.cancel()

    def readConnectionLost(self) -> None:
        self._readClosed = True
        self._maybeFinish()

    def writeConnectionLost(self) -> None:
        # The client will not read replies: nothing left to do for it.
        self.transport.loseConnection()

    def _maybeFinish(self) -> None:
        """
        Once the client has stopped sending: treat what is left of the
        buffer as a last line, and close after the last reply.
        """
        if not self._readClosed or self.paused or self._closed:
            return
        if self._buffer:
            rest, self._buffer = self._buffer, b""
            self.lineReceived(rest)
        if self._unanswered == 0 and not self._closed:
            self._closed = True
            self.transport.loseConnection()

    # -- reading ----------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._closed:
            # Refused or closing: lines still buffered are not served.
            return
        if line[-1:] == b"\r":
            line = line[:-1]
        if not line.strip():
            return
        try:
            request = decodeRequest(line)
        except ProtocolError as e:
            if not self._authenticated:
                self._refuse("authenticate first, with a hello that carries the token")
                return
            self._answer(e.id, encodeError(e.id, e.error))
            return
        if not self._authenticated:
            self._authenticate(request)
        elif isinstance(request, Call):
            self._call(request)
        elif isinstance(request, Cancel):
            d = self._calls.get(request.id)
            if d is not None:
                d.cancel()
        elif isinstance(request, Stats):
            self._answer(None, encodeStatsReply(self.factory.stats()))
        elif isinstance(request, Tasks):
            self._answer(None, self.factory.tasksLine())
        else:
            self._answer(None, encodeHelloReply(self._hello()))

    def lineLengthExceeded(self, line: bytes) -> None:
        error = errors.LineTooLong(
            f"a request line is longer than {self.MAX_LENGTH} bytes; "
            "closing the connection"
        )
        self.transport.write(encodeError(None, error))
        self.transport.loseConnection()

    # -- authentication ---------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        if not isinstance(request, Hello):
            self._refuse("authenticate first, with a hello that carries the token")
            return
        token = request.fields.get("token")
        if token is None:
            self._refuse("this daemon requires a token and the hello carried none")
            return
        if not isinstance(token, str) or not self.factory.checkToken(token):
            self._refuse("the token is wrong")
            return
        self._authenticated = True
        self.MAX_LENGTH = self.factory.maxLineLength
        if self._authTimer is not None and self._authTimer.active():
            self._authTimer.cancel()
        self._answer(None, encodeHelloReply(self._hello()))

    def _authTimedOut(self) -> None:
        self._refuse(
            f"no authentication within {self.factory.authTimeout} seconds"
        )

    def _refuse(self, message: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.transport.write(encodeError(None, errors.Unauthenticated(message)))
        self.transport.loseConnection()

    def _hello(self) -> HelloReply:
        pool = self.factory.pool
        return HelloReply(
            VERSION,
            {
                "server": "taskd",
                "serverVersion": self.factory.version,
                "tasks": list(pool.registry),
                "maxLineLength": self.MAX_LENGTH,
                "maxInFlight": self.factory.maxInFlight,
            },
        )

    def _call(self, call: Call) -> None:
        id = call.id
        if id is not None and id in self._calls:
            error = errors.DuplicateId(
                f"id {id!r} belongs to a call still in flight; "
                "this call was not run"
            )
            self._answer(id, encodeError(id, error))
            return
        pool = self.factory.pool
        timeout = _DEFAULT
        if call.timeout is not None:
            # A client may shorten the daemon's limit, not lengthen it.
            timeout = call.timeout
            if pool.timeout is not None:
                timeout = min(timeout, pool.timeout)
        key: Any = id if id is not None else _Slot()
        self._accept(key)
        progress = None
        if call.progress:
            progress = lambda report: self._progress(id, report)  # noqa: E731
        d = pool.submitEncoded(call.function, call.raw, timeout=timeout, progress=progress)
        self._calls[key] = d
        d.addCallbacks(
            self._succeeded, self._failed, callbackArgs=(key,), errbackArgs=(key,)
        )
        self._updateReading()

    # -- writing ----------------------------------------------------------

    def _accept(self, key: Any) -> None:
        self._unanswered += 1
        if isinstance(key, _Slot):
            self._ordered.append(key)

    def _answer(self, id: CallId, line: bytes) -> None:
        """
        Reply to a request that is not a running call.
        """
        key: Any = id if id is not None else _Slot()
        self._accept(key)
        self._done(key, line)

    def _progress(self, id: CallId, report: bytes) -> None:
        # Reports are for people watching: one that would join a full write
        # buffer (a client not reading) is dropped rather than held.
        if not self._closed and not self._writeBlocked and id in self._calls:
            self.transport.write(encodeProgress(id, report))

    def _succeeded(self, result: bytes, key: Any) -> None:
        id = None if isinstance(key, _Slot) else key
        self._done(key, encodeResult(id, result))

    def _failed(self, failure: Failure, key: Any) -> None:
        id = None if isinstance(key, _Slot) else key
        error = failure.value
        if isinstance(error, CancelledError):
            error = errors.TaskCancelled("the call was cancelled")
        elif not isinstance(error, errors.TaskdError):
            self.log.failure("unexpected error in a call", failure)
            error = errors.TaskdError(f"internal error: {error!r}")
        self._done(key, encodeError(id, error))

    def _done(self, key: Any, line: bytes) -> None:
        if self._closed:
            return
        self._calls.pop(key, None)
        if isinstance(key, _Slot):
            key.line = line
            ordered = self._ordered
            while ordered and (ready := ordered[0].line) is not None:
                ordered.popleft()
                self.transport.write(ready)
                self._unanswered -= 1
        else:
            self.transport.write(line)
            self._unanswered -= 1
        self._updateReading()
        self._maybeFinish()

    def _updateReading(self) -> None:
        if self._closed:
            return
        stop = self._writeBlocked or self._unanswered >= self.factory.maxInFlight
        if stop and not self.paused:
            self.pauseProducing()
        elif not stop and self.paused:
            self.resumeProducing()


def describeTask(name: str, function: Callable[..., Any] | None) -> dict[str, str]:
    """
    Describe a task for the C{tasks} request.

    @return: its C{name}, its C{signature} as Python shows it (C{"(a, b)"},
        with annotations resolved where they can be; C{""} if there is
        none), and C{doc}, the first line of its docstring (or C{""}).
    """
    signature = ""
    if function is not None:
        for resolve in (True, False):
            try:
                signature = str(inspect.signature(function, eval_str=resolve))
                break
            except Exception:
                continue
    doc = (inspect.getdoc(function) or "") if function is not None else ""
    return {"name": name, "signature": signature, "doc": doc.strip().split("\n")[0]}


class TaskServerFactory(Factory):
    """
    Serves a L{ProcessPool} to JSON-lines clients.

    @ivar maxLineLength: the longest request line accepted, in bytes.
    @ivar maxConnections: connections accepted at once; past it a new
        connection gets a C{busy} error and is closed.
    @ivar maxInFlight: requests per connection accepted but not yet
        answered; past it the connection is not read until replies go out.
    """

    protocol = TaskServerProtocol  # type: ignore[assignment]
    log = Logger()

    def __init__(
        self,
        pool: ProcessPool,
        *,
        maxLineLength: int = DEFAULT_MAX_LINE,
        maxConnections: int = 1000,
        maxInFlight: int = 100,
        authToken: str | None = None,
        authTimeout: float = 10.0,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param authToken: if set, each connection must send
            C{{"type": "hello", "token": ...}} with this token before
            anything else, within C{authTimeout} seconds, or it is refused
            with an C{unauthenticated} error and closed.
        @param clock: for the timeouts; the pool's reactor by default.
        """
        self.pool = pool
        self.maxLineLength = maxLineLength
        self.maxConnections = maxConnections
        self.maxInFlight = maxInFlight
        self.authToken = authToken
        self.authTimeout = authTimeout
        self.clock: IReactorTime = pool._reactor if clock is None else clock
        self._tokenDigest = (
            None if authToken is None else _digest(authToken.encode("utf-8"))
        )
        self.connections: set[TaskServerProtocol] = set()
        self._closing: dict[TaskServerProtocol, Deferred[None]] = {}
        #: taskd's version, sent in the hello reply.
        self.version: str = taskd.version()
        self._tasksLine: bytes | None = None

    def tasksLine(self) -> bytes:
        """
        @return: the encoded reply to a C{tasks} request (made once: the
            tasks do not change while the daemon runs).
        """
        if self._tasksLine is None:
            registry = self.pool.registry
            self._tasksLine = encodeTasksReply(
                TasksReply([describeTask(name, registry.get(name)) for name in registry])
            )
        return self._tasksLine

    def stats(self) -> StatsReply:
        """
        @return: the pool's counters and the number of connections.
        """
        return StatsReply({**self.pool.stats(), "connections": len(self.connections)})

    def checkToken(self, token: str) -> bool:
        """
        Compare C{token} with the daemon's in constant time (the digests are
        compared, so not even the length leaks).
        """
        if self._tokenDigest is None:
            return True
        return hmac.compare_digest(_digest(token.encode("utf-8")), self._tokenDigest)

    def _connectionLost(self, protocol: TaskServerProtocol) -> None:
        self.connections.discard(protocol)
        d = self._closing.pop(protocol, None)
        if d is not None:
            d.callback(None)

    def closeConnections(self, timeout: float = 5.0) -> Deferred[Any]:
        """
        Close every connection once its pending replies are written; abort
        the ones still open after C{timeout} seconds (a client that does not
        read must not hold up a shutdown).

        @return: a C{Deferred} that fires when all are closed.
        """
        waiting = []
        for protocol in list(self.connections):
            d: Deferred[None] = Deferred()
            self._closing[protocol] = d
            waiting.append(d)
            protocol.transport.loseConnection()
        if not waiting:
            return succeed(None)
        timer = self.clock.callLater(timeout, self._abortClosing)

        def closed(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return DeferredList(waiting).addBoth(closed)

    def _abortClosing(self) -> None:
        for protocol in list(self._closing):
            self.log.warn(
                "aborting a connection whose replies could not be delivered "
                "in time"
            )
            protocol.transport.abortConnection()
