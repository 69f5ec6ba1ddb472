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
import re
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
from taskd.pool import ProcessPool
from taskd.wire import (
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

#: Default seconds a connection with no call in flight may stay silent.
DEFAULT_IDLE_TIMEOUT = 300.0

#: Default seconds a client may take to finish a request line it started.
DEFAULT_LINE_TIMEOUT = 30.0

#: What C{--tracebacks} may say: how much of a failed task's traceback
#: clients get.
TRACEBACK_MODES = ("full", "short", "none")

# Deadlines closer than this count as reached: a timer is never set for a
# delay that the clock's resolution would round away.
_EPSILON = 1e-6

_FILE_PATH = re.compile(r'(File ")([^"]*)(")')


def shortTraceback(text: str) -> str:
    """
    Shorten a Python traceback to what a remote caller needs: its header,
    the innermost frame (its C{File} line and source lines) and the
    exception, with every path cut to its file name.  Earlier frames and
    chained exceptions are left out.  A text that does not look like a
    traceback keeps its lines, paths cut the same way.

    @param text: a traceback as C{traceback.format_exc} writes it.
    @return: the shortened traceback, ending with a newline unless empty.
    """

    def base(m: re.Match[str]) -> str:
        return m.group(1) + m.group(2).replace("\\", "/").rsplit("/", 1)[-1] + m.group(3)

    lines = text.rstrip("\n").split("\n")
    headers = [i for i, line in enumerate(lines) if line.startswith("Traceback (")]
    if headers:
        header = headers[-1]
        body = lines[header + 1 :]
        # Frames are indented; the exception starts at the first line that
        # is not.
        end = next((i for i, line in enumerate(body) if line[:1] not in ("", " ")), len(body))
        frames, exception = body[:end], body[end:]
        files = [i for i, line in enumerate(frames) if line.lstrip().startswith('File "')]
        lines = [lines[header], *frames[files[-1] if files else end :], *exception]
    shortened = _FILE_PATH.sub(base, "\n".join(lines))
    return shortened + "\n" if shortened else ""


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
    # The idle and line timeouts share one timer, which reads these when it
    # fires; receiving a line never touches a timer.
    _timer: IDelayedCall | None = None
    _lastActive = 0.0
    _lineSince: float | None = None

    def connectionMade(self) -> None:
        factory = self.factory
        self._setMaxLength(factory.maxLineLength)
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
        self._clock = factory.clock
        delays = [t for t in (factory.idleTimeout, factory.lineTimeout) if t]
        if delays:
            self._lastActive = self._clock.seconds()
            self._timer = self._clock.callLater(min(delays), self._checkTimeouts)
        if factory.authToken is not None:
            self._authenticated = False
            # Before authentication a line has no business being long.
            self._setMaxLength(min(factory.maxLineLength, MAX_HELLO_LINE))
            self._authTimer = factory.clock.callLater(
                factory.authTimeout, self._authTimedOut
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        if self._authTimer is not None and self._authTimer.active():
            self._authTimer.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
        rest = self.clearLineBuffer()
        if rest:
            self.lineReceived(rest)
        if self._unanswered == 0 and not self._closed:
            self._closed = True
            self.transport.loseConnection()

    # -- reading ----------------------------------------------------------

    def _setMaxLength(self, length: int) -> None:
        self._maxLength = length
        # One byte more for a "\r" before the "\n", which is not counted
        # either; lineReceived checks the rest.
        self.MAX_LENGTH = length + 1

    def dataReceived(self, data: bytes) -> None:
        if self._timer is None:
            LineReceiver.dataReceived(self, data)
            return
        now = self._clock.seconds()
        if data:
            self._lastActive = now
        LineReceiver.dataReceived(self, data)
        if not self._buffer:
            self._lineSince = None
        elif self._lineSince is None or b"\n" in data:
            # What is left is a line started in this chunk.
            self._lineSince = now

    def resumeProducing(self) -> None:
        # The time the daemon did not read is not the client's: a line left
        # unfinished is timed from now.
        self._lineSince = None
        LineReceiver.resumeProducing(self)

    def lineReceived(self, line: bytes) -> None:
        if self._closed:
            # Refused or closing: lines still buffered are not served.
            return
        if line[-1:] == b"\r":
            line = line[:-1]
        elif len(line) > self._maxLength:
            self.lineLengthExceeded(line)
            return
        if not line.strip():
            return
        try:
            request = decodeRequest(line)
        except Exception as e:
            if not isinstance(e, ProtocolError):
                # A bug in the decoder: the line still gets its answer.
                self.log.failure("a request line could not be decoded")
                e = ProtocolError(
                    errors.BadRequest(
                        f"the line could not be decoded ({type(e).__name__})"
                    )
                )
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
        self._closeWith(
            errors.LineTooLong(
                f"a request line is longer than {self._maxLength} bytes; "
                "closing the connection"
            )
        )

    def _closeWith(self, error: errors.TaskdError) -> None:
        """
        Send C{error}, the connection's last line, and close.  Calls still
        in flight are cancelled when the connection is gone.
        """
        if self._closed:
            return
        self._closed = True
        self.clearLineBuffer()
        self.transport.write(encodeError(None, error))
        if self._writeBlocked:
            # The client does not read: the line cannot be delivered, and
            # waiting for it to be would hold the connection.
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    # -- timeouts -----------------------------------------------------------

    def _checkTimeouts(self) -> None:
        """
        Close the connection if its idle or line timeout has passed, or set
        the timer again for the nearest deadline.  Deadlines only move
        later between two checks, so the timer is never late.
        """
        self._timer = None
        if self._closed:
            return
        factory = self.factory
        now = self._clock.seconds()
        next = float("inf")
        lineTimeout = factory.lineTimeout
        if lineTimeout:
            # Not paused: the buffer holds a line started and not finished.
            if self._buffer and self._lineSince is not None and not self.paused:
                deadline = self._lineSince + lineTimeout
                if deadline <= now + _EPSILON:
                    self._closeWith(
                        errors.LineTimeout(
                            f"a request line was not finished within "
                            f"{lineTimeout} seconds; closing the connection"
                        )
                    )
                    return
                next = deadline
            else:
                next = now + lineTimeout
        idleTimeout = factory.idleTimeout
        if idleTimeout:
            if self._unanswered == 0:
                deadline = self._lastActive + idleTimeout
                if deadline <= now + _EPSILON:
                    self._closeWith(
                        errors.IdleTimeout(
                            f"no call in flight and nothing received for "
                            f"{idleTimeout} seconds; closing the connection"
                        )
                    )
                    return
                next = min(next, deadline)
            else:
                next = min(next, now + idleTimeout)
        self._timer = self._clock.callLater(next - now, self._checkTimeouts)

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
        self._setMaxLength(self.factory.maxLineLength)
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
                "maxLineLength": self._maxLength,
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
        key: Any = id if id is not None else _Slot()
        self._accept(key)
        progress = None
        if call.progress:
            progress = lambda report: self._progress(id, report)  # noqa: E731
        d = pool.submitEncoded(
            call.function,
            call.raw,
            timeout=pool.timeoutFor(call.timeout),
            progress=progress,
            priority=call.priority,
            deadline=call.deadline,
        )
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
        Reply to a request that is not a running call.  It never touches
        C{_calls}: a call in flight with the same id stays on the books.
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
        self._calls.pop(key, None)
        id = None if isinstance(key, _Slot) else key
        self._done(key, encodeResult(id, result))

    def _failed(self, failure: Failure, key: Any) -> None:
        self._calls.pop(key, None)
        id = None if isinstance(key, _Slot) else key
        error = failure.value
        if isinstance(error, CancelledError):
            error = errors.TaskCancelled("the call was cancelled")
        elif not isinstance(error, errors.TaskdError):
            self.log.failure("unexpected error in a call", failure)
            error = errors.TaskdError(f"internal error: {error!r}")
        self._done(key, encodeError(id, self.factory.presentError(error)))

    def _done(self, key: Any, line: bytes) -> None:
        """
        Write a reply (or hold it for its turn among replies without ids).
        """
        if self._closed:
            return
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
        if self._unanswered == 0 and self._timer is not None:
            self._lastActive = self._clock.seconds()
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
    @ivar idleTimeout: seconds a connection with no call in flight may send
        nothing before it gets an C{idle_timeout} error and is closed; C{0}
        for no limit.
    @ivar lineTimeout: seconds a client may take to finish a request line
        it has started before it gets a C{line_timeout} error and is
        closed; C{0} for no limit.
    @ivar tracebacks: how much of a failed task's (or failed worker
        start's) traceback clients get, one of L{TRACEBACK_MODES}.
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
        idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
        lineTimeout: float = DEFAULT_LINE_TIMEOUT,
        tracebacks: str = "full",
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param authToken: if set, each connection must send
            C{{"type": "hello", "token": ...}} with this token before
            anything else, within C{authTimeout} seconds, or it is refused
            with an C{unauthenticated} error and closed.
        @param tracebacks: C{"full"} sends tracebacks as the worker wrote
            them; C{"short"} only the innermost frame and the exception,
            without directories (see L{shortTraceback}); C{"none"} leaves
            the C{traceback} field out.
        @param clock: for the timeouts; the pool's reactor by default.
        """
        if tracebacks not in TRACEBACK_MODES:
            raise ValueError(f"tracebacks must be one of {TRACEBACK_MODES}, not {tracebacks!r}")
        self.pool = pool
        self.maxLineLength = maxLineLength
        self.maxConnections = maxConnections
        self.maxInFlight = maxInFlight
        self.authToken = authToken
        self.authTimeout = authTimeout
        self.idleTimeout = idleTimeout
        self.lineTimeout = lineTimeout
        self.tracebacks = tracebacks
        self.clock: IReactorTime = pool.reactor if clock is None else clock
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
        # A lone surrogate (\ud800 in the JSON) has no UTF-8 form; it is
        # just a wrong token.
        encoded = token.encode("utf-8", "surrogatepass")
        return hmac.compare_digest(_digest(encoded), self._tokenDigest)

    def presentError(self, error: errors.TaskdError) -> errors.TaskdError:
        """
        @return: C{error} as clients get it: with its traceback shortened or
            left out if L{tracebacks} says so.
        """
        mode = self.tracebacks
        if mode == "full":
            return error
        if isinstance(error, (errors.TaskFailed, errors.WorkerStartError)):
            traceback = error.remoteTraceback
            shown = None if mode == "none" or traceback is None else shortTraceback(traceback)
            if isinstance(error, errors.TaskFailed):
                return errors.TaskFailed(error.message, error.remoteType, shown)
            return errors.WorkerStartError(error.message, shown)
        return error

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
