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
(L{taskd.server.TaskServerFactory}), through L{ConnectionOwner}, so this
module does not import the factory's.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from taskd import errors
from taskd.jobs import JobService
from taskd.journal import JobRecord, describeJob, jobError
from taskd.admin import AdminCommands, isLocalListener
from taskd.pool import ProcessPool
from taskd.replies import OrderedReplies, ReplySlot, WriteBackpressure
from taskd.timeouts import ConnectionTimeouts
from taskd.wire import (
    GOODBYE_LINE,
    VERSION,
    Admin,
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
    JOB_REQUESTS,
    CancelJob,
    JobRequest,
    JobStatus,
    Submit,
    decodeRequest,
    encodeAccepted,
    encodeError,
    encodeJobReply,
    encodeHelloReply,
    encodeProgress,
    encodeResult,
    encodeStatsReply,
)

#: Longest line accepted before a connection has authenticated.
MAX_HELLO_LINE = 4096


class ConnectionOwner(Protocol):
    """
    What a L{TaskServerProtocol} reads from, and tells, its factory
    (L{taskd.server.TaskServerFactory} is the one).
    """

    #: The pool calls are handed to.
    pool: ProcessPool
    #: The background jobs, or C{None} if the daemon runs none.
    jobs: JobService | None
    #: The longest request line accepted, in bytes.
    maxLineLength: int
    #: Connections accepted at once.
    maxConnections: int
    #: Requests per connection accepted and not yet answered before the
    #: connection stops being read.
    maxInFlight: int
    #: The token clients must send in their hello, or C{None}.
    authToken: str | None
    #: Seconds a connection may take to authenticate.
    authTimeout: float
    #: Seconds a connection with no call in flight may send nothing; C{0}
    #: for no limit.
    idleTimeout: float
    #: Seconds a client may take to finish a request line; C{0} for no
    #: limit.
    lineTimeout: float
    #: The clock of the timeouts.
    clock: IReactorTime
    #: taskd's version, sent in the hello reply.
    version: str
    #: The connections open now (a connection adds itself).
    connections: set[TaskServerProtocol]
    #: Runs admin requests, or C{None} if the daemon takes none.
    admin: AdminCommands | None
    #: Whether the daemon drains or stops: a new connection's hello that
    #: asks for a goodbye gets it at once.
    goingAway: bool

    def connectionEnded(self, protocol: TaskServerProtocol) -> None:
        """
        C{protocol}'s connection is lost.
        """

    def checkToken(self, token: str) -> bool:
        """
        @return: whether C{token} is the daemon's.
        """

    def stats(self) -> StatsReply:
        """
        @return: the reply to a C{stats} request.
        """

    def tasksLine(self) -> bytes:
        """
        @return: the encoded reply to a C{tasks} request.
        """

    def presentError(self, error: errors.TaskdError) -> errors.TaskdError:
        """
        @return: C{error} as clients get it.
        """


#: Seconds a connection being closed has to deliver its last replies
#: before it is reset.
CLOSE_TIMEOUT = 30.0


@implementer(IHalfCloseableProtocol)
class TaskServerProtocol(LineReceiver):
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
        self._calls: dict[Any, Deferred[bytes]] = {}
        self._ordered = OrderedReplies()
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
        self._origin = describePeer(self.transport)
        self.transport.registerProducer(WriteBackpressure(self._writeBufferFull), True)
        self._producing = True
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
        self._closed = True
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
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
        timeouts = self._timeouts
        if timeouts is None:
            LineReceiver.dataReceived(self, data)
            return
        timeouts.receiving(data)
        LineReceiver.dataReceived(self, data)
        timeouts.received(data, bool(self._buffer))

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
        self._closed = True
        self.clearLineBuffer()
        self.transport.write(encodeError(None, error))
        if self._writeBlocked:
            # The client does not read: the line cannot be delivered, and
            # waiting for it to be would hold the connection.
            self.transport.abortConnection()
        else:
            self.close()

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
        self._greet(request)

    def _authTimedOut(self) -> None:
        self._refuse(
            f"no authentication within {self.factory.authTimeout} seconds"
        )

    def _refuse(self, message: str) -> None:
        if self._closed:
            return
        self.transport.write(encodeError(None, errors.Unauthenticated(message)))
        self.close()

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
                "taskLimits": {
                    name: {k: v for k, v in options._asdict().items() if v is not None}
                    for name, options in sorted(pool.taskPolicies().items())
                },
            },
        )

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
        d = pool.submitEncoded(
            call.function,
            call.raw,
            timeout=pool.timeoutFor(call.timeout),
            progress=progress,
            priority=call.priority,
            deadline=call.deadline,
            origin=self._origin,
        )
        self._calls[key] = d
        d.addCallbacks(
            self._succeeded, self._failed, callbackArgs=(key,), errbackArgs=(key,)
        )
        self._updateReading()

    # -- jobs (taskd.jobs) --------------------------------------------------

    def _job(self, request: JobRequest) -> None:
        """
        Answer a request about jobs: like a call, its answer comes later
        (once the journal has it) and is on the connection's books until
        then.
        """
        id = request.call.id if isinstance(request, Submit) else request.id
        jobs = self.factory.jobs
        if jobs is None:
            error = errors.BadRequest("this daemon runs no background jobs")
            self._answer(id, encodeError(id, error))
            return
        if id is not None and id in self._calls:
            error = errors.DuplicateId(
                f"id {id!r} belongs to a request still in flight; this one was not run"
            )
            self._answer(id, encodeError(id, error))
            return
        d: Deferred[bytes]
        if isinstance(request, Submit):
            call = request.call
            runAt = request.at
            if request.delay is not None:
                runAt = jobs.clock.seconds() + request.delay
            d = jobs.submit(
                call.function, call.raw, runAt=runAt, key=request.key,
                timeout=call.timeout, priority=call.priority, deadline=call.deadline,
            ).addCallback(lambda added: encodeAccepted(id, *added))
        elif isinstance(request, JobStatus):
            d = jobs.status(request.job).addCallback(lambda s: self._jobLine(id, *s))
        elif isinstance(request, CancelJob):
            d = jobs.cancel(request.job).addCallback(lambda r: self._jobLine(id, r, None))
        else:
            progress = None
            if request.progress:
                progress = lambda report: self._progress(id, report)  # noqa: E731
            d = jobs.wait(request.job, progress).addCallback(
                lambda result: encodeResult(id, result)
            )
        key: Any = id if id is not None else self._ordered.reserve()
        self._unanswered += 1
        self._calls[key] = d
        d.addCallbacks(self._jobAnswered, self._failed, callbackArgs=(key,), errbackArgs=(key,))
        self._updateReading()

    def _jobLine(self, id: CallId, record: JobRecord, progress: bytes | None) -> bytes:
        fields = describeJob(record)
        if record.error is not None:
            fields["error"] = self.factory.presentError(jobError(record)).toDict()
        return encodeJobReply(id, fields, record.result, progress)

    def _jobAnswered(self, line: bytes, key: Any) -> None:
        self._calls.pop(key, None)
        self._done(key, line)
    # -- admin requests (taskd.admin) ---------------------------------------

    def _admin(self, request: Admin) -> None:
        """
        Run an admin request; its answer takes its turn among the replies
        without an id (a rolling restart answers when it is done).
        """
        key = self._ordered.reserve()
        self._unanswered += 1
        admin = self.factory.admin
        if admin is None:
            d: Deferred[bytes] = Deferred()
            d.errback(errors.Forbidden("this daemon takes no admin requests"))
        else:
            d = admin.handle(request, isLocalListener(self.transport))

        def failed(failure: Failure) -> bytes:
            error = failure.value
            if not isinstance(error, errors.TaskdError):
                self.log.failure("admin {command} failed", failure, command=request.command)
                error = errors.TaskdError(f"internal error: {error!r}")
            return encodeError(None, error)

        d.addErrback(failed).addCallback(lambda line: self._done(key, line))

    # -- goodbye: the daemon drains or stops (taskd.server) -----------------

    # Whether the client's hello asked for a goodbye ("goodbye": true),
    # whether the daemon is going away, whether the goodbye was written.
    _wantsGoodbye = False
    _goingAway = False
    _saidGoodbye = False
    # Closed for writing after the goodbye's grace: reading until the
    # client closes its side (see closeAfterGoodbye).
    _lingering = False
    _graceTimer: IDelayedCall | None = None

    def _greet(self, hello: Request) -> None:
        """
        Answer a hello, and note whether it asked for a goodbye
        (C{"goodbye": true}); if the daemon is going away already, the
        goodbye follows the reply.
        """
        if isinstance(hello, Hello) and hello.fields.get("goodbye") is True:
            self._wantsGoodbye = True
        self._answer(None, encodeHelloReply(self._hello()))
        if self._wantsGoodbye and (self._goingAway or self.factory.goingAway):
            self.goodbye()

    def goodbye(self) -> None:
        """
        The daemon drains or stops: tell the client, if its hello asked
        (a L{GOODBYE_LINE}), that it should send nothing more here.  Its
        requests are still read and answered (by C{stopping}, with
        C{"started": false}, once the daemon stops: the pool and the jobs
        refuse them), until L{closeAfterGoodbye} closes the connection.
        """
        self._goingAway = True
        if self._wantsGoodbye and not self._saidGoodbye and not self._closed:
            self._saidGoodbye = True
            self.transport.write(GOODBYE_LINE)

    def closeAfterGoodbye(self, grace: float) -> None:
        """
        The daemon has stopped: close once the client has stopped sending
        (it closed its side, as a client does after a goodbye once its
        replies have come) or, at the latest, after C{grace} seconds
        (meanwhile its requests are answered with C{stopping}).  The close
        is lingering: the daemon's side is closed for writing once the
        replies are out, and whatever the client still sends is read and
        dropped until it closes its side (closing a socket with unread
        data would reset it, and the client could lose its last replies).
        """
        self.goodbye()
        if self._closed:
            return
        if self._readClosed:
            # Closing once its last reply is written (see _maybeFinish).
            self._maybeFinish()
            return
        self._graceTimer = self.factory.clock.callLater(grace, self._lingerClose)

    def _lingerClose(self) -> None:
        self._graceTimer = None
        if self._closed:
            return
        self._closed = self._lingering = True
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        self.clearLineBuffer()
        loseWriteConnection = getattr(self.transport, "loseWriteConnection", None)
        if loseWriteConnection is None:
            # TLS has no half-close: its close alerts the client first.
            self.transport.loseConnection()
            return
        if self.paused:
            # Read (and drop) what comes, to see the client's end.
            self.resumeProducing()
        loseWriteConnection()

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
        if not self._closed and not self._writeBlocked and id in self._calls:
            self.transport.write(encodeProgress(id, report))

    def _succeeded(self, result: bytes, key: Any) -> None:
        self._calls.pop(key, None)
        id = None if isinstance(key, ReplySlot) else key
        self._done(key, encodeResult(id, result))

    def _failed(self, failure: Failure, key: Any) -> None:
        self._calls.pop(key, None)
        id = None if isinstance(key, ReplySlot) else key
        error = failure.value
        if isinstance(error, CancelledError):
            error = errors.TaskCancelled(
                "the call was cancelled", started=getattr(error, "started", True)
            )
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
        if isinstance(key, ReplySlot):
            self._unanswered -= self._ordered.fill(key, line, self.transport.write)
        else:
            self.transport.write(line)
            self._unanswered -= 1
        if self._unanswered == 0 and self._timeouts is not None:
            self._timeouts.allAnswered()
        self._updateReading()
        self._maybeFinish()

    def _writeBufferFull(self, full: bool) -> None:
        """
        The transport's write buffer is full (the client is not reading),
        or has drained: stop reading requests, or read again.
        """
        self._writeBlocked = full
        self._updateReading()

    def _updateReading(self) -> None:
        if self._closed:
            return
        stop = self._writeBlocked or self._unanswered >= self.factory.maxInFlight
        if stop and not self.paused:
            self.pauseProducing()
        elif not stop and self.paused:
            self.resumeProducing()


def describePeer(transport: Any) -> str:
    """
    @return: who is at the other end of C{transport}, as people read it:
        C{"127.0.0.1:50312"}, C{"[::1]:50312"}, C{"unix"}.
    """
    try:
        peer = transport.getPeer()
    except Exception:
        return "unknown"
    host = getattr(peer, "host", None)
    port = getattr(peer, "port", None)
    if host is None or port is None:
        return "unix" if hasattr(peer, "name") else str(type(peer).__name__).lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
