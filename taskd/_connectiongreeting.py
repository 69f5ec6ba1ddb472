# -*- test-case-name: tests.test_server,tests.test_security,tests.test_goodbye -*-
"""
How a connection begins and ends with its client: who it is
(L{describePeer}), the hello, the token check before it, and the goodbye
when the daemon drains or stops.  A room
of L{taskd.connection.TaskServerProtocol}, a mixin for the reasons
L{taskd._connectionjobs} gives; what it uses of the connection beyond
L{ConnectionRequests} is declared in L{Greeting}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall

from taskd import errors
from taskd._connectionjobs import ConnectionRequests
from taskd.wire import GOODBYE_LINE, VERSION, Hello, HelloReply, Request, encodeError, encodeHelloReply


class Greeting(ConnectionRequests):
    """
    A room of L{taskd.connection.TaskServerProtocol}: see this module's
    docstring.
    """

    if TYPE_CHECKING:
        _closed: bool
        _readClosed: bool
        _authenticated: bool
        _authTimer: IDelayedCall | None
        _producing: bool
        _maxLength: int
        paused: bool

        def _setMaxLength(self, length: int) -> None: ...
        def _write(self, line: bytes) -> None: ...
        def _writeLast(self, line: bytes) -> None: ...
        def flush(self) -> None: ...
        def close(self, timeout: float = ...) -> None: ...
        def _maybeFinish(self) -> None: ...
        def clearLineBuffer(self) -> bytes: ...
        def resumeProducing(self) -> None: ...

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
        self.flush()
        self._writeLast(encodeError(None, errors.Unauthenticated(message)))
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
            self._write(GOODBYE_LINE)

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
        self.flush()
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
