# -*- test-case-name: tests.test_server -*-
"""
What a connection (L{taskd.connection.TaskServerProtocol}) reads from, and
tells, its factory: the one interface between a connection and the rest
of the daemon, declared apart so that the connection and its rooms
(L{taskd._connectionjobs}) import no factory, and the factory
(L{taskd.server.TaskServerFactory}) is checked against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IReactorTime

from taskd import errors
from taskd.replies import Traffic
from taskd.wire import StatsReply

if TYPE_CHECKING:
    from taskd.admin import AdminCommands
    from taskd.connection import TaskServerProtocol
    from taskd.jobs import JobService
    from taskd.pool import ProcessPool


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
    #: Bytes in and out of all connections (each adds its own).
    traffic: Traffic
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
