"""
Tests for L{taskd.client}: against a real server and real workers on
127.0.0.1, and the protocol alone over a L{StringTransport}.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from taskd import errors
from taskd.client import TaskClient, TaskClientProtocol, connect
from taskd.pool import ProcessPool
from taskd.server import TaskServerFactory

from tests.test_pool import waitFor


class ClientProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proto = TaskClientProtocol()
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def sent(self) -> list[Any]:
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(line) for line in data.splitlines()]

    def test_callsMatchedById(self) -> None:
        """
        Each call gets the next integer id; replies are matched by id in
        whatever order they come.
        """
        a = self.proto.call("add", [1, 2])
        b = self.proto.call("echo", [], {"value": "x"}, timeout=2.5)
        self.assertEqual(
            self.sent(),
            [{"function": "add", "args": [1, 2], "id": 1}, {"function": "echo", "kwargs": {"value": "x"}, "timeout": 2.5, "id": 2}],
        )
        self.proto.dataReceived(b'{"type":"result","id":2,"result":"x"}\n{"type":"result","id":1,"result":3}\n')
        self.assertEqual((self.successResultOf(a), self.successResultOf(b)), (3, "x"))

    def test_priorityAndDeadline(self) -> None:
        """
        C{callWith(..., priority=, deadline=)} sends both fields; an
        C{expired} error fails the call with L{errors.Expired}.
        """
        client = TaskClient(self.proto)
        d = client.callWith("add", [1, 2], priority=7, deadline=1.5)
        self.assertEqual(
            self.sent(), [{"function": "add", "args": [1, 2], "priority": 7, "deadline": 1.5, "id": 1}]
        )
        self.proto.dataReceived(b'{"type":"error","id":1,"error":{"type":"expired","message":"late"}}\n')
        self.assertEqual(self.failureResultOf(d, errors.Expired).value.message, "late")

    def test_errorsMapToClasses(self) -> None:
        """
        An error reply fails the call with the matching L{errors} class.
        """
        d = self.proto.call("fail")
        self.proto.dataReceived(
            b'{"type":"error","id":1,"error":{"type":"task_failed","message":"m","exception":"KeyError","traceback":"TB"}}\n'
        )
        f = self.failureResultOf(d, errors.TaskFailed)
        self.assertEqual((f.value.remoteType, f.value.remoteTraceback), ("KeyError", "TB"))

    def test_cancel(self) -> None:
        """
        Cancelling fails the call at once and sends a cancel; the daemon's
        later C{cancelled} reply is ignored.
        """
        d = self.proto.call("sleep", [9])
        self.sent()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.sent(), [{"type": "cancel", "id": 1}])
        self.proto.dataReceived(b'{"type":"error","id":1,"error":{"type":"cancelled","message":"c"}}\n')

    def test_connectionLost(self) -> None:
        """
        Losing the connection fails every pending call with
        L{errors.ConnectionLost}; later calls fail at once.
        """
        ds = [self.proto.call("sleep", [9]) for _ in range(3)]
        self.proto.connectionLost()
        for d in ds:
            self.failureResultOf(d, errors.ConnectionLost)
        self.failureResultOf(self.proto.call("add", [1, 2]), errors.ConnectionLost)

    def test_progress(self) -> None:
        """
        With a C{progress} callback the call asks for progress, and each
        report for it reaches the callback until the result; reports for
        other ids, and a callback that raises, harm nothing.
        """
        seen: list[Any] = []
        d = self.proto.call("steps", [2], progress=seen.append)
        other = self.proto.call("steps", [2], progress=lambda value: 1 / 0)
        self.assertEqual(
            self.sent(),
            [{"function": "steps", "args": [2], "id": 1, "progress": True}, {"function": "steps", "args": [2], "id": 2, "progress": True}],
        )
        self.proto.dataReceived(
            b'{"type":"progress","id":1,"progress":{"done":1}}\n'
            b'{"type":"progress","id":2,"progress":{"done":1}}\n'
            b'{"type":"progress","id":9,"progress":{"done":1}}\n'
            b'{"type":"progress","id":1,"progress":{"done":2}}\n'
            b'{"type":"result","id":1,"result":2}\n'
            b'{"type":"progress","id":1,"progress":{"done":3}}\n'
        )
        self.assertEqual((seen, self.successResultOf(d)), ([{"done": 1}, {"done": 2}], 2))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertNoResult(other)

    def test_repliesSplitAcrossReads(self) -> None:
        """
        Replies arrive in whatever pieces the network makes: a large
        result cut into 64 KiB reads, and several replies in one read with
        the last one cut short, are each decoded whole, once.
        """
        big = self.proto.call("echo", ["x"])
        small = [self.proto.call("add", [i, 0]) for i in range(3)]
        value = "\u00e9" * (3 * 1024 * 1024)
        line = json.dumps({"type": "result", "id": 1, "result": value}).encode() + b"\n"
        tail = b'{"type":"result","id":2,"result":0}\n{"type":"result","id":3,"result":1}\n{"type":"res'
        data = line + tail
        for start in range(0, len(data), 65536):
            self.proto.dataReceived(data[start : start + 65536])
        self.assertEqual(self.successResultOf(big), value)
        self.assertEqual([self.successResultOf(d) for d in small[:2]], [0, 1])
        self.assertNoResult(small[2])
        self.proto.dataReceived(b'ult","id":4,"result":2}\n')
        self.assertEqual(self.successResultOf(small[2]), 2)

    def test_replyTooLong(self) -> None:
        """
        A reply line longer than C{MAX_LENGTH} drops the connection, whether
        it ends in the read that crosses the limit or not.
        """
        for ending in (b"", b"\n"):
            proto = TaskClientProtocol()
            proto.MAX_LENGTH = 100
            transport = StringTransport()
            proto.makeConnection(transport)
            proto.dataReceived(b"x" * 60)
            self.assertFalse(transport.disconnecting)
            proto.dataReceived(b"x" * 60 + ending)
            self.assertTrue(transport.disconnecting)

    def test_unencodable(self) -> None:
        """
        Arguments JSON cannot hold fail the call without sending anything.
        """
        self.failureResultOf(self.proto.call("echo", [object()]), errors.BadRequest)
        self.assertEqual(self.transport.value(), b"")


class ClientTests(TestCase):
    """
    L{connect} and L{TaskClient} against a real daemon on 127.0.0.1.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.pool = ProcessPool(
            reactor, tasks=["taskd.examples", "tests.tasks"], workers=2, killGrace=1.0,
            maxResult=1024 * 1024,
        )
        yield self.pool.start()
        self.addCleanup(self.pool.stop)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(TaskServerFactory(self.pool))
        self.addCleanup(port.stopListening)
        self.client = yield connect(reactor, f"tcp:127.0.0.1:{port.getHost().port}")
        self.addCleanup(self.client.close)

    @inlineCallbacks
    def test_call(self) -> Any:
        """
        C{call} passes positional and keyword arguments; many calls run at
        once on one connection.
        """
        self.assertEqual((yield self.client.call("add", 1, 2)), 3)
        self.assertEqual((yield self.client.call("add", a="x", b="y")), "xy")
        results = yield gatherResults([self.client.call("add", i, i) for i in range(100)])
        self.assertEqual(results, [2 * i for i in range(100)])

    @inlineCallbacks
    def test_maxInFlightFromTheDaemon(self) -> Any:
        """
        A daemon's C{maxInFlight} reaches the client in its hello: the
        client then never has more calls unanswered on the wire, and every
        call of a burst past it is answered.
        """
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            TaskServerFactory(self.pool, maxInFlight=3)
        )
        self.addCleanup(port.stopListening)
        client = yield connect(reactor, f"tcp:127.0.0.1:{port.getHost().port}")
        self.addCleanup(client.close)
        protocol = client._protocol
        self.assertEqual(protocol.maxInFlight, 3)
        most = []
        write = protocol.transport.write

        def counting(data: bytes) -> None:
            most.append(len(protocol._written))
            write(data)

        protocol.transport.write = counting
        # What a read's answers make is sent at once, not through write.
        writeSome = protocol.transport.writeSomeData

        def countingSome(data: bytes) -> Any:
            most.append(len(protocol._written))
            return writeSome(data)

        protocol.transport.writeSomeData = countingSome
        results = yield gatherResults([client.call("add", i, i) for i in range(50)])
        self.assertEqual(results, [2 * i for i in range(50)])
        self.assertEqual(max(most), 3)

    @inlineCallbacks
    def test_progress(self) -> Any:
        """
        C{callWith(..., progress=f)} gets a real task's reports before its
        result.
        """
        seen: list[Any] = []
        result = yield self.client.callWith("steps", [3, 0.01], progress=seen.append)
        self.assertEqual((seen, result), ([{"done": i, "of": 3} for i in (1, 2, 3)], 3))

    @inlineCallbacks
    def test_remoteErrors(self) -> Any:
        """
        Remote failures arrive as L{errors} exceptions with their details.
        """
        e = yield self.assertFailure(self.client.call("fail", "no luck"), errors.TaskFailed)
        self.assertEqual((e.remoteType, e.message), ("ValueError", "no luck"))
        self.assertIn("raise ValueError(message)", e.remoteTraceback)
        yield self.assertFailure(self.client.call("os.system", "true"), errors.UnknownTask)
        yield self.assertFailure(self.client.callWith("sleep", [5], timeout=0.2), errors.TaskTimeout)
        yield self.assertFailure(self.client.call("crash", "kill"), errors.WorkerCrashed)

    @inlineCallbacks
    def test_outOfOrder(self) -> Any:
        """
        A quick call made after a slow one completes first.
        """
        order: list[str] = []
        slow = self.client.call("sleep", 0.5).addCallback(lambda _: order.append("slow"))
        quick = self.client.call("add", 1, 1).addCallback(lambda _: order.append("quick"))
        yield gatherResults([slow, quick])
        self.assertEqual(order, ["quick", "slow"])

    @inlineCallbacks
    def test_moreErrorTypes(self) -> Any:
        """
        Results JSON cannot hold, results over the limit, a full queue and
        a stopping daemon each arrive as their own L{errors} class.
        """
        e = yield self.assertFailure(self.client.call("nan"), errors.ResultNotSerializable)
        self.assertIn("returned a value JSON cannot hold", e.message)
        e = yield self.assertFailure(self.client.call("big", 2 * 1024 * 1024), errors.ResultTooLarge)
        self.assertIn("the limit is 1048576", e.message)
        self.pool.config = evolve(self.pool.config, maxQueue=1)
        running = [self.client.call("sleep", 0.5) for _ in range(2)]
        queued = self.client.call("add", 1, 2)
        yield waitFor(lambda: self.pool.stats()["queued"] == 1, "a queued call")
        e = yield self.assertFailure(self.client.call("add", 3, 4), errors.PoolBusy)
        self.assertIn("queue is full", e.message)
        stopped = self.pool.stop()
        yield self.assertFailure(queued, errors.PoolStopping)
        self.assertEqual((yield gatherResults(running)), [0.5, 0.5])
        yield stopped

    @inlineCallbacks
    def test_cancelFreesTheWorker(self) -> Any:
        """
        Cancelling a running call fails it at once, and the daemon stops
        its worker; the client goes on working.
        """
        before = self.pool.pids()
        d = self.client.call("sleep", 30)
        yield waitFor(lambda: self.pool.stats()["busy"] == 1, "the call to start")
        d.cancel()
        yield self.assertFailure(d, CancelledError)
        yield waitFor(lambda: self.pool.stats()["busy"] == 0 and len(self.pool.pids() - before) == 1, "a replacement worker")
        self.assertEqual((yield self.client.call("add", 2, 2)), 4)

    @inlineCallbacks
    def test_close(self) -> Any:
        """
        C{close} fails pending calls with L{errors.ConnectionLost} and fires
        once the connection is closed; the daemon drops the calls.
        """
        d = self.client.call("sleep", 30)
        yield deferLater(reactor, 0.1, lambda: None)
        yield self.client.close()
        yield self.assertFailure(d, errors.ConnectionLost)
        yield waitFor(lambda: self.pool.stats()["busy"] == 0, "the daemon to cancel the call")


class ClientSafetyTests(SynchronousTestCase):
    """
    What the client never does: send a call on a connection it closed or
    that the daemon is closing, send a line the daemon would refuse (and
    close the connection for), or wait forever for a hello.
    """

    def connected(self, maxLine: int | None = None) -> tuple[TaskClientProtocol, StringTransport]:
        proto = TaskClientProtocol()
        transport = StringTransport()
        proto.makeConnection(transport)
        if maxLine is not None:
            proto.setMaxLine(maxLine)
        return proto, transport

    def test_noCallAfterClose(self) -> None:
        """
        After L{TaskClientProtocol.close} (what L{TaskClient.close} does), a
        call fails at once with L{errors.ConnectionLost} and nothing more is
        written, though the connection is not gone yet.
        """
        proto, transport = self.connected()
        pending = proto.call("sleep", [9])
        transport.clear()
        proto.close()
        self.assertEqual(transport.value(), b'{"type":"cancel","id":1}\n')
        transport.clear()
        f = self.failureResultOf(proto.call("add", [1, 2]), errors.ConnectionLost)
        self.assertEqual(f.value.message, "the connection is closed; the call was not sent")
        self.failureResultOf(proto.stats(), errors.ConnectionLost)
        self.assertEqual(transport.value(), b"")
        self.assertNoResult(pending)

    def test_noCallOnAConnectionTheDaemonCloses(self) -> None:
        """
        Once the daemon says it closes the connection (idle), a call is not
        sent on it: it fails at once, saying why and that it was not sent.
        """
        proto, transport = self.connected()
        proto.dataReceived(b'{"type":"error","error":{"type":"idle_timeout","message":"idle"}}\n')
        transport.clear()
        f = self.failureResultOf(proto.call("add", [1, 2]), errors.ConnectionLost)
        self.assertEqual(
            f.value.message,
            "the daemon is closing the connection (idle_timeout); the call was not sent",
        )
        self.assertEqual(transport.value(), b"")

    def test_tooLongNotSent(self) -> None:
        """
        A call longer than the daemon's C{maxLineLength} (from its hello)
        fails at once with L{errors.LineTooLong}, nothing sent: the daemon
        would have closed the connection, with every other call on it.
        """
        proto, transport = self.connected(maxLine=100)
        other = proto.call("sleep", [9])
        transport.clear()
        f = self.failureResultOf(proto.call("echo", ["x" * 200]), errors.LineTooLong)
        self.assertIn("it was not sent", f.value.message)
        self.assertEqual(transport.value(), b"")
        self.assertNoResult(other)
        proto.call("echo", ["x" * 50])
        self.assertNotEqual(transport.value(), b"")

    def test_closingNoticesAnswerNothing(self) -> None:
        """
        An error without an id that says the daemon closes the connection
        (C{line_too_long}, C{line_timeout}, C{idle_timeout}) is not taken
        as the answer to a waiting C{stats} request; the calls in flight
        fail with L{errors.ConnectionLost} naming it when the connection
        goes.
        """
        proto, transport = self.connected()
        call = proto.call("sleep", [9])
        stats = proto.stats()
        proto.dataReceived(b'{"type":"error","error":{"type":"line_too_long","message":"too long"}}\n')
        self.assertNoResult(stats)
        proto.connectionLost(Failure(ConnectionDone()))
        f = self.failureResultOf(call, errors.ConnectionLost)
        self.assertEqual(f.value.message, "connection to taskd lost: line_too_long: too long")
        self.failureResultOf(stats, errors.ConnectionLost)
        self.flushLoggedErrors()

    def test_helloTimeout(self) -> None:
        """
        A peer that never answers the hello: L{authenticate} fails with
        L{errors.NotConnected} after the timeout, on the clock, and drops
        the connection.
        """
        from taskd.client import authenticate

        clock = Clock()
        proto, transport = self.connected()
        d = authenticate(proto, None, clock, timeout=10)
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        f = self.failureResultOf(d, errors.NotConnected)
        self.assertEqual(f.value.message, "the daemon did not answer the hello within 10 seconds")
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_helloTellsTheLineLimit(self) -> None:
        """
        The daemon's hello sets the longest call the client sends.
        """
        from taskd.client import authenticate

        proto, transport = self.connected()
        d = authenticate(proto, None, Clock())
        proto.dataReceived(b'{"type":"hello","version":1,"maxLineLength":64}\n')
        self.successResultOf(d)
        self.failureResultOf(proto.call("echo", ["x" * 100]), errors.LineTooLong)


class MaxInFlightTests(SynchronousTestCase):
    """
    The client sends at most the daemon's C{maxInFlight} calls at once on
    a connection and holds the others, unsent, in order.
    """

    def connected(self, maxInFlight: int) -> tuple[TaskClientProtocol, StringTransport]:
        from taskd.client import authenticate

        proto = TaskClientProtocol()
        transport = StringTransport()
        proto.makeConnection(transport)
        d = authenticate(proto, None, Clock())
        proto.dataReceived(b'{"type":"hello","version":1,"maxInFlight":%d}\n' % maxInFlight)
        self.successResultOf(d)
        transport.clear()
        return proto, transport

    def sentIds(self, transport: StringTransport) -> list[Any]:
        return [json.loads(line).get("id") for line in transport.value().splitlines()]

    def test_heldUntilReplies(self) -> None:
        """
        Calls past the limit are written one by one as replies free places,
        in the order they were made; L{TaskClientProtocol.outstanding}
        counts both kinds.
        """
        proto, transport = self.connected(2)
        ds = [proto.call("add", [i, i]) for i in range(4)]
        self.assertEqual(self.sentIds(transport), [1, 2])
        self.assertEqual(proto.outstanding, 4)
        proto.dataReceived(b'{"type":"result","id":2,"result":2}\n')
        self.assertEqual(self.sentIds(transport), [1, 2, 3])
        proto.dataReceived(b'{"type":"error","id":1,"error":{"type":"timeout","message":"late"}}\n')
        self.assertEqual(self.sentIds(transport), [1, 2, 3, 4])
        self.assertEqual(self.successResultOf(ds[1]), 2)
        self.failureResultOf(ds[0], errors.TaskTimeout)
        self.assertEqual(proto.outstanding, 2)

    def test_cancelHeld(self) -> None:
        """
        Cancelling a held call sends nothing (the daemon never heard of
        it); cancelling a sent one sends a cancel, and its place is free
        only once the daemon answers.
        """
        proto, transport = self.connected(1)
        first = proto.call("sleep", [9])
        held = proto.call("add", [1, 2])
        held.cancel()
        self.failureResultOf(held, CancelledError)
        self.assertEqual(self.sentIds(transport), [1])
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(json.loads(transport.value().splitlines()[-1]), {"type": "cancel", "id": 1})
        third = proto.call("add", [1, 2])
        self.assertEqual(len(transport.value().splitlines()), 2)
        proto.dataReceived(b'{"type":"error","id":1,"error":{"type":"cancelled","message":"the call was cancelled","started":true}}\n')
        self.assertEqual(self.sentIds(transport)[-1], 3)
        proto.dataReceived(b'{"type":"result","id":3,"result":3}\n')
        self.assertEqual(self.successResultOf(third), 3)

    def test_lostHeldDidNotStart(self) -> None:
        """
        When the connection is lost, a sent call may have run; a held one
        did not, and says so.
        """
        proto, transport = self.connected(1)
        sent, held = proto.call("sleep", [9]), proto.call("add", [1, 2])
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.failureResultOf(sent, errors.ConnectionLost).value.started)
        e = self.failureResultOf(held, errors.ConnectionLost).value
        self.assertFalse(e.started)
        self.assertIn("the call was not sent", e.message)

    def test_heldIsBounded(self) -> None:
        """
        Past C{maxHeld} waiting calls, a call fails at once with C{busy},
        not sent.
        """
        proto, transport = self.connected(1)
        proto.maxHeld = 2
        ds = [proto.call("add", [i, i]) for i in range(3)]
        e = self.failureResultOf(proto.call("add", [0, 0]), errors.PoolBusy).value
        self.assertEqual(e.message, "2 calls already wait to be sent on this connection (the daemon takes 1 at once); the call was not sent")
        self.assertFalse(e.started)
        self.assertEqual(self.sentIds(transport), [1])
        for d in ds:
            self.assertNoResult(d)
