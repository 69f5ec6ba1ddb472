# -*- test-case-name: tests.test_server -*-
"""
A connection's idle and line timeouts, on one timer.

 - The idle timeout closes a connection that has no call in flight and
   has sent nothing for C{idleTimeout} seconds (C{idle_timeout} error).
 - The line timeout closes a connection that started a request line and
   did not finish it within C{lineTimeout} seconds (C{line_timeout}
   error); time the daemon itself did not read (the connection paused)
   does not count.

Receiving data never touches the timer: it only notes the time
(L{ConnectionTimeouts.receiving}, L{ConnectionTimeouts.received}), and the
timer reads those notes when it fires, then sets itself again for the
nearest deadline.  Deadlines only move later between two checks, so the
timer is never late.

This is apart from the connection (L{taskd.connection}) because it is
its own small clock-driven machine, tested on a C{Clock}; it learns what
it needs of the connection through L{WatchedConnection}.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from taskd import errors

#: Default seconds a connection with no call in flight may stay silent.
DEFAULT_IDLE_TIMEOUT = 300.0

#: Default seconds a client may take to finish a request line it started.
DEFAULT_LINE_TIMEOUT = 30.0

# Deadlines closer than this count as reached: a timer is never set for a
# delay that the clock's resolution would round away.
_EPSILON = 1e-6


class TimeoutSettings(Protocol):
    """
    Where L{ConnectionTimeouts} reads the timeouts (the connection's
    factory, L{taskd.server.TaskServerFactory}), each time its timer fires.
    """

    #: Seconds a connection with no call in flight may send nothing; C{0}
    #: for no limit.
    idleTimeout: float
    #: Seconds a client may take to finish a request line it has started;
    #: C{0} for no limit.
    lineTimeout: float


class WatchedConnection(Protocol):
    """
    What L{ConnectionTimeouts} asks of the connection it watches, when its
    timer fires.
    """

    def isClosed(self) -> bool:
        """
        @return: whether the connection is closed or closing (its timeouts
            are then over).
        """

    def hasPartialLine(self) -> bool:
        """
        @return: whether the connection holds the start of a request line
            and is reading (not paused).
        """

    def hasCallsInFlight(self) -> bool:
        """
        @return: whether some request of the connection is not yet answered.
        """

    def timedOut(self, error: errors.TaskdError) -> None:
        """
        A timeout has passed: send C{error} as the connection's last line
        and close it.
        """


class ConnectionTimeouts:
    """
    The idle and line timeouts of one connection.

    The connection tells it when data arrives (L{receiving} before it
    reads the data, L{received} after), when it resumes reading
    (L{resumed}), when its last call in flight is answered
    (L{allAnswered}), and when it is lost (L{stop}).
    """

    __slots__ = (
        "_clock",
        "_connection",
        "_settings",
        "_timer",
        "_lastActive",
        "_lineSince",
        "_arrived",
    )

    def __init__(
        self,
        clock: IReactorTime,
        connection: WatchedConnection,
        settings: TimeoutSettings,
    ) -> None:
        """
        @param settings: the timeouts; they are read when the timer starts
            and each time it fires.
        """
        self._clock = clock
        self._connection = connection
        self._settings = settings
        self._timer: IDelayedCall | None = None
        self._lastActive = 0.0
        self._lineSince: float | None = None
        self._arrived = 0.0

    def start(self) -> None:
        """
        The connection is made: start timing it, unless neither timeout is
        set.
        """
        settings = self._settings
        delays = [t for t in (settings.idleTimeout, settings.lineTimeout) if t]
        if not delays:
            return
        self._lastActive = self._clock.seconds()
        self._timer = self._clock.callLater(min(delays), self._check)

    def stop(self) -> None:
        """
        The connection is lost: stop the timer.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def receiving(self, data: bytes) -> None:
        """
        C{data} has arrived and is about to be read.
        """
        self._arrived = now = self._clock.seconds()
        if data:
            self._lastActive = now

    def received(self, data: bytes, buffered: bool) -> None:
        """
        C{data} has been read.

        @param buffered: whether part of a line is left in the buffer.
        """
        if not buffered:
            self._lineSince = None
        elif self._lineSince is None or b"\n" in data:
            # What is left is a line started in this chunk.
            self._lineSince = self._arrived

    def resumed(self) -> None:
        """
        The connection resumes reading.  The time it did not read is not
        the client's: a line left unfinished is timed from the next data.
        """
        self._lineSince = None

    def allAnswered(self) -> None:
        """
        The connection's last call in flight has been answered: it is idle
        from now.
        """
        self._lastActive = self._clock.seconds()

    def _check(self) -> None:
        """
        Close the connection if its idle or line timeout has passed, or set
        the timer again for the nearest deadline.
        """
        self._timer = None
        connection = self._connection
        if connection.isClosed():
            return
        settings = self._settings
        now = self._clock.seconds()
        next = float("inf")
        lineTimeout = settings.lineTimeout
        if lineTimeout:
            if self._lineSince is not None and connection.hasPartialLine():
                deadline = self._lineSince + lineTimeout
                if deadline <= now + _EPSILON:
                    connection.timedOut(
                        errors.LineTimeout(
                            f"a request line was not finished within "
                            f"{lineTimeout} seconds; closing the connection"
                        )
                    )
                    return
                next = deadline
            else:
                next = now + lineTimeout
        idleTimeout = settings.idleTimeout
        if idleTimeout:
            if not connection.hasCallsInFlight():
                deadline = self._lastActive + idleTimeout
                if deadline <= now + _EPSILON:
                    connection.timedOut(
                        errors.IdleTimeout(
                            f"no call in flight and nothing received for "
                            f"{idleTimeout} seconds; closing the connection"
                        )
                    )
                    return
                next = min(next, deadline)
            else:
                next = min(next, now + idleTimeout)
        self._timer = self._clock.callLater(next - now, self._check)
