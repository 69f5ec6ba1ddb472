# -*- test-case-name: tests.test_server -*-
"""
How replies leave a connection: in order where they must be, and no faster
than the client reads them.

 - Replies to requests with an C{id} are written as soon as they are
   ready, in any order.  Replies to requests without one (calls without
   an id, C{stats}, C{tasks}, a C{hello}) cannot be told apart by the
   client, so they are written in the order the requests arrived: each
   request takes a L{ReplySlot} in L{OrderedReplies} when it arrives, and
   a reply waits in its slot until those before it are written.
 - L{WriteBackpressure} is the producer a connection registers with its
   transport once something waits in the transport's buffer: the
   transport tells it when its write buffer is full (the client is not
   reading) and when it has drained, and the connection stops reading new
   requests meanwhile.

This room keeps the rule of the order and the transport's signal apart
from what a connection does with requests (L{taskd.connection}); it imports
nothing of taskd.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.interfaces import IPushProducer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.python.failure import Failure
from zope.interface import implementer


class ReplySlot:
    """
    A place in the line of replies to requests without an id.

    @ivar line: the reply, once it is ready; C{None} until then.
    """

    __slots__ = ("line",)

    def __init__(self, line: bytes | None = None) -> None:
        self.line = line


class OrderedReplies:
    """
    The replies to requests without an id, written in the order the
    requests arrived.
    """

    __slots__ = ("_slots",)

    def __init__(self) -> None:
        self._slots: deque[ReplySlot] = deque()

    def reserve(self) -> ReplySlot:
        """
        A request without an id has arrived.

        @return: the slot its reply will go in, after every slot reserved
            before.
        """
        slot = ReplySlot()
        self._slots.append(slot)
        return slot

    def fill(self, slot: ReplySlot, line: bytes, write: Callable[[bytes], object]) -> int:
        """
        Put C{line} in C{slot}, then write every reply whose turn has come.

        @param write: writes one reply (the transport's C{write}).
        @return: how many replies were written (none while an earlier slot
            is still empty).
        """
        slot.line = line
        slots = self._slots
        written = 0
        while slots and (ready := slots[0].line) is not None:
            slots.popleft()
            write(ready)
            written += 1
        return written


class Traffic:
    """
    What the daemon's connections have carried, all together.

    @ivar received: bytes read from clients.
    @ivar sent: bytes of lines written to clients.
    @ivar progressDropped: progress reports not sent, because a client's
        connection had a full write buffer (it was not reading).
    """

    __slots__ = ("received", "sent", "progressDropped")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.progressDropped = 0


def immediateWriter(
    transport: Any, beforeBuffering: Callable[[], object]
) -> Callable[[bytes], None]:
    """
    A write to C{transport} that goes out now, when it can.

    A Twisted transport buffers every write until the reactor finds the
    socket writable: for a reply, a reactor turn and two C{epoll_ctl}
    calls.  For a plain TCP or UNIX connection whose buffer is empty, the
    writer returned sends at once and hands the transport only what the
    socket did not take (then the transport's buffer, its producer and its
    backpressure work as before); for anything else (TLS), it is the
    transport's C{write}.

    (It reads the transport's buffer, C{dataBuffer} and C{_tempDataLen}: a
    private part of C{twisted.internet.abstract.FileDescriptor}, checked by
    C{tests.test_server.ImmediateWriteTests} on the Twisted installed.)

    @param beforeBuffering: called once, before the first write that the
        transport will buffer: at once for a transport that buffers every
        write.  A connection registers its write-backpressure producer
        then: until something is buffered, the buffer cannot be full, and
        a connection that never needs it (a call and a close, the common
        case) saves registering and unregistering it.
    """
    write = transport.write
    # (Not an isinstance test of twisted.internet.tcp.Connection: importing
    # that module loads the TLS machinery, which a daemon without TLS does
    # not otherwise load.)
    if not isinstance(transport, FileDescriptor) or getattr(transport, "socket", None) is None:
        beforeBuffering()
        return write  # type: ignore[no-any-return]
    unbuffered = True

    def writeNow(data: bytes) -> None:
        nonlocal unbuffered
        if not (
            transport._tempDataLen
            or transport.dataBuffer
            or not transport.connected
            or transport.disconnecting
        ):
            sent = transport.writeSomeData(data)
            if type(sent) is int:
                if sent == len(data):
                    return
                data = data[sent:]
        # What the socket did not take (or an error it will find again), or
        # what must wait behind the buffer.
        if unbuffered:
            unbuffered = False
            beforeBuffering()
        write(data)

    return writeNow


def closedNow(transport: Any) -> bool:
    """
    Close a plain TCP or UNIX connection at once if it holds nothing to
    send (what was written is with the kernel, which delivers it before
    its FIN as after any close).

    C{loseConnection} waits for the socket to be writable to find its
    buffer empty: a reactor turn, an C{epoll_ctl} pair and an empty
    C{send} for each connection, which a client that opens a connection
    per call pays every time.  This does what C{loseConnection} does once
    the buffer is empty (C{connectionLost} with C{CONNECTION_DONE}: an
    orderly shutdown and close, the protocol told), now; so the protocol's
    C{connectionLost} runs before this returns.

    (It reads the transport's buffer as L{immediateWriter} does.)

    @return: whether the connection was closed; if not (TLS, a test's
        transport, a buffer not empty, a producer registered), close it
        with C{loseConnection}.
    """
    if (
        not isinstance(transport, FileDescriptor)
        or getattr(transport, "socket", None) is None
        or transport._tempDataLen
        or transport.dataBuffer
        or transport.producer is not None
        or not transport.connected
        or transport.disconnecting
    ):
        return False
    transport.stopReading()
    transport.stopWriting()
    transport.connectionLost(_DONE)
    return True


#: The reason L{closedNow} gives (as C{loseConnection}'s, made once).
_DONE = Failure(CONNECTION_DONE)


@implementer(IPushProducer)
class WriteBackpressure:
    """
    Told by the transport when its write buffer is full (the client is not
    reading) and when it has drained; tells the connection.
    """

    def __init__(self, writeBlocked: Callable[[bool], None]) -> None:
        """
        @param writeBlocked: called with C{True} when the buffer is full,
            C{False} when it has drained.
        """
        self._writeBlocked = writeBlocked

    def pauseProducing(self) -> None:
        self._writeBlocked(True)

    def resumeProducing(self) -> None:
        self._writeBlocked(False)

    def stopProducing(self) -> None:
        pass
