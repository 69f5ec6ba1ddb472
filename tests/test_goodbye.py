"""
Tests for the daemon's goodbye (docs/protocol.md, "Goodbye"): a daemon that
drains or stops tells the connections whose hello asked, answers what still
comes with C{stopping} (C{"started": false}) once it stops, and closes each
connection once its client has stopped sending, or after a grace period.
The connection's side over a L{StringTransport}, the client's, a
L{ReconnectingClient} against in-process daemons, and the exact lines plain
and goodbye-aware clients see from a real C{twistd taskd} stopped by
SIGTERM.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from taskd import errors
from taskd.client import TaskClientProtocol, authenticate
from taskd.connection import TaskServerProtocol
from taskd.reconnecting import ReconnectingClient
from taskd.server import TaskServerFactory

from tests.test_pool import waitFor
from tests.test_reconnecting import Daemon
from tests.test_reliability import DaemonTestCase
from tests.test_server import ServerTestsMixin
from tests.test_tap import ROOT

HELLO = b'{"type":"hello","version":1,"goodbye":true}\n'
GOODBYE = {"type": "goodbye"}


class HalfClosingTransport(StringTransport):
    """
    A L{StringTransport} that records a close of its writing side.
    """

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


class ConnectionGoodbyeTests(ServerTestsMixin, SynchronousTestCase):
    """
    The connection's side: L{TaskServerProtocol.goodbye} and
    L{TaskServerProtocol.closeAfterGoodbye}, driven by the factory.
    """

    def newConnection(self, factory: TaskServerFactory) -> tuple[TaskServerProtocol, StringTransport]:
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        assert isinstance(proto, TaskServerProtocol)
        transport = HalfClosingTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_onlyWhenAsked(self) -> None:
        """
        When the daemon drains, a connection whose hello had
        C{"goodbye": true} gets the goodbye line, a plain one nothing; both are served as before (a drain refuses
        nothing).
        """
        proto, plain, reactor = self.connect(workers=2)
        asking, transport = self.newConnection(self.factory)
        asking.dataReceived(HELLO)
        self.assertEqual([r["type"] for r in self.replies(transport)], ["hello"])
        proto.dataReceived(b'{"type":"hello"}\n')
        self.assertEqual([r["type"] for r in self.replies(plain)], ["hello"])
        self.factory.sayGoodbye()
        self.factory.sayGoodbye()
        self.assertEqual(transport.value(), b'{"type":"goodbye"}\n')
        self.assertEqual(self.replies(transport), [GOODBYE])
        self.assertEqual(self.replies(plain), [])
        asking.dataReceived(b'{"function":"add","args":[1,2],"id":1}\n')
        proto.dataReceived(b'{"function":"add","args":[3,4]}\n')
        for worker in reactor.processes[:2]:
            worker.send(b"R7")
        self.assertEqual(self.replies(transport), [{"type": "result", "id": 1, "result": 7}])
        self.assertEqual(self.replies(plain), [{"type": "result", "result": 7}])

    def test_helloWhileGoingAway(self) -> None:
        """
        A connection whose hello asks once the daemon drains gets its hello
        reply, then the goodbye (once: not again after another hello).
        """
        self.connect()
        self.factory.sayGoodbye()
        proto, transport = self.newConnection(self.factory)
        proto.dataReceived(HELLO)
        replies = self.replies(transport)
        self.assertEqual([r["type"] for r in replies], ["hello", "goodbye"])
        proto.dataReceived(HELLO)
        self.assertEqual([r["type"] for r in self.replies(transport)], ["hello"])

    def test_finishConnections(self) -> None:
        """
        Once the daemon has stopped: a request gets C{stopping}, C{started}
        false; a connection whose client closed goes at once, one whose
        client closed its side after its last reply, and any other one
        after the grace: its writing side is closed, what it sends then is
        dropped, and it is closed when its client closes its side.  Nothing
        is left on the clock.
        """
        proto, plain, reactor = self.connect()
        asking, transport = self.newConnection(self.factory)
        asking.dataReceived(HELLO)
        done, doneTransport = self.newConnection(self.factory)
        done.dataReceived(b'{"function":"add","args":[1,1]}\n')
        done.readConnectionLost()
        self.replies(transport)
        self.factory.pool.stop()
        reactor.processes[0].send(b"R2")
        self.assertEqual(self.replies(doneTransport), [{"type": "result", "result": 2}])
        d = self.factory.finishConnections(grace=2, timeout=5)
        self.assertEqual(self.replies(transport), [GOODBYE])
        proto.dataReceived(b'{"function":"add","args":[1,2]}\n')
        self.assertEqual(
            plain.value(),
            b'{"type":"error","error":{"type":"stopping","message":"the pool is not running '
            b'(it is stopping)","started":false}}\n',
        )
        plain.clear()
        self.assertTrue(doneTransport.disconnecting)
        done.connectionLost()
        asking.connectionLost()
        reactor.advance(1.9)
        self.assertFalse(plain.writeClosed)
        reactor.advance(0.1)
        self.assertTrue(plain.writeClosed)
        self.assertFalse(plain.disconnecting)
        self.assertIsNone(plain.producer)
        proto.dataReceived(b'{"function":"add","args":[1,2]}\n')
        self.assertEqual(plain.value(), b"")
        proto.readConnectionLost()
        self.assertTrue(plain.disconnecting)
        self.assertNoResult(d)
        proto.connectionLost()
        self.successResultOf(d)
        for worker in reactor.processes:
            worker.exit(0)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_noHalfClose(self) -> None:
        """
        Over a transport that cannot close only its writing side (TLS), the
        close after the grace closes the connection.
        """
        proto, transport, reactor = self.connect()
        plain, plainTransport = ServerTestsMixin.newConnection(self, self.factory)
        self.factory.finishConnections(grace=2, timeout=5)
        reactor.advance(2)
        self.assertTrue(plainTransport.disconnecting)
        self.assertTrue(transport.writeClosed)

    def test_finishAborts(self) -> None:
        """
        A connection still open C{timeout} seconds after the grace (its
        client neither reads nor closes) is aborted.
        """
        proto, transport, reactor = self.connect()
        d = self.factory.finishConnections(grace=2, timeout=5)
        reactor.advance(2)
        self.assertTrue(transport.writeClosed)
        reactor.advance(5)
        self.assertTrue(transport.disconnected)
        proto.connectionLost()
        self.successResultOf(d)


class ClientGoodbyeTests(SynchronousTestCase):
    """
    L{TaskClientProtocol} on a goodbye.
    """

    def test_stopsSending(self) -> None:
        """
        On a goodbye the client sends nothing more: the calls held back
        unsent fail with C{ConnectionLost}, C{started} false; a new call or
        request fails so at once; the connection is closed once the calls
        sent are answered.
        """
        protocol = TaskClientProtocol()
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.setMaxInFlight(1)
        sent = protocol.call("add", [1, 2])
        held = protocol.call("add", [3, 4])
        transport.clear()
        protocol.dataReceived(b'{"type":"goodbye"}\n')
        error = self.failureResultOf(held, errors.ConnectionLost).value
        self.assertFalse(error.started)
        self.assertEqual(
            error.message, "the daemon is closing the connection (stopping); the call was not sent"
        )
        self.assertTrue(protocol.closing)
        later = self.failureResultOf(protocol.call("add", [5, 6]), errors.ConnectionLost).value
        self.assertFalse(later.started)
        self.failureResultOf(protocol.stats(), errors.ConnectionLost)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b'{"type":"result","id":1,"result":3}\n')
        self.assertEqual(self.successResultOf(sent), 3)
        self.assertTrue(transport.disconnecting)

    def test_asking(self) -> None:
        """
        L{authenticate} asks for the goodbye only if told to (as
        L{ReconnectingClient} does): a lone connection has nowhere else to
        go, and a draining daemon goes on serving it.
        """
        for goodbye, hello in [
            (False, {"type": "hello", "version": 1}),
            (True, {"type": "hello", "version": 1, "goodbye": True}),
        ]:
            protocol = TaskClientProtocol()
            transport = StringTransport()
            protocol.makeConnection(transport)
            authenticate(protocol, None, goodbye=goodbye)
            self.assertEqual(json.loads(transport.value()), hello)

    def test_idleClosesAtOnce(self) -> None:
        """
        A connection with nothing in flight is closed at the goodbye.
        """
        protocol = TaskClientProtocol()
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b'{"type":"goodbye"}\n')
        self.assertTrue(transport.disconnecting)


class ReconnectingGoodbyeTests(TestCase):
    """
    L{ReconnectingClient} and daemons that say goodbye (in-process daemons
    on 127.0.0.1).
    """

    @inlineCallbacks
    def daemons(self, n: int) -> Any:
        result = []
        for _ in range(n):
            daemon = Daemon()
            yield daemon.start()
            self.addCleanup(daemon.stop)
            result.append(daemon)
        return result

    def client(self, daemons: list[Daemon]) -> ReconnectingClient:
        client = ReconnectingClient(
            reactor, [f"tcp:127.0.0.1:{d.number}" for d in daemons],
            retryPolicy=backoffPolicy(initialDelay=0.05, maxDelay=0.2, jitter=lambda: 0),
        )
        client.startService()
        self.addCleanup(client.stopService)
        return client

    @inlineCallbacks
    def test_goodbyeMovesCalls(self) -> Any:
        """
        A daemon says goodbye while a call runs on it: that call gets its
        result; new calls go to the other daemon; the client closes its
        connection to the first once it is answered.
        """
        a, b = yield self.daemons(2)
        client = self.client([a, b])
        yield waitFor(lambda: client.connectedCount() == 2, "both connections")
        running = client.call("sleep", 0.5)
        yield waitFor(lambda: a.pool.stats()["busy"] + b.pool.stats()["busy"] == 1, "the call to run")
        [first] = [d for d in (a, b) if d.pool.stats()["busy"] == 1]
        [other] = [d for d in (a, b) if d is not first]
        before = set(first.factory.connections)
        first.factory.sayGoodbye()
        yield waitFor(lambda: client.connectedCount() == 1, "the goodbye")
        pids = yield gatherResults([client.call("pid") for _ in range(6)])
        self.assertEqual(set(pids), other.pool.pids())
        self.assertEqual((yield running), 0.5)
        yield waitFor(lambda: not before & first.factory.connections, "the client to close")

    @inlineCallbacks
    def test_stoppingWaitsForADaemon(self) -> Any:
        """
        A call refused with C{stopping} (C{started} false) when no other
        daemon is connected waits for one, and runs there.
        """
        a, b = yield self.daemons(2)
        client = self.client([a, b])
        yield waitFor(lambda: client.connectedCount() == 2, "both connections")
        yield b.kill()
        yield waitFor(lambda: client.connectedCount() == 1, "b to be gone")
        stopped = a.pool.stop()
        call = client.call("pid")
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertNoResult(call)
        yield b.start()
        self.assertEqual({(yield call)}, b.pool.pids())
        yield stopped


class _Lines(Protocol):
    """
    A plain client: records every line it gets, and when the daemon
    closes.
    """

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[None] = Deferred()
        self.waiting: list[tuple[int, Deferred[None]]] = []
        self.closedAt: float | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for n, d in list(self.waiting):
            if self.data.count(b"\n") >= n:
                self.waiting.remove((n, d))
                d.callback(None)

    def lines(self) -> list[bytes]:
        return self.data.splitlines()

    def waitLines(self, n: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting.append((n, d))
        self.dataReceived(b"")
        return d.addTimeout(30, reactor)

    def connectionLost(self, reason: Any = None) -> None:
        self.closedAt = time.monotonic()
        self.closed.callback(None)


class RawSocketGoodbyeTests(DaemonTestCase):
    """
    What a plain client (one that reads lines, as the PHP callers do) and a
    goodbye-aware one see on the wire from a real daemon stopped by
    SIGTERM.
    """

    @inlineCallbacks
    def connectRaw(self) -> Any:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        proto = _Lines()
        yield endpoint.connect(Factory.forProtocol(lambda: proto))
        self.addCleanup(lambda: proto.transport.abortConnection() if proto.transport.connected else None)
        return proto

    @inlineCallbacks
    def test_linesAtSIGTERM(self) -> Any:
        """
        A plain client and a goodbye-aware one each have a call running
        when the daemon gets SIGTERM.  The aware one gets
        C{{"type":"goodbye"}}; a call either sends afterwards (as one on
        its way would) gets C{stopping} with C{"started": false}; the
        running calls get their results; the aware client closes its side
        and the daemon closes at once; the plain one is closed after the
        2-second grace.  The plain client's lines are docs/protocol.md's.
        """
        daemon = yield self.startDaemon("--grace", "10")
        plain = yield self.connectRaw()
        aware = yield self.connectRaw()
        aware.transport.write(HELLO)
        yield aware.waitLines(1)
        self.assertEqual(json.loads(aware.lines()[0])["type"], "hello")
        # Long enough that the pool is still stopping (not stopped) when
        # the later calls come, however loaded the machine.
        plain.transport.write(b'{"function":"sleep","args":[3]}\n')
        aware.transport.write(b'{"function":"sleep","args":[3],"id":1}\n')
        yield deferLater(reactor, 0.3, lambda: None)
        self.daemonProcess.signalProcess("TERM")
        yield aware.waitLines(2)
        self.assertEqual(aware.lines()[1], b'{"type":"goodbye"}')
        stopping = (
            b'{"type":"error",%s"error":{"type":"stopping","message":"the pool is not running '
            b'(it is stopping)","started":false}}'
        )
        aware.transport.write(b'{"function":"add","args":[1,2],"id":2}\n')
        plain.transport.write(b'{"function":"add","args":[1,2]}\n')
        yield aware.waitLines(4)
        self.assertEqual(
            aware.lines()[2:],
            [stopping % b'"id":2,', b'{"type":"result","id":1,"result":3}'],
        )
        aware.transport.loseWriteConnection()
        yield aware.closed
        yield plain.waitLines(2)
        self.assertEqual(plain.lines(), [b'{"type":"result","result":3}', stopping % b""])
        # As docs/protocol.md shows them.
        with open(os.path.join(ROOT, "docs", "protocol.md")) as f:
            block = f.read().split("thus reads, for instance", 1)[1].split("```\n", 2)[1]
        self.assertEqual(plain.lines(), block.encode().splitlines())
        yield plain.closed
        yield daemon.ended
        assert aware.closedAt is not None and plain.closedAt is not None
        self.assertGreater(plain.closedAt - aware.closedAt, 1.5)
        self.assertNothingUnhandled()
