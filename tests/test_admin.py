"""
Tests for admin requests: their wire form, who may make them
(L{taskd.admin}), a connection's handling of them, and a real C{twistd
taskd} resized, drained and restarted under load with no failed call.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from taskd.admin import AdminCommands, isLocalListener
from taskd.server import TaskServerFactory
from taskd.wire import Admin, AdminReply, ProtocolError, decodeReply, decodeRequest, encodeRequest

from tests.fakes import PoolTestsMixin
from tests.test_tap import ROOT, TwistdMixin


class WireTests(SynchronousTestCase):
    """
    Admin requests and replies on the wire.
    """

    def test_decode(self) -> None:
        """
        An admin request decodes to its command and other fields, and
        encodes back to the same.
        """
        request = decodeRequest(b'{"type":"admin","command":"cancel","number":7,"token":"t"}')
        self.assertEqual(request, Admin("cancel", {"number": 7, "token": "t"}))
        self.assertEqual(decodeRequest(encodeRequest(request)[:-1]), request)
        self.assertEqual(
            decodeReply(b'{"type":"admin","command":"workers","workers":3}'),
            AdminReply("workers", {"workers": 3}),
        )

    def test_bad(self) -> None:
        """
        A bad admin request gets a precise C{bad_request}.
        """
        for line, message in [
            (b'{"type":"admin"}', "an admin request needs a 'command', one of running, cancel, workers, drain, restart"),
            (b'{"type":"admin","command":"reboot"}', "an admin request needs a 'command', one of running, cancel, workers, drain, restart"),
            (b'{"type":"admin","command":"cancel"}', "admin cancel needs 'number', a whole number above 0"),
            (b'{"type":"admin","command":"workers","count":0}', "admin workers needs 'count', a whole number above 0"),
            (b'{"type":"admin","command":"workers","count":true}', "admin workers needs 'count', a whole number above 0"),
            (b'{"type":"admin","command":"drain","token":5}', "'token' must be a string"),
        ]:
            e = self.assertRaises(ProtocolError, decodeRequest, line)
            self.assertEqual((e.error.type, e.error.message), ("bad_request", message))


class Address:
    """
    A transport's addresses: C{getHost} (the connection's own) and, through
    C{server}, the listening port's.
    """

    def __init__(self, listening: Any, own: Any) -> None:
        self.server = self
        self._listening = listening
        self._own = own

    def getHost(self) -> Any:
        return self._listening


class LocalListenerTests(SynchronousTestCase):
    """
    L{isLocalListener} judges by the listening port's address.
    """

    def test_listeners(self) -> None:
        """
        A loopback or unix listener is local; one on all interfaces is not,
        even for a connection that came through loopback.
        """
        loopback = IPv4Address("TCP", "127.0.0.1", 1)
        self.assertTrue(isLocalListener(Address(loopback, loopback)))
        self.assertTrue(isLocalListener(Address(UNIXAddress(b"/s"), None)))
        self.assertFalse(isLocalListener(Address(IPv4Address("TCP", "0.0.0.0", 1), loopback)))
        self.assertFalse(isLocalListener(Address(IPv4Address("TCP", "10.1.2.3", 1), None)))
        plain = StringTransport(hostAddress=loopback)
        self.assertTrue(isLocalListener(plain))


class ConnectionTests(PoolTestsMixin, SynchronousTestCase):
    """
    Admin requests through a connection.
    """

    def connect(self, token: str | None, host: Any) -> tuple[Any, StringTransport]:
        pool, reactor = self.startedPool(1)
        self.pool, self.reactor = pool, reactor
        factory = TaskServerFactory(pool)
        factory.admin = AdminCommands(pool, lambda: None, token)
        protocol = factory.buildProtocol(None)
        transport = StringTransport(hostAddress=host)
        protocol.makeConnection(transport)
        return protocol, transport

    def replies(self, transport: StringTransport) -> list[Any]:
        lines = transport.value().splitlines()
        transport.clear()
        return [json.loads(line) for line in lines]

    def test_refusedOffLoopbackWithoutToken(self) -> None:
        """
        Without an admin token, an admin request on a listener that is not
        loopback is refused with C{forbidden}; the connection goes on.
        """
        protocol, transport = self.connect(None, IPv4Address("TCP", "10.1.2.3", 1))
        protocol.dataReceived(b'{"type":"admin","command":"workers","count":3}\n{"type":"stats"}\n')
        forbidden, stats = self.replies(transport)
        self.assertEqual(
            forbidden["error"],
            {
                "type": "forbidden",
                "message": "admin requests are taken only on loopback and unix: listeners "
                "when the daemon has no --admin-token-file",
                "started": False,
            },
        )
        self.assertEqual((stats["type"], stats["workers"]), ("stats", 1))
        self.assertEqual(self.pool.config.workers, 1)

    def test_token(self) -> None:
        """
        With an admin token, a request without it or with a wrong one is
        refused, on loopback too; with it, it is done.
        """
        protocol, transport = self.connect("adm1n", IPv4Address("TCP", "127.0.0.1", 1))
        protocol.dataReceived(
            b'{"type":"admin","command":"workers","count":2}\n'
            b'{"type":"admin","command":"workers","count":2,"token":"nope"}\n'
            b'{"type":"admin","command":"workers","count":2,"token":"adm1n"}\n'
        )
        missing, wrong, done = self.replies(transport)
        self.assertEqual(missing["error"]["message"], "this admin request needs the admin token ('token')")
        self.assertEqual(wrong["error"], {"type": "forbidden", "message": "the admin token is wrong", "started": False})
        self.assertEqual(done, {"type": "admin", "command": "workers", "workers": 2})
        self.assertEqual(len(self.reactor.processes), 2)

    def test_runningWithoutObserver(self) -> None:
        """
        A daemon without C{--http} (its pool has no observer) still lists
        its running calls, and cancels one by its number.
        """
        protocol, transport = self.connect(None, IPv4Address("TCP", "127.0.0.1", 1))
        self.assertIsNone(self.pool.observer)
        protocol.dataReceived(b'{"function":"sleep","args":[5],"id":"s"}\n')
        self.reactor.advance(1.5)
        protocol.dataReceived(b'{"type":"admin","command":"running"}\n')
        [listed] = self.replies(transport)
        [call] = listed["calls"]
        self.assertEqual(
            call,
            {"number": 1, "task": "sleep", "age": 1.5, "peer": "192.168.1.1:54321", "pid": self.reactor.processes[0].pid},
        )
        protocol.dataReceived(b'{"type":"admin","command":"cancel","number":1}\n')
        cancelled, done = self.replies(transport)
        self.assertEqual((cancelled["id"], cancelled["error"]["type"]), ("s", "cancelled"))
        self.assertEqual(done, {"type": "admin", "command": "cancel", "cancelled": True})

    def test_noAdmin(self) -> None:
        """
        A factory without admin commands refuses every admin request.
        """
        pool, _ = self.startedPool(1)
        protocol = TaskServerFactory(pool).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b'{"type":"admin","command":"drain"}\n')
        [reply] = self.replies(transport)
        self.assertEqual(
            reply["error"], {"type": "forbidden", "message": "this daemon takes no admin requests", "started": False}
        )


class Load(Protocol):
    """
    Keeps C{inFlight} calls of one request line in flight until
    L{stop}ped, and records every reply.
    """

    def __init__(self, line: bytes, inFlight: int) -> None:
        self.line = line
        self.inFlight = inFlight
        self.replies: list[Any] = []
        self.outstanding = 0
        self.running = True
        self.buffer = b""
        self.done: Deferred[list[Any]] = Deferred()

    def connectionMade(self) -> None:
        for _ in range(self.inFlight):
            self.send()

    def send(self) -> None:
        self.outstanding += 1
        self.transport.write(self.line)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.replies.append(json.loads(line))
            self.outstanding -= 1
            if self.running:
                self.send()
        if not self.running and not self.outstanding and not self.done.called:
            self.done.callback(self.replies)

    def stop(self) -> Deferred[list[Any]]:
        self.running = False
        if not self.outstanding and not self.done.called:
            self.done.callback(self.replies)
        return self.done

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.errback(RuntimeError(f"connection lost with {self.outstanding} calls unanswered"))


class TwistdAdminTests(TwistdMixin, TestCase):
    """
    A real C{twistd taskd} administered while it serves.
    """

    @inlineCallbacks
    def start(self, *args: str, **env: str) -> Any:
        daemon = self.spawn("--listen", "tcp:0:interface=127.0.0.1", *args, **env)
        m = yield daemon.waitFor(rb"TaskServerFactory starting on (\d+)")
        self.port = int(m.group(1))
        yield daemon.waitFor(rb"pool ready")
        self.daemon = daemon
        return daemon

    @inlineCallbacks
    def cli(self, *args: str) -> Any:
        from twisted.internet.utils import getProcessOutputAndValue

        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "taskd", *args, "--connect", f"tcp:127.0.0.1:{self.port}"], env=env, path=ROOT
        )
        return out.decode(), err.decode(), code

    @inlineCallbacks
    def load(self, line: bytes, inFlight: int) -> Any:
        load = Load(line, inFlight)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        yield endpoint.connect(Factory.forProtocol(lambda: load))
        self.addCleanup(lambda: load.transport.loseConnection())
        return load

    @inlineCallbacks
    def test_tokenRequired(self) -> Any:
        """
        With C{--admin-token-file}, the CLI's admin command without the
        token is refused (exit status 3, one line saying why); with it,
        it is done.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("adm\n")
        yield self.start("--workers", "1", "--admin-token-file", path)
        out, err, code = yield self.cli("workers", "2")
        self.assertEqual(
            (out, err, code),
            ("", f"taskd: tcp:127.0.0.1:{self.port} refused workers: forbidden: this admin request needs the admin token ('token')\n", 3),
        )
        out, err, code = yield self.cli("workers", "2", "--admin-token-file", path)
        self.assertEqual((out, err, code), ("workers: 2\n", "", 0))
        out, err, code = yield self.cli("running", "--json", "--admin-token-file", path)
        self.assertEqual((json.loads(out), code), ({"calls": []}, 0))
        self.process.signalProcess("TERM")
        yield self.daemon.ended

    @inlineCallbacks
    def test_resizeUnderLoad(self) -> Any:
        """
        Resizing up and down while 8 calls are always in flight fails no
        call; C{stats} shows the new sizes.
        """
        yield self.start("--workers", "2", "--tasks", "taskd.examples")
        load = yield self.load(b'{"function":"sleep","args":[0.02]}\n', 8)
        for size in ("4", "1", "3"):
            yield deferLater(reactor, 0.4, lambda: None)
            out, err, code = yield self.cli("workers", size)
            self.assertEqual((out, err, code), (f"workers: {size}\n", "", 0))
        yield deferLater(reactor, 1.0, lambda: None)
        out, err, code = yield self.cli("stats", "--json")
        self.assertEqual(json.loads(out)["workers"], 3)
        replies = yield load.stop()
        self.assertGreater(len(replies), 50)
        self.assertEqual([r for r in replies if r["type"] != "result"], [])
        print(f"\nresize under load: {len(replies)} calls, 0 failed")
        self.process.signalProcess("TERM")
        yield self.daemon.ended

    @inlineCallbacks
    def test_rollingRestartPicksUpNewCode(self) -> Any:
        """
        Two rolling restarts under load, the task module edited on disk
        between them: calls after the second see the new code, and no call
        fails.  Each restart answers with the number of workers replaced.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        module = os.path.join(directory, "rolling_tasks.py")
        source = "from taskd import task\n\n@task\ndef version():\n    return {v!r}\n"
        with open(module, "w") as f:
            f.write(source.format(v="one"))
        yield self.start(
            "--workers", "3", "--tasks", "rolling_tasks",
            PYTHONPATH=os.pathsep.join([directory, ROOT] + sys.path), PYTHONDONTWRITEBYTECODE="1",
        )
        load = yield self.load(b'{"function":"version"}\n', 6)
        yield deferLater(reactor, 0.3, lambda: None)
        out, err, code = yield self.cli("restart")
        self.assertEqual((out, err, code), ("restarted: 3 workers replaced\n", "", 0))
        with open(module, "w") as f:
            f.write(source.format(v="two, edited"))
        out, err, code = yield self.cli("restart")
        self.assertEqual((out, err, code), ("restarted: 3 workers replaced\n", "", 0))
        seen = len(load.replies)
        yield deferLater(reactor, 0.3, lambda: None)
        replies = yield load.stop()
        self.assertEqual([r for r in replies if r["type"] != "result"], [])
        self.assertEqual({r["result"] for r in replies[seen:]}, {"two, edited"})
        self.assertEqual(replies[0]["result"], "one")
        print(f"\nrolling restarts under load: {len(replies)} calls, 0 failed")
        self.process.signalProcess("TERM")
        yield self.daemon.ended

    @inlineCallbacks
    def test_drainFlipsHealth(self) -> Any:
        """
        C{drain}: C{/healthz} goes from 200 to 503 C{draining}, new
        connections are refused, the running call on an open connection
        still gets its result.
        """
        yield self.start("--workers", "1", "--http", "tcp:0:interface=127.0.0.1")
        m = yield self.daemon.waitFor(rb"StatusSite starting on (\d+)")
        health = f"http://127.0.0.1:{int(m.group(1))}/healthz".encode()

        @inlineCallbacks
        def check() -> Any:
            response = yield Agent(reactor).request(b"GET", health)
            body = yield readBody(response)
            return response.code, body

        self.assertEqual((yield check()), (200, b"ok\n"))
        load = yield self.load(b'{"function":"sleep","args":[0.5]}\n', 1)
        out, err, code = yield self.cli("drain")
        self.assertEqual((out, code), ("draining: no new connections; /healthz answers 503\n", 0))
        self.assertEqual((yield check()), (503, b"draining\n"))
        out, err, code = yield self.cli("stats")
        self.assertEqual(code, 3)
        self.assertIn("Connection refused", err)
        replies = yield load.stop()
        self.assertEqual({r["type"] for r in replies}, {"result"})
        self.process.signalProcess("TERM")
        yield self.daemon.ended
