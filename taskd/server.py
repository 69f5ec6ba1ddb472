# -*- test-case-name: tests.test_server -*-
"""
The daemon's network side as a whole: L{TaskServerFactory} serves a
L{ProcessPool} to JSON-lines clients.  It holds the settings every
connection reads (limits, timeouts, the token, the traceback mode), the
set of open connections, the answers that are the same for all of them
(C{stats}, C{tasks}), and closes them all at shutdown.

Each connection is a L{TaskServerProtocol} (L{taskd.connection}); the
factory is what it knows of the daemon (L{taskd._connectionowner.ConnectionOwner}).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

import taskd
from taskd import errors
from taskd.admin import AdminCommands
from taskd._connectionowner import ConnectionOwner
from taskd.connection import TaskServerProtocol
from taskd.jobs import JobService
from taskd.pool import ProcessPool
from taskd.replies import Traffic
from taskd.timeouts import DEFAULT_IDLE_TIMEOUT, DEFAULT_LINE_TIMEOUT
from taskd.tracebacks import TRACEBACK_MODES, presentError
from taskd.wire import StatsReply, TasksReply, encodeTasksReply

#: Default longest request line, in bytes.
DEFAULT_MAX_LINE = 1024 * 1024

#: Seconds a stopped daemon keeps a connection open (answering its
#: requests with C{stopping}) for its client to stop sending.
GOODBYE_GRACE = 2.0


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


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
        start's) traceback clients get, one of
        L{taskd.tracebacks.TRACEBACK_MODES}.
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
        jobs: JobService | None = None,
    ) -> None:
        """
        @param authToken: if set, each connection must send
            C{{"type": "hello", "token": ...}} with this token before
            anything else, within C{authTimeout} seconds, or it is refused
            with an C{unauthenticated} error and closed.
        @param tracebacks: C{"full"} sends tracebacks as the worker wrote
            them; C{"short"} only the innermost frame and the exception,
            without directories (see L{taskd.tracebacks.shortTraceback});
            C{"none"} leaves the C{traceback} field out.
        @param clock: for the timeouts; the pool's reactor by default.
        @param jobs: the background jobs clients may submit and ask about
            (C{None}: the daemon answers job requests with an error).
        """
        if tracebacks not in TRACEBACK_MODES:
            raise ValueError(f"tracebacks must be one of {TRACEBACK_MODES}, not {tracebacks!r}")
        self.pool = pool
        self.jobs = jobs
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
        #: Runs admin requests (set by the daemon), or C{None}: none taken.
        self.admin: AdminCommands | None = None
        #: Bytes in and out of all connections, progress reports dropped.
        self.traffic = Traffic()
        #: Whether the daemon drains or stops (see L{sayGoodbye}).
        self.goingAway = False

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
        @return: the pool's counters, the number of connections, and the
            jobs not yet ended by state.
        """
        jobs = {} if self.jobs is None else self.jobs.stats()
        traffic = self.traffic
        return StatsReply(
            {
                **self.pool.stats(),
                "connections": len(self.connections),
                **jobs,
                "bytesReceived": traffic.received,
                "bytesSent": traffic.sent,
                "progressDropped": traffic.progressDropped,
            }
        )

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
            left out if L{tracebacks} says so (see
            L{taskd.tracebacks.presentError}).
        """
        return presentError(error, self.tracebacks)

    def connectionEnded(self, protocol: TaskServerProtocol) -> None:
        """
        C{protocol}'s connection is lost: it is open no more, and a
        L{closeConnections} waiting for it hears so.
        """
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
        return self._closeAll(lambda protocol: protocol.close(timeout), timeout)

    def _closeAll(self, close: Callable[[TaskServerProtocol], object], abortAfter: float) -> Deferred[Any]:
        """
        C{close} every connection; abort the ones still open after
        C{abortAfter} seconds.
        """
        waiting = []
        for protocol in list(self.connections):
            d: Deferred[None] = Deferred()
            self._closing[protocol] = d
            waiting.append(d)
            close(protocol)
        if not waiting:
            return succeed(None)
        timer = self.clock.callLater(abortAfter, self._abortClosing)

        def closed(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return DeferredList(waiting).addBoth(closed)

    # -- goodbye: draining and stopping -------------------------------------

    def sayGoodbye(self) -> None:
        """
        The daemon drains or stops: tell every connection (a client that
        asked gets a goodbye line and stops sending; see
        L{TaskServerProtocol.goodbye}), and every connection opened from
        now on.
        """
        self.goingAway = True
        for protocol in list(self.connections):
            protocol.goodbye()

    def finishConnections(self, grace: float = GOODBYE_GRACE, timeout: float = 5.0) -> Deferred[Any]:
        """
        The daemon has stopped (its pool answers every call): close each
        connection once its client has stopped sending, or after C{grace}
        seconds, during which its requests are answered with C{stopping}
        (see L{TaskServerProtocol.closeAfterGoodbye}); abort the ones still
        open C{timeout} seconds later.

        @return: a C{Deferred} that fires when all are closed.
        """
        self.sayGoodbye()
        return self._closeAll(lambda protocol: protocol.closeAfterGoodbye(grace), grace + timeout)

    def _abortClosing(self) -> None:
        for protocol in list(self._closing):
            self.log.warn(
                "aborting a connection whose replies could not be delivered "
                "in time"
            )
            protocol.transport.abortConnection()


if TYPE_CHECKING:
    # The factory is what its connections take it for.
    _owner: type[ConnectionOwner] = TaskServerFactory
