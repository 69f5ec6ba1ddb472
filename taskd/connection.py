# -*- test-case-name: tests.test_server -*-
"""
One client connection of the daemon: a C{LineReceiver} that decodes each
request line, authenticates the connection, hands calls to the pool, keeps
the books of its calls in flight, and writes the replies.

A request line is passed to the pool as it arrived (the worker reads the
arguments from it) and a result comes back as the worker encoded it, so a
call costs the parent one C{json.loads} of the line and no encoding.  That
path (L{TaskServerProtocol.lineReceived}, C{_call}, C{_done}) is the
daemon's hot path; it is kept to plain attribute reads and as few calls as
can be.

What is not the connection's own is in the rooms it uses: the idle and line
timeouts (L{taskd.timeouts}), the order of replies without an id and the
transport's write backpressure (L{taskd.replies}).  Its settings, its
counters and the daemon-wide answers come from its factory
(L{taskd.server.TaskServerFactory}), through
L{taskd._connectionowner.ConnectionOwner}, so this module does not import
the factory's.

Requests about background jobs and admin requests are answered in a room
of their own, L{taskd._connectionjobs.JobRequests}, a mixin of the
protocol class.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from taskd import errors
from taskd._connectiongreeting import Greeting, describePeer
from taskd._connectionowner import ConnectionOwner
from taskd._connectionjobs import InFlight, JobRequests
from taskd.replies import OrderedReplies, ReplySlot, WriteBackpressure, closedNow, immediateWriter
from taskd.timeouts import ConnectionTimeouts
from taskd.wire import (
    Admin,
    Call,
    CallId,
    Cancel,
    ProtocolError,
    Stats,
    Tasks,
    JOB_REQUESTS,
    decodeRequest,
    encodeError,
    encodeProgress,
    encodeResult,
    encodeStatsReply,
)

#: Longest line accepted before a connection has authenticated.
MAX_HELLO_LINE = 4096


#: Seconds a connection being closed has to deliver its last replies
#: before it is reset.
CLOSE_TIMEOUT = 30.0


@implementer(IHalfCloseableProtocol)
class TaskServerProtocol(LineReceiver, Greeting, JobRequests):
    """
    One client connection.

    A client may close its sending side once its requests are written (as
    C{nc -q} and C{shutdown(SHUT_WR)} do); every request still gets its
    reply, then the daemon closes the connection.

    @ivar _calls: the calls in flight, keyed by their id, or by their
        L{ReplySlot} for calls without one.
    @ivar _ordered: the slots of replies without an id.
    @ivar _unanswered: requests accepted whose reply is not yet written;
        reading pauses while it is at the factory's C{maxInFlight}.
    """

    delimiter = b"\n"
    factory: ConnectionOwner
    # A stream transport that is also a consumer (TCP, TLS, UNIX).
    transport: Any
    log = Logger()

    _closed = False
    _readClosed = False
    _writeBlocked = False
    _authenticated = True
    _authTimer: IDelayedCall | None = None
    _closeTimer: IDelayedCall | None = None
    _producing = False
    # Receiving a line never touches a timer: see taskd.timeouts.
    _timeouts: ConnectionTimeouts | None = None
    # Who is connected, for the pool's observer (see describePeer).
    _origin: str | None = None

    def connectionMade(self) -> None:
        factory = self.factory
        self._setMaxLength(factory.maxLineLength)
        self._calls: dict[Any, InFlight] = {}
        self._ordered = OrderedReplies()
        self._unanswered = 0
        self._batch = factory.pool.writes
        self._out: list[bytes] = []
        self._traffic = factory.traffic
        if len(factory.connections) >= factory.maxConnections:
            self._closed = True
            error = errors.PoolBusy(
                f"the daemon has {factory.maxConnections} connections, its "
                "limit; try again later"
            )
            self._writeLast(encodeError(None, error))
            self.transport.loseConnection()
            return
        factory.connections.add(self)
        self._origin = describePeer(self.transport)
        # Replies go out at once, or with the others of the same event
        # (see _write).
        self._writeNow = immediateWriter(self.transport, self._watchWriteBuffer)
        if factory.idleTimeout or factory.lineTimeout:
            self._timeouts = ConnectionTimeouts(factory.clock, self, factory)
            self._timeouts.start()
        if factory.authToken is not None:
            self._authenticated = False
            # Before authentication a line has no business being long.
            self._setMaxLength(min(factory.maxLineLength, MAX_HELLO_LINE))
            self._authTimer = factory.clock.callLater(
                factory.authTimeout, self._authTimedOut
            )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        if self._closeTimer is not None and self._closeTimer.active():
            self._closeTimer.cancel()
        if self._authTimer is not None and self._authTimer.active():
            self._authTimer.cancel()
        if self._graceTimer is not None and self._graceTimer.active():
            self._graceTimer.cancel()
        if self._timeouts is not None:
            self._timeouts.stop()
            self._timeouts = None
        self.factory.connectionEnded(self)
        calls, self._calls = self._calls, {}
        for d in calls.values():
            d.cancel()

    def readConnectionLost(self) -> None:
        self._readClosed = True
        if self._lingering:
            self.transport.loseConnection()
        self._maybeFinish()

    def writeConnectionLost(self) -> None:
        # The client will not read replies: nothing left to do for it.
        self.close()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """
        Close the connection once what was written to it is delivered, and
        reset it if that takes more than C{timeout} seconds (a peer that
        does not read must not hold its place).  The write-backpressure
        producer is let go first: a transport with a producer never closes
        after draining its buffer, it resumes the producer.
        """
        self.flush()
        self._closed = True
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        if closedNow(self.transport):
            return
        self.transport.loseConnection()
        if self._closeTimer is None and self.transport.connected:
            self._closeTimer = self.factory.clock.callLater(
                timeout, self.transport.abortConnection
            )

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
            self.close()

    # -- what its timeouts ask (taskd.timeouts.WatchedConnection) ----------

    def isClosed(self) -> bool:
        """
        @return: whether the connection is closed, or closing: refused,
            or its last line written.
        """
        return self._closed

    def hasPartialLine(self) -> bool:
        """
        @return: whether the connection holds the start of a request line
            and is reading it (not paused).
        """
        return bool(self._buffer) and not self.paused

    def hasCallsInFlight(self) -> bool:
        """
        @return: whether a request of the connection is not yet answered.
        """
        return self._unanswered != 0

    def timedOut(self, error: errors.TaskdError) -> None:
        """
        A timeout has passed: send C{error} as the last line and close.
        """
        self._closeWith(error)

    # -- reading ----------------------------------------------------------

    def _setMaxLength(self, length: int) -> None:
        self._maxLength = length
        # One byte more for a "\r" before the "\n", which is not counted
        # either; lineReceived checks the rest.
        self.MAX_LENGTH = length + 1

    def dataReceived(self, data: bytes) -> None:
        self._traffic.received += len(data)
        # The calls of one read go to the workers together: one write per
        # worker (see taskd._pipes.WriteBatch).
        writes = self._batch
        writes.hold()
        try:
            timeouts = self._timeouts
            if timeouts is None:
                self._readLines(data)
                return
            timeouts.receiving(data)
            self._readLines(data)
            timeouts.received(data, bool(self._buffer))
        finally:
            writes.release()

    def _readLines(self, data: bytes) -> None:
        """
        What C{LineReceiver.dataReceived} does, with a read split into its
        lines once (C{LineReceiver} splits the rest of its buffer again for
        every line): each whole line to L{lineReceived} until the
        connection pauses or closes, the rest kept in C{_buffer}.
        """
        if self._busyReceiving:
            self._buffer += data
            return
        self._busyReceiving = True
        try:
            buffer = self._buffer + data if self._buffer else data
            self._buffer = b""
            maxLength = self.MAX_LENGTH
            if b"\n" in buffer:
                lines = buffer.split(b"\n")
                rest = lines.pop()
                for index, line in enumerate(lines):
                    if self.paused:
                        lines.append(rest)
                        self._buffer = b"\n".join(lines[index:]) + self._buffer
                        return
                    if len(line) > maxLength:
                        self.lineLengthExceeded(line)
                        return
                    self.lineReceived(line)
                    if self._closed:
                        return
                buffer = rest
            buffer += self._buffer
            if len(buffer) > maxLength:
                self.lineLengthExceeded(buffer)
                return
            self._buffer = buffer
        finally:
            self._busyReceiving = False

    def resumeProducing(self) -> None:
        # The time the daemon did not read is not the client's.
        if self._timeouts is not None:
            self._timeouts.resumed()
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
        if not line or line.isspace():
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
        elif isinstance(request, JOB_REQUESTS):
            self._job(request)
        elif isinstance(request, Admin):
            self._admin(request)
        else:
            self._greet(request)

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
        self.flush()
        self._closed = True
        self.clearLineBuffer()
        self._writeLast(encodeError(None, error))
        if self._writeBlocked:
            # The client does not read: the line cannot be delivered, and
            # waiting for it to be would hold the connection.
            self.transport.abortConnection()
        else:
            self.close()

    # -- calls --------------------------------------------------------------

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
        key: Any = id if id is not None else self._ordered.reserve()
        self._unanswered += 1
        progress = None
        if call.progress:
            progress = lambda report: self._progress(id, report)  # noqa: E731
        handle = pool.relay(
            call.function,
            call.raw,
            self._callEnded,
            key,
            timeout=pool.timeoutFor(call.timeout),
            progress=progress,
            priority=call.priority,
            deadline=call.deadline,
            origin=self._origin,
        )
        if handle is not None:
            self._calls[key] = handle
            self._updateReading()

    # -- writing ----------------------------------------------------------

    def _answer(self, id: CallId, line: bytes) -> None:
        """
        Reply to a request that is not a running call.  It never touches
        C{_calls}: a call in flight with the same id stays on the books.
        """
        key: Any = id if id is not None else self._ordered.reserve()
        self._unanswered += 1
        self._done(key, line)

    def _progress(self, id: CallId, report: bytes) -> None:
        # Reports are for people watching: one that would join a full write
        # buffer (a client not reading) is dropped rather than held.
        if not self._closed and id in self._calls:
            if self._writeBlocked:
                self._traffic.progressDropped += 1
            else:
                self._write(encodeProgress(id, report))

    def _callEnded(self, key: Any, outcome: bytes | Failure) -> None:
        """
        A call has ended (see L{ProcessPool.relay}): write its reply.
        """
        self._calls.pop(key, None)
        id = None if type(key) is ReplySlot else key
        if type(outcome) is bytes:
            self._done(key, encodeResult(id, outcome))
            return
        self._done(key, encodeError(id, self._errorOf(outcome)))  # type: ignore[arg-type]

    def _failed(self, failure: Failure, key: Any) -> None:
        self._calls.pop(key, None)
        id = None if isinstance(key, ReplySlot) else key
        self._done(key, encodeError(id, self._errorOf(failure)))

    def _errorOf(self, failure: Failure) -> errors.TaskdError:
        """
        @return: the error a failed request's reply carries.
        """
        error = failure.value
        if isinstance(error, CancelledError):
            error = errors.TaskCancelled(
                "the call was cancelled", started=getattr(error, "started", True)
            )
        elif not isinstance(error, errors.TaskdError):
            self.log.failure("unexpected error in a call", failure)
            error = errors.TaskdError(f"internal error: {error!r}")
        return self.factory.presentError(error)

    def _done(self, key: Any, line: bytes) -> None:
        """
        Write a reply (or hold it for its turn among replies without ids).
        """
        if self._closed:
            return
        if isinstance(key, ReplySlot):
            self._unanswered -= self._ordered.fill(key, line, self._write)
        else:
            self._write(line)
            self._unanswered -= 1
        if self._unanswered == 0 and self._timeouts is not None:
            self._timeouts.allAnswered()
        self._updateReading()
        if self._readClosed:
            self._maybeFinish()

    def _write(self, line: bytes) -> None:
        """
        Write C{line} now, or, while the pool's write batch is held (a
        chunk of a worker's replies, a read of this connection's requests
        is being handled), with the other lines of that event, in one
        write when it is handled (L{flush}).
        """
        self._traffic.sent += len(line)
        batch = self._batch
        if batch.depth:
            if not self._out:
                batch.held(self)
            self._out.append(line)
        else:
            self._writeNow(line)

    def _writeLast(self, line: bytes) -> None:
        """
        Write the last line before closing, through the transport's buffer
        (what L{_write} held is flushed first by the caller).
        """
        self._traffic.sent += len(line)
        self.transport.write(line)

    def flush(self) -> None:
        """
        Write the lines held by L{_write}.
        """
        out = self._out
        if out:
            self._out = []
            self._writeNow(out[0] if len(out) == 1 else b"".join(out))

    def _watchWriteBuffer(self) -> None:
        """
        Something is about to wait in the transport's write buffer: have
        the transport say when the buffer is full and when it has drained
        (L{_writeBufferFull}), from now on, unless the connection is
        closing.
        """
        if not self._producing and not self._closed:
            self._producing = True
            self.transport.registerProducer(WriteBackpressure(self._writeBufferFull), True)

    def _writeBufferFull(self, full: bool) -> None:
        """
        The transport's write buffer is full (the client is not reading),
        or has drained: stop reading requests, or read again.
        """
        self._writeBlocked = full
        self._updateReading()

    def _updateReading(self) -> None:
        """
        Stop reading at C{maxInFlight} requests unanswered, or while the
        write buffer is full; read again once a quarter of C{maxInFlight}
        (at least one) is answered and the buffer has drained.  (Not at
        every reply: a client that keeps the window full would otherwise
        cost a pause and a resume, two C{epoll_ctl} calls, per request, and
        be read one line at a time.)
        """
        if self._closed:
            return
        limit = self.factory.maxInFlight
        if self.paused:
            if not self._writeBlocked and self._unanswered <= limit - max(1, limit // 4):
                self.resumeProducing()
        elif self._writeBlocked or self._unanswered >= limit:
            self.pauseProducing()
