# -*- test-case-name: tests.test_pool_unit,tests.test_testing -*-
"""
A process reactor whose workers a test drives by hand: the real
L{taskd.pool.ProcessPool} on a C{MemoryReactorClock}, its requests read
from and its replies written to the pool's real pipes::

    reactor = FakeProcessReactor()
    pool = ProcessPool(reactor, tasks=[], workers=1, registry=registry)
    started = pool.start()
    worker = reactor.processes[0]
    worker.ready()                        # its H frame
    d = pool.submit("add", [1, 2])
    worker.requests()                     # [("add", {"args": [1, 2], ...})]
    worker.send(b"R3")                    # its reply frame
    worker.exit(None, signal.SIGKILL)     # it dies
    reactor.closeAll()                    # at the end: no pipe left open
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from taskd._frames import HEADER, REPLY_FD, REQUEST_FD, frame


class FakeProcess:
    """
    A worker process's transport that records what the pool does to it
    (L{signals}, L{groupSignals}, L{written}, L{closed}), and drives the
    worker's side (L{ready}, L{send}, L{sendRaw}, L{exit}).

    @ivar pid: its (made-up) process id.
    @ivar args: the command line it was spawned with.
    @ivar env: its environment.
    @ivar signals: names of the signals sent to it.
    @ivar groupSignals: names of the signals sent to its process group.
    @ivar leftBehind: whether processes its task started live on in its
        group after it has exited.
    @ivar ended: whether it has exited.
    """

    def __init__(
        self, proto: Any, pid: int, args: list[str], env: dict[str, str], requestFd: int, replyFd: int
    ) -> None:
        self.proto = proto
        self.pid = pid
        self.args = args
        self.env = env
        self.signals: list[str] = []
        # Signals sent to the process group the worker leads.
        self.groupSignals: list[str] = []
        # Whether processes a task started live on in the group after the
        # worker itself has exited.
        self.leftBehind = False
        self.stdinClosed = False
        self.ended = False
        # The worker's end of its request pipe, as the pool handed it over.
        self._requests = os.dup(requestFd)
        os.set_blocking(self._requests, False)
        self._frames: list[bytes] = []
        self._buffer = b""
        self._eof = False
        # The worker's end of its reply pipe.
        self._replies: int | None = os.dup(replyFd)

    def _read(self) -> None:
        while not self._eof:
            try:
                chunk = os.read(self._requests, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self._eof = True
                os.close(self._requests)
                break
            self._buffer += chunk
        while len(self._buffer) >= 4:
            (length,) = HEADER.unpack(self._buffer[:4])
            if len(self._buffer) < 4 + length:
                break
            self._frames.append(self._buffer[: 4 + length])
            self._buffer = self._buffer[4 + length :]

    @property
    def written(self) -> list[bytes]:
        """
        The request frames the pool has written to this worker.
        """
        self._read()
        return self._frames

    @property
    def closed(self) -> list[int]:
        """
        C{[REQUEST_FD]} once the pool has closed the request pipe.
        """
        self._read()
        return [REQUEST_FD] if self._eof else []

    # IProcessTransport, as far as the pool uses it
    def closeStdin(self) -> None:
        self.stdinClosed = True

    def signalProcess(self, name: int) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(signal.Signals(name).name)

    # driving the worker's side
    def send(self, data: bytes) -> None:
        self.sendRaw(frame(data))

    def sendRaw(self, data: bytes, deliver: bool = True) -> None:
        """
        Write to the reply pipe; with C{deliver}, let the pool read it (the
        fake reactor does not poll).
        """
        assert self._replies is not None
        os.write(self._replies, data)
        if deliver:
            self.proto.replies.doRead()

    def closeAll(self) -> None:
        """
        Close both ends of both protocol pipes, the pool's too: a test's
        leftovers must not pile up open file descriptors.
        """
        if not self._eof:
            self._eof = True
            os.close(self._requests)
        self.closeReplies(deliver=False)
        self.proto.requests.abort()
        self.proto.replies.close()

    def closeReplies(self, deliver: bool = True) -> None:
        if self._replies is not None:
            os.close(self._replies)
            self._replies = None
        while deliver and self.proto.replies.open:
            self.proto.replies.doRead()

    def ready(self) -> None:
        self.send(b'H{"pid":%d,"tasks":[]}' % (self.pid,))

    def requests(self) -> list[tuple[str, Any]]:
        out = []
        for data in self.written:
            name, _, payload = data[4:].partition(b"\n")
            out.append((name.decode(), json.loads(payload)))
        return out

    def signalGroup(self, number: int) -> None:
        """
        Record a signal sent to this worker's process group.

        @raise ProcessLookupError: if nothing is left of the group.
        """
        if self.ended and not self.leftBehind:
            raise ProcessLookupError()
        if number:
            self.groupSignals.append(signal.Signals(number).name)

    def exit(self, code: int | None = 0, sig: int | None = None, replies: bool = True) -> None:
        """
        The worker exits (its reply pipe closing with it, unless
        C{replies} is false: a process it forked holds a copy).
        """
        self._read()
        if not self._eof:
            self._eof = True
            os.close(self._requests)
        self.ended = True
        if replies:
            self.closeReplies(deliver=False)
        if code == 0 and sig is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code, sig))
        self.proto.processExited(reason)
        self.proto.processEnded(reason)


class FakeProcessReactor(MemoryReactorClock):
    """
    A memory reactor whose C{spawnProcess} connects the protocol to a
    L{FakeProcess}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any = None, **kw: Any) -> FakeProcess:
        self.lastChildFDs = kw.get("childFDs")
        childFDs = kw["childFDs"]
        process = FakeProcess(proto, 1000 + len(self.processes), args, env, childFDs[REQUEST_FD], childFDs[REPLY_FD])
        self.processes.append(process)
        proto.makeConnection(process)
        return process

    @property
    def processGroups(self) -> FakeProcessReactor:
        """
        What the pool signals its workers' process groups through: this
        reactor, which knows only the fake processes.
        """
        return self

    def signal(self, pgid: int, number: int) -> None:
        """
        C{os.killpg}, on the fake processes only.
        """
        for process in self.processes:
            if process.pid == pgid:
                process.signalGroup(number)
                return
        raise ProcessLookupError()

    def alive(self, pgid: int) -> bool:
        """
        @return: whether the fake process C{pgid}'s group has a process.
        """
        try:
            self.signal(pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def closeAll(self) -> None:
        for process in self.processes:
            process.closeAll()
