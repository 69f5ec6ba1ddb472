# -*- test-case-name: tests.test_pool_unit -*-
"""
The pool's own ends of a worker's two protocol pipes, on the reactor.

Not C{childFDs} entries of C{"r"} and C{"w"}: Twisted's process writer
buffers every write until the reactor reports the pipe writable (a reactor
turn and two C{epoll_ctl} calls per request), and its reader takes 8 KiB a
turn.  L{RequestPipe} writes straight into the pipe and asks the reactor
for help only with what the pipe cannot take; L{ReplyPipe} reads up to
L{READ_SIZE} at a time.  Neither knows anything of calls or frames.

While its owner handles one event (a chunk of replies, a client's lines),
the frames it writes may be held in a L{WriteBatch} and written when the
event is handled, one write per pipe: a worker then wakes once for the
calls of a burst rather than once per call.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any, Callable, Protocol

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

#: Most bytes read from a reply pipe at once: as much as it holds
#: (L{PIPE_SIZE}).  With 64 KiB, a 64 KiB result (its frame a few bytes
#: longer) took 1.66 reads per call in W4, with 256 KiB 1.00 (strace);
#: small replies cost the same (C{python -m bench.instructions}).
READ_SIZE = 256 * 1024

#: What the protocol pipes are asked to hold (Linux; the default is 64 KiB),
#: so that a large request or result rarely waits for the other side.  No
#: more: a user's pipes share a quota (fs.pipe-user-pages-soft, 64 MiB by
#: default), and 1 MiB measured no faster.
PIPE_SIZE = 256 * 1024


def _capacity(fd: int) -> int:
    """
    @return: how many bytes the pipe C{fd} holds at most.
    """
    if hasattr(fcntl, "F_GETPIPE_SZ"):
        try:
            return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
        except OSError:
            pass
    return 4 * PIPE_SIZE


def makePipe() -> tuple[int, int]:
    """
    @return: a new pipe's read and write ends, made L{PIPE_SIZE} big where
        the system allows it.
    """
    readEnd, writeEnd = os.pipe()
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        try:
            fcntl.fcntl(writeEnd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over the user's pipe quota: the default size works too
    return readEnd, writeEnd


class Flushable(Protocol):
    """
    What holds writes in a L{WriteBatch}.
    """

    def flush(self) -> None:
        """
        Write what was held.
        """


class WriteBatch:
    """
    Holds what L{RequestPipe}s are given while its owner handles one event,
    and writes it, one write per pipe, when the outermost L{release} comes.
    Holding nests: L{hold} and L{release} come in pairs.
    """

    __slots__ = ("depth", "_pipes")

    log = Logger()

    def __init__(self) -> None:
        self.depth = 0
        self._pipes: list[Flushable] = []

    def hold(self) -> None:
        """
        Hold writes until the matching L{release}.
        """
        self.depth += 1

    def release(self) -> None:
        """
        End a L{hold}; the outermost writes what was held.
        """
        self.depth -= 1
        if not self.depth and self._pipes:
            pipes, self._pipes = self._pipes, []
            for pipe in pipes:
                try:
                    pipe.flush()
                except Exception:
                    # A bug in one must not leave the others' writes held
                    # for good: each is in the list only once, when its
                    # first write is held.
                    self.log.failure("flushing {pipe!r} failed", pipe=pipe)

    def held(self, pipe: Flushable) -> None:
        """
        C{pipe} (a L{RequestPipe}, or anything else that holds writes while
        the batch is held: a client connection's replies) holds a write, to
        be flushed at the outermost L{release}.
        """
        self._pipes.append(pipe)


def holdEachTurn(reactor: Any, batch: WriteBatch) -> Callable[[], None]:
    """
    Hold C{batch} over each whole turn of C{reactor}: the events one poll
    reports (both workers' replies, several clients' requests) are handled
    before anything they wrote goes out, one write per pipe and one send
    per connection for the whole turn.  Nothing waits past the turn, and a
    lone event's writes go out at its end, as before.

    It wraps the reactor's C{doIteration} (the poll and its events; timed
    calls run outside it and write at once): a daemon's own process owns
    its reactor.  A reactor without one (a test's) is left as it is.

    @return: a function that puts the reactor's C{doIteration} back.
    """
    iterate = getattr(reactor, "doIteration", None)
    if iterate is None:
        return lambda: None
    hold, release = batch.hold, batch.release
    ownAttribute = "doIteration" in vars(reactor)

    def doIteration(delay: float | None) -> None:
        hold()
        try:
            iterate(delay)
        finally:
            release()

    reactor.doIteration = doIteration

    def undo() -> None:
        if reactor.doIteration is doIteration:
            if ownAttribute:
                reactor.doIteration = iterate
            else:
                del reactor.doIteration

    return undo


class _PipeEnd:
    """
    A non-blocking pipe end that the reactor may watch.
    """

    _name = "taskd-pipe"

    def __init__(self, reactor: Any, fd: int) -> None:
        os.set_blocking(fd, False)
        self._reactor = reactor
        self._fd: int | None = fd

    @property
    def open(self) -> bool:
        """
        Whether this end is still open.
        """
        return self._fd is not None

    def fileno(self) -> int:
        return -1 if self._fd is None else self._fd

    def logPrefix(self) -> str:
        return self._name


@implementer(IWriteDescriptor)
class RequestPipe(_PipeEnd):
    """
    The parent's end of a worker's request pipe.
    """

    _name = "taskd-request-pipe"

    def __init__(self, reactor: Any, fd: int, batch: WriteBatch | None = None) -> None:
        """
        @param batch: where writes are held while its owner handles an
            event; none are held if C{None}.
        """
        super().__init__(reactor, fd)
        self._pending = bytearray()
        self._closeWhenDrained = False
        self._batch = WriteBatch() if batch is None else batch
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        """
        Write C{data} now (or when the batch is released, if it is held),
        or as soon as the pipe takes it.
        """
        if self._fd is None:
            return
        if self._batch.depth:
            if not self._held:
                self._batch.held(self)
            self._held.append(data)
            return
        self._send(data)

    def flush(self) -> None:
        """
        Write what a batch held.
        """
        held = self._held
        if held:
            self._held = []
            self._send(held[0] if len(held) == 1 else b"".join(held))

    def _send(self, data: bytes) -> None:
        if self._fd is None:
            return
        if not self._pending:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                self.abort()  # the worker is gone; its end says why
                return
            if written == len(data):
                return
            data = data[written:]
            self._reactor.addWriter(self)
        self._pending += data

    def doWrite(self) -> None:
        if self._fd is None:
            return
        try:
            written = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except OSError:
            self.abort()
            return
        del self._pending[:written]
        if not self._pending:
            self._reactor.removeWriter(self)
            if self._closeWhenDrained:
                self.abort()

    def close(self) -> None:
        """
        Close once everything written has reached the pipe: the worker then
        reads end of file and exits.
        """
        self.flush()
        if self._pending:
            self._closeWhenDrained = True
        else:
            self.abort()

    def abort(self) -> None:
        """
        Close now, dropping anything not yet written.
        """
        if self._fd is None:
            return
        self._held = []
        if self._pending:
            self._reactor.removeWriter(self)
            self._pending.clear()
        os.close(self._fd)
        self._fd = None

    def connectionLost(self, reason: Failure) -> None:
        self.abort()


@implementer(IReadDescriptor)
class ReplyPipe(_PipeEnd):
    """
    The parent's end of a worker's reply pipe.  Twisted waits for its own
    pipes to close before it reports a process's end; the owner of this
    one does the same (C{closed} tells it).
    """

    _name = "taskd-reply-pipe"

    def __init__(
        self,
        reactor: Any,
        fd: int,
        dataReceived: Callable[[bytes], None],
        closed: Callable[[], None],
    ) -> None:
        """
        @param dataReceived: called with each chunk read.
        @param closed: called once, when the pipe is closed (at end of file,
            on an error, or by L{close}).
        """
        super().__init__(reactor, fd)
        self._dataReceived = dataReceived
        self._closed = closed
        self._reading = False

    def startReading(self) -> None:
        """
        Have the reactor tell this end when there is something to read.
        """
        if self._fd is not None and not self._reading:
            self._reading = True
            self._reactor.addReader(self)

    def doRead(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._dataReceived(data)
        else:
            self.close()

    def drain(self) -> None:
        """
        Read everything the pipe holds now, without waiting for more: the
        writer is known to be gone, though a copy of its end may live on.
        No more than the pipe can hold is read: all its writer wrote fits,
        and a copy that goes on writing must not hold the reactor.
        """
        budget = _capacity(self._fd) if self._fd is not None else 0
        while self._fd is not None and budget > 0:
            try:
                data = os.read(self._fd, min(READ_SIZE, budget))
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            budget -= len(data)
            self._dataReceived(data)

    def close(self) -> None:
        """
        Close this end (if still open) and say so.
        """
        if self._fd is None:
            return
        if self._reading:
            self._reactor.removeReader(self)
        os.close(self._fd)
        self._fd = None
        self._closed()

    def connectionLost(self, reason: Failure) -> None:
        self.close()
