"""
Tests for L{taskd.server}: the protocol over a L{StringTransport} with a
pool of hand-driven fake workers, then over real TCP with real workers.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import taskd
from taskd import errors
from taskd.pool import ProcessPool
from taskd.connection import TaskServerProtocol
from taskd.server import TaskServerFactory

from tests.fakes import FakeProcessReactor, PoolTestsMixin, frame, makeRegistry


class ServerTestsMixin(PoolTestsMixin):
    def connect(
        self, workers: int = 1, poolOptions: dict[str, Any] | None = None, **kw: Any
    ) -> tuple[TaskServerProtocol, StringTransport, FakeProcessReactor]:
        pool, reactor = self.startedPool(workers, **(poolOptions or {}))
        factory = TaskServerFactory(pool, **kw)
        self.factory = factory
        proto, transport = self.newConnection(factory)
        return proto, transport, reactor

    def newConnection(self, factory: TaskServerFactory) -> tuple[TaskServerProtocol, StringTransport]:
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        assert isinstance(proto, TaskServerProtocol)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def replies(self, transport: StringTransport) -> list[Any]:
        data = transport.value()
        transport.clear()
        self.assertTrue(data == b"" or data.endswith(b"\n"))
        return [json.loads(line) for line in data.splitlines()]

    def error(self, type: str, message: str, id: Any = None, started: bool | None = None) -> dict[str, Any]:
        """
        @return: an error reply, with C{started} as given or as the error
            type's default.
        """
        if started is None:
            started = errors.errorFromDict({"type": type}).started
        reply: dict[str, Any] = {"type": "error", "error": {"type": type, "message": message, "started": started}}
        if id is not None:
            reply["id"] = id
        return reply


class CallTests(ServerTestsMixin, SynchronousTestCase):
    def test_seedShape(self) -> None:
        """
        The seed's request is passed to a worker as it arrived, and the
        worker's result comes back in a result reply.
        """
        proto, transport, reactor = self.connect()
        line = b'{"function": "add", "args": [1, 2]}'
        proto.dataReceived(line + b"\r\n")
        worker = reactor.processes[0]
        self.assertEqual(worker.written[0][4:], b"add\n" + line)
        worker.send(b"R3")
        self.assertEqual(self.replies(transport), [{"type": "result", "result": 3}])

    def test_oneWritePerWorkerForARead(self) -> None:
        """
        The calls of one read go to each worker in one write (with
        C{prefetch}, several calls may go to one worker).
        """
        proto, transport, reactor = self.connect(workers=1, poolOptions={"prefetch": 3})
        worker = reactor.processes[0]
        writes: list[int] = []
        realWrite = os.write

        def write(fd: int, data: Any) -> int:
            writes.append(fd)
            return realWrite(fd, data)

        self.patch(os, "write", write)
        proto.dataReceived(b"".join(b'{"function":"add","args":[%d,1],"id":%d}\n' % (i, i) for i in range(3)))
        self.assertEqual(writes, [worker.proto.requests.fileno()])
        self.assertEqual(len(worker.written), 3)
        worker.sendRaw(b"".join(frame(b"R%d" % (i + 1)) for i in range(3)))
        self.assertEqual(
            [r["result"] for r in self.replies(transport)], [1, 2, 3]
        )

    def test_repliesOfAChunkInOneWrite(self) -> None:
        """
        The replies a chunk of a worker's replies answers for one
        connection are written together, after the chunk is handled.
        """
        pool, fakeReactor = self.startedPool(1, prefetch=3)
        proto = TaskServerFactory(pool).buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        writes: list[bytes] = []

        class Recording(StringTransport):
            def write(self, data: bytes) -> None:
                writes.append(data)

        proto.makeConnection(Recording())
        proto.dataReceived(b"".join(b'{"function":"add","args":[%d,1],"id":%d}\n' % (i, i) for i in range(3)))
        fakeReactor.processes[0].sendRaw(b"".join(frame(b"R%d" % (i + 1)) for i in range(3)))
        self.assertEqual(
            writes,
            [b'{"type":"result","id":0,"result":1}\n{"type":"result","id":1,"result":2}\n{"type":"result","id":2,"result":3}\n'],
        )

    def test_idsAnsweredAsTheyFinish(self) -> None:
        """
        Calls with ids are answered as they finish, each reply carrying
        its call's id.
        """
        proto, transport, reactor = self.connect(workers=2)
        proto.dataReceived(b'{"function":"sleep","args":[9],"id":"slow"}\n{"function":"add","args":[1,1],"id":2}\n')
        slow, fast = sorted(reactor.processes, key=lambda p: p.requests()[0][0] != "sleep")
        fast.send(b"R2")
        self.assertEqual(self.replies(transport), [{"type": "result", "id": 2, "result": 2}])
        slow.send(b"R9")
        self.assertEqual(self.replies(transport), [{"type": "result", "id": "slow", "result": 9}])

    def test_noIdAnsweredInOrder(self) -> None:
        """
        Calls without ids, and errors for lines without ids, are answered
        in the order they arrived even when they finish out of order.
        """
        proto, transport, reactor = self.connect(workers=2)
        proto.dataReceived(b'{"function":"sleep","args":[9]}\n{"function":"add","args":[1,1]}\nnot json\n{"function":"x","id":5,"args":3}\n')
        slow, fast = sorted(reactor.processes, key=lambda p: p.requests()[0][0] != "sleep")
        fast.send(b"R2")
        replies = self.replies(transport)
        self.assertEqual([r.get("id") for r in replies], [5])
        slow.send(b"R9")
        replies = self.replies(transport)
        self.assertEqual([r.get("result", r.get("error", {}).get("type")) for r in replies], [9, 2, "bad_request"])

    def test_unknownTask(self) -> None:
        """
        An unknown task name is refused before any worker sees it.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"function":"os.system","args":["rm -rf /"],"id":1}\n')
        self.assertEqual(self.replies(transport), [self.error("unknown_task", "no task named 'os.system'", 1)])
        self.assertEqual(reactor.processes[0].written, [])

    def test_badLinesKeepTheConnection(self) -> None:
        """
        Each malformed line gets its error and the connection goes on
        serving; blank lines are ignored.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'\xff\xfe\n[]\n{"args":[1]}\n{"function":"add","args":5}\n\n  \r\n')
        types = [r["error"]["type"] for r in self.replies(transport)]
        self.assertEqual(types, ["bad_request"] * 4)
        proto.dataReceived(b'{"function":"add","args":[2,2]}\n')
        reactor.processes[0].send(b"R4")
        self.assertEqual(self.replies(transport), [{"type": "result", "result": 4}])
        self.assertFalse(transport.disconnecting)

    def test_taskErrorReply(self) -> None:
        """
        A task's failure reaches the client with its type, message,
        exception name and traceback.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"function":"add","id":1}\n')
        reactor.processes[0].send(b'E{"type":"task_failed","message":"m","exception":"TypeError","traceback":"TB"}')
        self.assertEqual(
            self.replies(transport),
            [{"type": "error", "id": 1, "error": {"type": "task_failed", "message": "m", "started": True, "exception": "TypeError", "traceback": "TB"}}],
        )

    def test_duplicateId(self) -> None:
        """
        Reusing the id of a call in flight is refused with C{duplicate_id};
        the first call goes on and is answered once.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"function":"sleep","args":[1],"id":7}\n{"function":"add","args":[1,1],"id":7}\n')
        self.assertEqual(
            self.replies(transport),
            [self.error("duplicate_id", "id 7 belongs to a call still in flight; this call was not run", 7)],
        )
        reactor.processes[0].send(b"R1")
        self.assertEqual(self.replies(transport), [{"type": "result", "id": 7, "result": 1}])
        proto.dataReceived(b'{"function":"add","args":[1,1],"id":7}\n')
        reactor.processes[0].send(b"R2")
        self.assertEqual(self.replies(transport), [{"type": "result", "id": 7, "result": 2}])

    def test_lineTooLong(self) -> None:
        """
        A line over the limit gets a C{line_too_long} error, then the
        connection is closed; calls in flight on it are cancelled.
        """
        proto, transport, reactor = self.connect(maxLineLength=100)
        proto.dataReceived(b'{"function":"sleep","args":[9],"id":1}\n')
        proto.dataReceived(b'{"function":"echo","args":["' + b"x" * 200)
        self.assertEqual(
            self.replies(transport),
            [self.error("line_too_long", "a request line is longer than 100 bytes; closing the connection")],
        )
        self.assertTrue(transport.disconnecting)
        proto.connectionLost()
        self.assertEqual(reactor.processes[0].signals, ["SIGKILL"])

    def test_lineJustUnderLimit(self) -> None:
        """
        A line of exactly the limit is accepted.
        """
        proto, transport, reactor = self.connect(maxLineLength=100)
        line = b'{"function":"add","args":["' + b"x" * 70 + b'"]}'
        self.assertEqual(len(line), 100)
        proto.dataReceived(line + b"\n")
        self.assertEqual(len(reactor.processes[0].written), 1)

    def test_timeout(self) -> None:
        """
        A call's C{timeout} applies, capped by the daemon's default.
        """
        proto, transport, reactor = self.connect(workers=2, poolOptions={"timeout": 10.0})
        proto.dataReceived(b'{"function":"sleep","args":[99],"timeout":2,"id":"a"}\n{"function":"sleep","args":[99],"timeout":60,"id":"b"}\n')
        reactor.advance(2)
        self.assertEqual(self.replies(transport), [self.error("timeout", "task 'sleep' did not finish within 2.0 seconds", "a")])
        reactor.advance(8)
        self.assertEqual(self.replies(transport), [self.error("timeout", "task 'sleep' did not finish within 10.0 seconds", "b")])

    def test_hello(self) -> None:
        """
        A hello is answered with the version, the server and its tasks.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"type":"hello","version":1}\n')
        self.assertEqual(
            self.replies(transport),
            [{"type": "hello", "version": 1, "server": "taskd", "serverVersion": taskd.__version__, "tasks": ["add", "pid", "sleep"], "maxLineLength": 1048576, "maxInFlight": 100, "taskLimits": {}}],
        )

    def test_helloTellsTaskLimits(self) -> None:
        """
        The hello lists each task's scheduling options that are set: the
        task's own, with the daemon's task limits over them.
        """
        from taskd.registry import TaskOptions

        registry = makeRegistry()
        registry.register(lambda: None, "mail", concurrency=2, retries=3, retryOn=(ConnectionError,))
        proto, transport, reactor = self.connect(
            poolOptions={"registry": registry, "taskLimits": {"mail": TaskOptions(rate="5/s"), "add": TaskOptions(priority=4)}}
        )
        proto.dataReceived(b'{"type":"hello","version":1}\n')
        [hello] = self.replies(transport)
        self.assertEqual(
            hello["taskLimits"],
            {"add": {"priority": 4}, "mail": {"concurrency": 2, "rate": "5/s", "retries": 3, "retryOn": ["ConnectionError"]}},
        )


class ProgressTests(ServerTestsMixin, SynchronousTestCase):
    def test_progressWhenAsked(self) -> None:
        """
        A call with C{"progress": true} gets its task's reports, in order,
        before its result; a call without it gets only the result.
        """
        proto, transport, reactor = self.connect(workers=2)
        proto.dataReceived(b'{"function":"sleep","args":[1],"id":1,"progress":true}\n{"function":"sleep","args":[2],"id":2}\n')
        asked, other = sorted(reactor.processes, key=lambda p: p.requests()[0][1]["args"])
        asked.send(b'P{"done":1}')
        asked.send(b'P"caf\xc3\xa9"')
        other.send(b'P{"done":1}')
        other.send(b"R2")
        asked.send(b"R1")
        self.assertEqual(
            self.replies(transport),
            [
                {"type": "progress", "id": 1, "progress": {"done": 1}},
                {"type": "progress", "id": 1, "progress": "caf\u00e9"},
                {"type": "result", "id": 2, "result": 2},
                {"type": "result", "id": 1, "result": 1},
            ],
        )

    def test_droppedForASlowReader(self) -> None:
        """
        While the client is not reading (the write buffer is full), reports
        are dropped rather than buffered, and counted; the result still
        comes.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"function":"sleep","args":[1],"id":1,"progress":true}\n')
        worker = reactor.processes[0]
        transport.producer.pauseProducing()
        worker.send(b'P{"done":1}')
        transport.producer.resumeProducing()
        worker.send(b'P{"done":2}')
        worker.send(b"R1")
        self.assertEqual(
            self.replies(transport),
            [{"type": "progress", "id": 1, "progress": {"done": 2}}, {"type": "result", "id": 1, "result": 1}],
        )
        self.assertEqual(self.factory.traffic.progressDropped, 1)

    def test_progressNeedsAnId(self) -> None:
        """
        Progress without an id could not say whose it is: C{bad_request}.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"function":"add","args":[1,2],"progress":true}\n')
        self.assertEqual(
            self.replies(transport),
            [self.error("bad_request", "'progress' needs an 'id' to tell whose progress it is")],
        )
        self.assertEqual(reactor.processes[0].written, [])


class StatsTests(ServerTestsMixin, SynchronousTestCase):
    def test_stats(self) -> None:
        """
        A stats request is answered with the pool's counters, the number
        of connections and the bytes they carried each way.
        """
        proto, transport, reactor = self.connect(workers=2)
        calls = b'{"function":"sleep","args":[1],"id":1}\n{"function":"add","args":[1,2],"id":2}\n'
        proto.dataReceived(calls)
        reactor.processes[1].send(b"R3")
        answer = transport.value()
        proto.dataReceived(b'{"type":"stats"}\n')
        self.assertEqual(
            self.replies(transport)[1:],
            [{"type": "stats", "workers": 2, "idle": 1, "busy": 1, "queued": 0, "processes": 2, "memoryRecycled": 0, "queuedByPriority": {}, "queuedByTask": {}, "retrying": 0, "connections": 1, "bytesReceived": len(calls) + 17, "bytesSent": len(answer), "progressDropped": 0}],
        )


class SchedulingTests(ServerTestsMixin, SynchronousTestCase):
    def test_priorityAndDeadline(self) -> None:
        """
        A call's C{priority} and C{deadline} reach the pool: the higher
        priority runs first, and a call past its deadline gets an
        C{expired} error; the connection goes on.
        """
        proto, transport, reactor = self.connect()
        p = reactor.processes[0]
        proto.dataReceived(
            b'{"function":"sleep","args":[1],"id":1}\n'
            b'{"function":"add","args":[0,1],"id":2}\n'
            b'{"function":"add","args":[0,2],"id":3,"priority":1}\n'
            b'{"function":"add","args":[0,3],"id":4,"deadline":2}\n'
        )
        reactor.advance(2)
        self.assertEqual(
            self.replies(transport),
            [self.error("expired", "task 'add' waited 2.0 seconds in the queue without starting (its deadline)", 4)],
        )
        p.send(b"R1")
        p.send(b"R3")
        p.send(b"R2")
        self.assertEqual([r["args"] for _, r in p.requests()], [[1], [0, 2], [0, 1]])
        self.assertEqual(
            self.replies(transport),
            [{"type": "result", "id": i, "result": i} for i in (1, 3, 2)],
        )


class CancelTests(ServerTestsMixin, SynchronousTestCase):
    def test_cancelQueued(self) -> None:
        """
        A call cancelled while it waits in the queue is answered with
        C{started: false}: it never ran, and will not.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"function":"sleep","args":[99],"id":1}\n{"function":"add","args":[1,2],"id":2}\n')
        proto.dataReceived(b'{"type":"cancel","id":2}\n')
        self.assertEqual(self.replies(transport), [self.error("cancelled", "the call was cancelled", 2, started=False)])
        self.assertEqual(len(reactor.processes[0].written), 1)
        self.assertEqual(reactor.processes[0].signals, [])

    def test_cancelMessage(self) -> None:
        """
        A cancel message ends the named call with a C{cancelled} error and
        frees its worker; a cancel for an unknown id is ignored.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"function":"sleep","args":[99],"id":"s"}\n{"type":"cancel","id":"nope"}\n')
        self.assertEqual(self.replies(transport), [])
        proto.dataReceived(b'{"type":"cancel","id":"s"}\n')
        self.assertEqual(self.replies(transport), [self.error("cancelled", "the call was cancelled", "s", started=True)])
        self.assertEqual(reactor.processes[0].signals, ["SIGKILL"])
        self.assertEqual(len(reactor.processes), 2)

    def test_disconnectCancels(self) -> None:
        """
        A client that goes away has its queued calls dropped and its
        running calls' workers freed; another connection is unaffected.
        """
        proto, transport, reactor = self.connect()
        other, otherTransport = self.newConnection(self.factory)
        proto.dataReceived(b'{"function":"sleep","args":[99]}\n{"function":"add","args":[1,2]}\n')
        other.dataReceived(b'{"function":"add","args":[5,5]}\n')
        pool = self.factory.pool
        self.assertEqual(pool.stats()["queued"], 2)
        proto.connectionLost()
        self.assertEqual(pool.stats()["queued"], 1)
        self.assertEqual(reactor.processes[0].signals, ["SIGKILL"])
        replacement = reactor.processes[1]
        replacement.ready()
        self.assertEqual(replacement.requests(), [("add", {"function": "add", "args": [5, 5]})])
        replacement.send(b"R10")
        self.assertEqual(self.replies(otherTransport), [{"type": "result", "result": 10}])
        self.assertEqual(transport.value(), b"")


class LimitTests(ServerTestsMixin, SynchronousTestCase):
    def test_maxInFlightPausesReading(self) -> None:
        """
        With C{maxInFlight} requests unanswered the connection stops being
        read; lines already buffered wait, and reading resumes as replies
        go out.
        """
        proto, transport, reactor = self.connect(maxInFlight=2, poolOptions={"maxQueue": 100})
        proto.dataReceived(b"".join(b'{"function":"add","args":[%d,0]}\n' % i for i in range(5)))
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(self.factory.pool.stats()["queued"], 1)
        worker = reactor.processes[0]
        worker.send(b"R0")
        self.assertEqual(transport.producerState, "paused")
        for i in range(1, 5):
            worker.send(b"R%d" % i)
        self.assertEqual([r["result"] for r in self.replies(transport)], [0, 1, 2, 3, 4])
        self.assertEqual(transport.producerState, "producing")

    def test_readingResumesAQuarterLower(self) -> None:
        """
        Reading resumes once a quarter of C{maxInFlight} is answered, not at
        the first reply: a client keeping its window full is then read in
        bursts, not a line per reply.
        """
        proto, transport, reactor = self.connect(maxInFlight=8, poolOptions={"maxQueue": 100})
        proto.dataReceived(b"".join(b'{"function":"add","args":[%d,0],"id":%d}\n' % (i, i) for i in range(12)))
        self.assertEqual(transport.producerState, "paused")
        worker = reactor.processes[0]
        worker.send(b"R0")
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(self.factory.pool.stats()["queued"], 6)
        worker.send(b"R1")
        # 6 unanswered: the next two lines are read, and it pauses again.
        self.assertEqual(self.factory.pool.stats()["queued"], 7)
        self.assertEqual(transport.producerState, "paused")
        for i in range(2, 12):
            worker.send(b"R%d" % i)
        self.assertEqual([r["result"] for r in self.replies(transport)], list(range(12)))
        self.assertEqual(transport.producerState, "producing")

    def test_slowReaderPausesReading(self) -> None:
        """
        When the transport's write buffer is full (the client does not
        read), the connection stops being read until it drains.
        """
        proto, transport, reactor = self.connect()
        producer = transport.producer
        self.assertTrue(transport.streaming)
        producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        proto.dataReceived(b'{"function":"add","args":[1,2]}\n')
        self.assertEqual(reactor.processes[0].written, [])
        producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(reactor.processes[0].written), 1)

    def test_maxConnections(self) -> None:
        """
        Past C{maxConnections}, a new connection gets a C{busy} error and
        is closed; once one closes, a new one is served.
        """
        proto, transport, reactor = self.connect(maxConnections=1)
        extra, extraTransport = self.newConnection(self.factory)
        self.assertEqual(
            self.replies(extraTransport),
            [self.error("busy", "the daemon has 1 connections, its limit; try again later")],
        )
        self.assertTrue(extraTransport.disconnecting)
        extra.connectionLost()
        proto.connectionLost()
        again, againTransport = self.newConnection(self.factory)
        again.dataReceived(b'{"function":"add","args":[1,2]}\n')
        reactor.processes[0].send(b"R3")
        self.assertEqual(self.replies(againTransport), [{"type": "result", "result": 3}])

    def test_halfClose(self) -> None:
        """
        A client that closes its sending side still gets every reply, a
        last line without a newline included; then the daemon closes.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"function":"add","args":[1,2]}\n{"function":"add","args":[3,4]}')
        proto.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        worker = reactor.processes[0]
        worker.send(b"R3")
        self.assertFalse(transport.disconnecting)
        worker.send(b"R7")
        self.assertEqual([r["result"] for r in self.replies(transport)], [3, 7])
        self.assertTrue(transport.disconnecting)


class CloseTests(ServerTestsMixin, SynchronousTestCase):
    def test_closeConnections(self) -> None:
        """
        L{TaskServerFactory.closeConnections} closes every connection once
        its replies are written, and aborts the ones still open after the
        timeout; it fires when all are gone and leaves no timer behind.
        """
        proto, transport, reactor = self.connect()
        other, otherTransport = self.newConnection(self.factory)
        d = self.factory.closeConnections(timeout=5)
        self.assertTrue(transport.disconnecting and otherTransport.disconnecting)
        proto.connectionLost()
        self.assertNoResult(d)
        reactor.advance(5)
        self.assertTrue(otherTransport.disconnected)
        self.assertTrue(not transport.disconnected)
        other.connectionLost()
        self.successResultOf(d)
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_closeNothing(self) -> None:
        """
        With no connections, closing fires at once.
        """
        self.connect()[0].connectionLost()
        self.successResultOf(self.factory.closeConnections())


class Collector(Protocol):
    def __init__(self, lines: int) -> None:
        self.want = lines
        self.data = b""
        self.done: Deferred[list[Any]] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.data.count(b"\n") >= self.want and not self.done.called:
            self.done.callback([json.loads(l) for l in self.data.splitlines()])

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback([json.loads(l) for l in self.data.splitlines()])


class RealTCPTests(TestCase):
    """
    The server over real TCP on 127.0.0.1 with real workers.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.pool = ProcessPool(reactor, tasks=["taskd.examples", "tests.tasks"], workers=2, killGrace=1.0)
        yield self.pool.start()
        self.addCleanup(self.pool.stop)
        self.factory = TaskServerFactory(self.pool, maxLineLength=64 * 1024)
        self.port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.factory)
        self.addCleanup(self.port.stopListening)

    @inlineCallbacks
    def exchange(self, data: bytes, lines: int) -> Any:
        collector = Collector(lines)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        proto = yield endpoint.connect(Factory.forProtocol(lambda: collector))
        proto.transport.write(data)
        replies = yield collector.done
        proto.transport.loseConnection()
        return replies

    @inlineCallbacks
    def test_manyClientsAndBadInput(self) -> Any:
        """
        While one client sends garbage, crashes a worker and overflows a
        line, other clients are served correctly.
        """
        bad = self.exchange(
            b'garbage\n{"function":"crash","args":["kill"],"id":1}\n{"function":"nan","id":2}\n',
            3,
        )
        long = self.exchange(b"x" * 70000 + b"\n", 1)
        goods = [
            self.exchange(b"".join(b'{"function":"add","args":[%d,%d],"id":%d}\n' % (c, i, i) for i in range(20)), 20)
            for c in range(3)
        ]
        replies = yield bad
        types = sorted(r["error"]["type"] for r in replies)
        self.assertEqual(types, ["bad_request", "bad_result", "worker_crashed"])
        replies = yield long
        self.assertEqual([r["error"]["type"] for r in replies], ["line_too_long"])
        for c, d in enumerate(goods):
            replies = yield d
            self.assertEqual(sorted((r["id"], r["result"]) for r in replies), [(i, c + i) for i in range(20)])

    @inlineCallbacks
    def test_progressOverTCP(self) -> Any:
        """
        A real task's progress reports reach the client before its result.
        """
        replies = yield self.exchange(b'{"function":"steps","args":[3,0.01],"id":"s","progress":true}\n', 4)
        self.assertEqual(
            replies,
            [{"type": "progress", "id": "s", "progress": {"done": i, "of": 3}} for i in (1, 2, 3)]
            + [{"type": "result", "id": "s", "result": 3}],
        )

    @inlineCallbacks
    def test_bigResultOverTCP(self) -> Any:
        """
        A multi-megabyte result crosses worker pipe and socket intact.
        """
        (reply,) = yield self.exchange(b'{"function":"big","args":[5000000]}\n', 1)
        self.assertEqual(len(reply["result"]), 5000000)


class AuthTests(ServerTestsMixin, SynchronousTestCase):
    def connectWithToken(self, **kw: Any) -> tuple[TaskServerProtocol, StringTransport, FakeProcessReactor]:
        return self.connect(authToken="s3cret", authTimeout=10.0, **kw)

    def test_tokenAccepted(self) -> None:
        """
        A hello with the right token is answered, and calls then run.
        """
        proto, transport, reactor = self.connectWithToken()
        proto.dataReceived(b'{"type":"hello","version":1,"token":"s3cret"}\n{"function":"add","args":[1,2]}\n')
        hello, = self.replies(transport)
        self.assertEqual(hello["type"], "hello")
        reactor.processes[0].send(b"R3")
        self.assertEqual(self.replies(transport), [{"type": "result", "result": 3}])
        reactor.advance(60)
        self.assertFalse(transport.disconnecting)

    def test_wrongToken(self) -> None:
        """
        A wrong token is refused and the connection closed; lines that
        followed it in the same packet are not served.
        """
        proto, transport, reactor = self.connectWithToken()
        proto.dataReceived(
            b'{"type":"hello","token":"guess"}\n{"type":"hello","token":"s3cret"}\n{"function":"add","args":[1,2]}\n'
        )
        self.assertEqual(self.replies(transport), [self.error("unauthenticated", "the token is wrong")])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(reactor.processes[0].written, [])

    def test_callBeforeHello(self) -> None:
        """
        A call (or any line) before authenticating is refused, not run.
        """
        for line in (b'{"function":"add","args":[1,2],"id":1}', b"garbage", b'{"type":"hello"}'):
            proto, transport, reactor = self.connectWithToken()
            proto.dataReceived(line + b"\n")
            self.assertEqual(
                self.replies(transport),
                [self.error("unauthenticated", "authenticate first, with a hello that carries the token")]
                if line != b'{"type":"hello"}'
                else [self.error("unauthenticated", "this daemon requires a token and the hello carried none")],
            )
            self.assertTrue(transport.disconnecting)
            self.assertEqual(reactor.processes[0].written, [])

    def test_idleUnauthenticatedClosed(self) -> None:
        """
        A connection that does not authenticate within C{authTimeout} is
        refused and closed (slowloris); one that does is not.
        """
        proto, transport, reactor = self.connectWithToken()
        reactor.advance(9.9)
        self.assertFalse(transport.disconnecting)
        reactor.advance(0.1)
        self.assertEqual(self.replies(transport), [self.error("unauthenticated", "no authentication within 10.0 seconds")])
        self.assertTrue(transport.disconnecting)
        proto.connectionLost()
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_shortLinesBeforeAuth(self) -> None:
        """
        Before authenticating, a line over 4 KiB is refused.
        """
        proto, transport, reactor = self.connectWithToken()
        proto.dataReceived(b"x" * 5000)
        self.assertEqual(self.replies(transport)[0]["error"]["type"], "line_too_long")
        self.assertTrue(transport.disconnecting)

    def test_constantTimeCompare(self) -> None:
        """
        Tokens are compared as SHA-256 digests with L{hmac.compare_digest}.
        """
        import hmac

        calls: list[tuple[bytes, bytes]] = []
        original = hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return original(a, b)

        self.patch(hmac, "compare_digest", spy)
        proto, transport, reactor = self.connectWithToken()
        self.assertTrue(self.factory.checkToken("s3cret"))
        self.assertFalse(self.factory.checkToken("s3cre"))
        self.assertEqual([(len(a), len(b)) for a, b in calls], [(32, 32), (32, 32)])


class HostileLineTests(ServerTestsMixin, SynchronousTestCase):
    """
    Lines made to break the daemon each get their answer; nothing is left
    unhandled.
    """

    def test_deepNesting(self) -> None:
        """
        2,000 nested arrays (4 KiB) exceed the JSON decoder's recursion
        limit: a C{bad_request}, and the connection goes on serving.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b"[" * 2000 + b"]" * 2000 + b"\n")
        proto.dataReceived(b'{"function":"add","args":' + b"[" * 2000 + b"]" * 2000 + b',"id":1}\n')
        self.assertEqual(
            self.replies(transport),
            [self.error("bad_request", "the line nests arrays or objects too deeply")] * 2,
        )
        proto.dataReceived(b'{"function":"add","args":[1,2]}\n')
        reactor.processes[0].send(b"R3")
        self.assertEqual(self.replies(transport), [{"type": "result", "result": 3}])
        self.assertFalse(transport.disconnecting)

    def test_deepNestingBeforeAuthentication(self) -> None:
        """
        Before authentication the same line is a bad line like any other:
        one C{unauthenticated} error, then the connection is closed.
        """
        proto, transport, reactor = self.connect(authToken="s3cret")
        proto.dataReceived(b"[" * 2000 + b"]" * 2000 + b"\n")
        self.assertEqual(
            self.replies(transport),
            [self.error("unauthenticated", "authenticate first, with a hello that carries the token")],
        )
        self.assertTrue(transport.disconnecting)

    def test_decoderBug(self) -> None:
        """
        Whatever else the decoder might raise (a bug) is logged and the line
        still gets a C{bad_request}; the connection goes on serving.
        """
        from taskd import connection

        def broken(line: bytes) -> Any:
            raise KeyError("a bug")

        self.patch(connection, "decodeRequest", broken)
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"function":"add","args":[1,2]}\n')
        self.assertEqual(self.replies(transport), [self.error("bad_request", "the line could not be decoded (KeyError)")])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertFalse(transport.disconnecting)

    def test_loneSurrogateToken(self) -> None:
        """
        A token with a lone surrogate (no UTF-8 form) is simply wrong.
        """
        proto, transport, reactor = self.connect(authToken="s3cret")
        proto.dataReceived(b'{"type":"hello","token":"\\ud800"}\n')
        self.assertEqual(self.replies(transport), [self.error("unauthenticated", "the token is wrong")])
        self.assertTrue(transport.disconnecting)
        self.assertFalse(self.factory.checkToken("\ud800"))

    def test_refusedIdKeepsTheRunningCall(self) -> None:
        """
        A C{duplicate_id} or C{bad_request} reply carrying the id of a call
        in flight leaves that call on the books: the id stays taken, a
        cancel reaches the call, and the call is answered once.
        """
        proto, transport, reactor = self.connect()
        worker = reactor.processes[0]
        proto.dataReceived(b'{"function":"sleep","args":[99],"id":7}\n')
        for _ in range(2):
            proto.dataReceived(b'{"function":"add","args":[1,1],"id":7}\n')
            self.assertEqual(
                self.replies(transport),
                [self.error("duplicate_id", "id 7 belongs to a call still in flight; this call was not run", 7)],
            )
        proto.dataReceived(b'{"function":5,"id":7}\n')
        self.assertEqual(self.replies(transport), [self.error("bad_request", "'function' must be a non-empty string", 7)])
        self.assertEqual(len(worker.written), 1)
        proto.dataReceived(b'{"type":"cancel","id":7}\n')
        self.assertEqual(self.replies(transport), [self.error("cancelled", "the call was cancelled", 7, started=True)])
        self.assertEqual(worker.signals, ["SIGKILL"])

    def test_refusedIdThenReset(self) -> None:
        """
        After a C{duplicate_id}, a lost connection still cancels the call
        that holds the id.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"function":"sleep","args":[99],"id":"x"}\n{"function":"sleep","args":[1],"id":"x"}\n')
        self.assertEqual([r["error"]["type"] for r in self.replies(transport)], ["duplicate_id"])
        proto.connectionLost()
        self.assertEqual(reactor.processes[0].signals, ["SIGKILL"])

    def test_crlfAtTheLimit(self) -> None:
        """
        A line of exactly the limit ending in CR LF is accepted, the CR and
        the LF not counted, whether the LF comes with it or later; one byte
        more is C{line_too_long}.
        """
        line = b'{"function":"add","args":["' + b"x" * 70 + b'"]}'
        self.assertEqual(len(line), 100)
        proto, transport, reactor = self.connect(maxLineLength=100)
        proto.dataReceived(line + b"\r\n")
        proto.dataReceived(line + b"\r")
        proto.dataReceived(b"\n")
        self.assertEqual(len(reactor.processes[0].written), 1)
        self.assertEqual(self.factory.pool.stats()["queued"], 1)
        self.assertEqual(self.replies(transport), [])
        for long in (b" " + line + b"\n", b" " + line + b"\r\n"):
            proto, transport, reactor = self.connect(maxLineLength=100)
            proto.dataReceived(long)
            self.assertEqual(
                self.replies(transport),
                [self.error("line_too_long", "a request line is longer than 100 bytes; closing the connection")],
            )
            self.assertTrue(transport.disconnecting)


class TimeoutTests(ServerTestsMixin, SynchronousTestCase):
    """
    The idle and line timeouts, on the pool's clock.
    """

    idle = {"type": "error", "error": {"type": "idle_timeout", "message": "no call in flight and nothing received for 300.0 seconds; closing the connection", "started": False}}
    slow = {"type": "error", "error": {"type": "line_timeout", "message": "a request line was not finished within 30.0 seconds; closing the connection", "started": False}}

    def test_idle(self) -> None:
        """
        A connection that sends nothing gets an C{idle_timeout} error and is
        closed after C{idleTimeout} seconds, not before; no timer is left.
        """
        proto, transport, reactor = self.connect()
        reactor.advance(299)
        self.assertFalse(transport.disconnecting)
        reactor.advance(1)
        self.assertEqual(self.replies(transport), [self.idle])
        self.assertTrue(transport.disconnecting)
        proto.connectionLost()
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_idleCountsFromTheLastActivity(self) -> None:
        """
        The idle time counts from the later of the last bytes received and
        the last reply that left nothing in flight; a call in flight,
        however long, is not idleness.
        """
        proto, transport, reactor = self.connect()
        reactor.advance(100)
        proto.dataReceived(b'{"function":"sleep","args":[1000],"id":1}\n')
        reactor.advance(1000)
        self.assertFalse(transport.disconnecting)
        reactor.processes[0].send(b"R1")
        reactor.advance(200)
        proto.dataReceived(b'{"type":"stats"}\n')
        self.assertEqual([r["type"] for r in self.replies(transport)], ["result", "stats"])
        reactor.advance(299)
        self.assertFalse(transport.disconnecting)
        reactor.advance(1)
        self.assertEqual(self.replies(transport), [self.idle])
        self.assertTrue(transport.disconnecting)

    def test_idleNotReading(self) -> None:
        """
        An idle client that does not read either is aborted: its error line
        could not be delivered, and waiting for that would hold the
        connection.
        """
        proto, transport, reactor = self.connect()
        transport.producer.pauseProducing()
        reactor.advance(300)
        self.assertTrue(transport.disconnected)

    def test_lineTimeout(self) -> None:
        """
        A line started and not finished within C{lineTimeout} seconds, even
        if bytes keep coming, gets a C{line_timeout} error and the
        connection is closed; its calls in flight are cancelled.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"function":"sleep","args":[99],"id":1}\n{"function":')
        reactor.advance(20)
        proto.dataReceived(b'"add",')
        reactor.advance(9)
        self.assertFalse(transport.disconnecting)
        reactor.advance(1)
        self.assertEqual(self.replies(transport), [self.slow])
        self.assertTrue(transport.disconnecting)
        proto.connectionLost()
        self.assertEqual(reactor.processes[0].signals, ["SIGKILL"])

    def test_eachLineHasItsTime(self) -> None:
        """
        The line timeout counts from the start of the unfinished line, not
        from the connection's first bytes.
        """
        proto, transport, reactor = self.connect()
        proto.dataReceived(b'{"type":"st')
        reactor.advance(25)
        proto.dataReceived(b'ats"}\n{"type":"st')
        reactor.advance(25)
        proto.dataReceived(b'ats"}\n')
        reactor.advance(100)
        self.assertEqual([r["type"] for r in self.replies(transport)], ["stats", "stats"])
        self.assertFalse(transport.disconnecting)

    def test_pausedIsNotSlow(self) -> None:
        """
        While the daemon does not read (C{maxInFlight} requests are
        unanswered), a line is not timed: it has the whole line timeout
        from when reading resumes.
        """
        proto, transport, reactor = self.connect(maxInFlight=1)
        proto.dataReceived(b'{"function":"sleep","args":[99],"id":1}\n{"func')
        self.assertEqual(transport.producerState, "paused")
        reactor.advance(100)
        self.assertFalse(transport.disconnecting)
        reactor.processes[0].send(b"R99")
        self.assertEqual([r["id"] for r in self.replies(transport)], [1])
        reactor.advance(29)
        self.assertFalse(transport.disconnecting)
        reactor.advance(1)
        self.assertEqual(self.replies(transport), [self.slow])

    def test_disabled(self) -> None:
        """
        With both timeouts 0, no timer is set and nothing is closed.
        """
        proto, transport, reactor = self.connect(idleTimeout=0, lineTimeout=0)
        proto.dataReceived(b'{"func')
        self.assertEqual(reactor.getDelayedCalls(), [])
        reactor.advance(10**6)
        self.assertFalse(transport.disconnecting)

    def test_onlyOne(self) -> None:
        """
        Each timeout works without the other.
        """
        proto, transport, reactor = self.connect(idleTimeout=0)
        reactor.advance(10**6)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b'{"func')
        reactor.advance(30)
        self.assertEqual(self.replies(transport), [self.slow])
        proto, transport, reactor = self.connect(lineTimeout=0)
        proto.dataReceived(b'{"func')
        reactor.advance(300)
        self.assertEqual(self.replies(transport), [self.idle])

    def test_oneTimerPerConnection(self) -> None:
        """
        Lines and replies never set or move a timer: a connection holds one
        timer, set when it opens and again each time it fires.
        """
        proto, transport, reactor = self.connect()
        (timer,) = reactor.getDelayedCalls()
        for i in range(50):
            proto.dataReceived(b'{"type":"stats"}\n')
        self.assertEqual(reactor.getDelayedCalls(), [timer])
        self.assertEqual(timer.getTime(), 30)


class TracebackTests(ServerTestsMixin, SynchronousTestCase):
    """
    How much of a remote traceback clients get.
    """

    def realTraceback(self) -> str:
        import traceback

        def inner() -> None:
            {}["missing"]

        def outer() -> None:
            try:
                inner()
            except KeyError as e:
                raise ValueError("no luck\nsecond line") from e

        try:
            outer()
        except ValueError:
            return traceback.format_exc()
        raise AssertionError("not reached")

    def test_shortTraceback(self) -> None:
        """
        L{shortTraceback} keeps the header, the innermost frame of the
        last exception and that exception, with file names only.
        """
        from taskd.tracebacks import shortTraceback

        full = self.realTraceback()
        self.assertIn(os.path.abspath(__file__), full)
        self.assertEqual(
            shortTraceback(full),
            'Traceback (most recent call last):\n'
            f'  File "test_server.py", line {_lineOf("raise ValueError")}, in outer\n'
            '    raise ValueError("no luck\\nsecond line") from e\n'
            'ValueError: no luck\n'
            'second line\n',
        )
        self.assertEqual(shortTraceback(""), "")
        self.assertEqual(shortTraceback('  |   File "/srv/app/x.py", line 1\nOddError'), '  |   File "x.py", line 1\nOddError\n')

    def failedCall(self, tracebacks: str) -> dict[str, Any]:
        proto, transport, reactor = self.connect(tracebacks=tracebacks)
        proto.dataReceived(b'{"function":"add","id":1}\n')
        error = {"type": "task_failed", "message": "no luck", "exception": "ValueError", "traceback": self.realTraceback()}
        reactor.processes[0].send(b"E" + json.dumps(error).encode())
        (reply,) = self.replies(transport)
        self.assertEqual((reply["id"], reply["error"]["type"], reply["error"]["message"]), (1, "task_failed", "no luck"))
        return dict(reply["error"])

    def test_modes(self) -> None:
        """
        C{full} passes the worker's traceback on; C{short} shortens it;
        C{none} leaves the field out.
        """
        from taskd.tracebacks import shortTraceback

        full = self.realTraceback()
        self.assertEqual(self.failedCall("full")["traceback"], full)
        self.assertEqual(self.failedCall("short")["traceback"], shortTraceback(full))
        self.assertNotIn(os.path.dirname(__file__), self.failedCall("short")["traceback"])
        self.assertEqual(self.failedCall("none"), {"type": "task_failed", "message": "no luck", "started": True, "exception": "ValueError"})

    def test_workerStartFailed(self) -> None:
        """
        The same applies to the traceback of a worker that could not start.
        """
        for mode, expected in [("full", "Traceback (most recent call last):\n  File \"/srv/app/tasks.py\", line 1, in <module>\nImportError: x\n"),
                               ("short", "Traceback (most recent call last):\n  File \"tasks.py\", line 1, in <module>\nImportError: x\n"),
                               ("none", None)]:
            proto, transport, reactor = self.connect(tracebacks=mode)
            reactor.processes[0].exit(1)
            replacement = reactor.processes[1]
            replacement.send(b"E" + json.dumps({
                "type": "worker_start_failed", "message": "cannot load: x",
                "traceback": "Traceback (most recent call last):\n  File \"/srv/app/tasks.py\", line 1, in <module>\nImportError: x\n",
            }).encode())
            replacement.exit(1)
            proto.dataReceived(b'{"function":"add","args":[1,2]}\n')
            (reply,) = self.replies(transport)
            self.assertEqual(reply["error"].get("traceback"), expected)
            self.assertEqual(reply["error"]["type"], "worker_start_failed")

    def test_badMode(self) -> None:
        """
        An unknown mode is refused.
        """
        pool, reactor = self.makePool()
        self.assertRaises(ValueError, TaskServerFactory, pool, tracebacks="some")


def _lineOf(text: str) -> int:
    with open(__file__.replace(".pyc", ".py")) as f:
        for number, line in enumerate(f, 1):
            if text in line and "_lineOf" not in line:
                return number
    raise ValueError(text)


class ClosingTests(ServerTestsMixin, SynchronousTestCase):
    """
    How a connection closes: its write producer let go (or the transport
    would never close after draining), and never held open for ever.
    """

    def test_closeLetsTheProducerGo(self) -> None:
        """
        Closing unregisters the write-backpressure producer, so the
        transport closes once its buffer drains instead of resuming it.
        """
        proto, transport, reactor = self.connect()
        self.assertIsNotNone(transport.producer)
        proto.close()
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)

    def test_closeIsBounded(self) -> None:
        """
        A connection closing (here after the client half-closed and got its
        last reply) whose bytes are not delivered is reset after the close
        timeout, on the clock.
        """
        from taskd.connection import CLOSE_TIMEOUT

        proto, transport, reactor = self.connect()
        aborted: list[bool] = []
        transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        proto.dataReceived(b'{"function":"add","args":[1,2],"id":1}\n')
        proto.readConnectionLost()
        reactor.processes[0].send(b"R3")
        self.assertTrue(transport.disconnecting)
        reactor.advance(CLOSE_TIMEOUT - 0.1)
        self.assertEqual(aborted, [])
        reactor.advance(0.1)
        self.assertEqual(aborted, [True])

    def test_closedInTimeNoReset(self) -> None:
        """
        A connection that closes in time has its close timer cancelled.
        """
        proto, transport, reactor = self.connect()
        proto.close()
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(reactor.getDelayedCalls(), [])


class ImmediateWriteTests(TestCase):
    """
    L{taskd.replies.immediateWriter}: a reply goes out without waiting for
    the reactor when the transport holds nothing else.
    """

    @inlineCallbacks
    def test_sentAtOnceElseBehindTheBuffer(self) -> Any:
        """
        On a real TCP connection with an empty buffer, a write reaches the
        socket at once (the transport is not made to wait for
        writability); behind data the transport still holds, it goes
        through the transport, in order.
        """
        import socket

        from twisted.internet.task import deferLater

        from taskd.replies import immediateWriter

        accepted: list[Protocol] = []

        class Recording(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                accepted.append(Protocol())
                return accepted[-1]

        port = reactor.listenTCP(0, Recording(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        client.settimeout(10)
        while not accepted or accepted[0].transport is None:
            yield deferLater(reactor, 0.01, lambda: None)
        transport = accepted[0].transport
        buffering: list[bool] = []
        write = immediateWriter(transport, lambda: buffering.append(True))
        write(b"now\n")
        self.assertNotIn(transport, reactor.getWriters())
        self.assertEqual(client.recv(100), b"now\n")
        self.assertEqual(buffering, [])
        transport.write(b"held,")
        write(b"behind\n")
        self.assertIn(transport, reactor.getWriters())
        # Told once, before the first write it buffers.
        write(b"more,")
        self.assertEqual(buffering, [True])
        received = b""
        while not received.endswith(b","):
            yield deferLater(reactor, 0.01, lambda: None)
            client.setblocking(False)
            try:
                received += client.recv(100)
            except BlockingIOError:
                pass
        self.assertEqual(received, b"held,behind\nmore,")
        transport.loseConnection()

    @inlineCallbacks
    def test_closedNowWhenNothingIsHeld(self) -> Any:
        """
        L{taskd.replies.closedNow} closes a plain TCP connection whose
        buffer is empty at once: the protocol hears C{connectionLost}
        before it returns, without the transport waiting for writability,
        and the client reads what was sent, then the end of the stream.
        With data still in the transport's buffer it does nothing and says
        so (C{loseConnection} must deliver that data first).
        """
        import socket

        from twisted.internet.task import deferLater

        from taskd.replies import closedNow, immediateWriter

        accepted: list[Protocol] = []
        lost: list[Failure] = []

        class Recording(Protocol):
            def connectionLost(self, reason: Failure = connectionDone) -> None:
                lost.append(reason)

        class Recorder(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                accepted.append(Recording())
                return accepted[-1]

        port = reactor.listenTCP(0, Recorder(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        clients = []
        for _ in range(2):
            client = socket.create_connection(("127.0.0.1", port.getHost().port))
            self.addCleanup(client.close)
            client.settimeout(10)
            clients.append(client)
        while len(accepted) < 2 or None in (p.transport for p in accepted):
            yield deferLater(reactor, 0.01, lambda: None)
        first, second = (p.transport for p in accepted)

        immediateWriter(first, lambda: None)(b"bye\n")
        self.assertTrue(closedNow(first))
        self.assertEqual(len(lost), 1)
        lost[0].trap(ConnectionDone)
        self.assertNotIn(first, reactor.getWriters())
        self.assertEqual(clients[0].recv(100), b"bye\n")
        self.assertEqual(clients[0].recv(100), b"")

        second.write(b"held\n")
        self.assertFalse(closedNow(second))
        self.assertEqual(len(lost), 1)
        second.loseConnection()
        received = b""
        clients[1].setblocking(False)
        while not received.endswith(b"\n"):
            yield deferLater(reactor, 0.01, lambda: None)
            try:
                received += clients[1].recv(100)
            except BlockingIOError:
                pass
        self.assertEqual(received, b"held\n")
        self.assertFalse(closedNow(StringTransport()))

    def test_otherTransportsWrite(self) -> None:
        """
        For a transport that is not a plain TCP or UNIX connection (TLS, a
        test's), the writer is the transport's C{write}.
        """
        from taskd.replies import immediateWriter

        transport = StringTransport()
        buffering: list[bool] = []
        self.assertEqual(immediateWriter(transport, lambda: buffering.append(True)), transport.write)
        self.assertEqual(buffering, [True])
