"""
Reliability under load and faults, against real C{twistd taskd} daemons
and real workers on 127.0.0.1.  Every scenario is bounded in count and
time, and prints its figures as a C{RELIABILITY ...} line on stdout.

The guarantees and the last run's figures are in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import struct
import sys
from collections import Counter
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase

from taskd import errors
from taskd.reconnecting import ReconnectingClient

from tests.test_pool import alive, waitFor
from tests.test_tap import TwistdMixin


def report(scenario: str, **figures: Any) -> None:
    """
    Print a scenario's figures where CI's log shows them.
    """
    text = " ".join(f"{k}={v}" for k, v in figures.items())
    sys.__stdout__.write(f"\nRELIABILITY {scenario}: {text}\n")
    sys.__stdout__.flush()


def rss(pid: int) -> int:
    """
    @return: the resident memory of process C{pid}, in KiB.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_lastFds: dict[int, int] = {}


def _stable(pid: int) -> bool:
    """
    @return: whether C{pid}'s descriptor count is what it was at the
        previous call (polled every 25 ms by L{waitFor}).
    """
    now = fds(pid)
    stable = _lastFds.get(pid) == now
    _lastFds[pid] = now
    return stable


def running(pid: int) -> bool:
    """
    Whether C{pid} is alive and not a zombie waiting to be reaped (after
    its parent's death, by init, whenever init gets to it).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Pipeline(LineReceiver):
    """
    Sends request lines with at most C{inFlight} unanswered, and records
    every reply by id.
    """

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, lines: list[bytes], inFlight: int, gate: Deferred[None] | None = None) -> None:
        self.gate = gate
        self.lines = lines
        self.inFlight = inFlight
        self.sent = 0
        self.replies: dict[Any, list[dict[str, Any]]] = {}
        self.count = 0
        self.done: Deferred[Pipeline] = Deferred()

    def connectionMade(self) -> None:
        if self.gate is None:
            self.fill()
        else:
            self.gate.addCallback(lambda _: self.fill())

    def fill(self) -> None:
        while self.sent < len(self.lines) and self.sent - self.count < self.inFlight:
            self.transport.write(self.lines[self.sent] + b"\n")
            self.sent += 1

    def lineReceived(self, line: bytes) -> None:
        message = json.loads(line)
        self.replies.setdefault(message.get("id"), []).append(message)
        self.count += 1
        if self.count == len(self.lines):
            if not self.done.called:
                self.done.callback(self)
        else:
            self.fill()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(self)


class DaemonTestCase(TwistdMixin, TestCase):
    """
    Starts a C{twistd taskd} per test; knows its port and, from its log,
    its worker processes.
    """

    @inlineCallbacks
    def startDaemon(self, *options: str, port: int = 0, workers: int = 2) -> Any:
        daemon = self.spawn(
            # Twisted's default accept queue (50) drops connections opened
            # in a burst; the many-clients scenario opens 1,000 at once.
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024", "--workers", str(workers),
            "--tasks", "taskd.examples", "--tasks", "tests.tasks", "--kill-grace", "1", *options,
        )
        m = yield daemon.waitFor(rb"starting on (\d+)")
        yield daemon.waitFor(rb"pool ready")
        self.daemon = daemon
        self.daemonProcess = self.process
        self.port = int(m.group(1))
        self.workersTotal = workers
        self.addCleanup(self.killWorkers, daemon)
        return daemon

    def assertNothingUnhandled(self) -> None:
        """
        The daemon logged no unhandled error and no traceback.
        """
        self.assertNotIn(b"Unhandled", self.daemon.output)
        self.assertNotIn(b"Traceback", self.daemon.output)

    def workerPids(self, daemon: Any = None) -> tuple[set[int], set[int]]:
        """
        @return: (ready workers alive by the log, every worker ever started)
        """
        output = (daemon or self.daemon).output
        started = {int(p) for p in re.findall(rb"worker (\d+) started", output)}
        ended = {int(p) for p in re.findall(rb"worker (\d+) (?:exited|was killed|could not start)", output)}
        return started - ended, started

    def killRandomWorker(self, kills: list[int]) -> None:
        """
        SIGKILL one ready worker of the daemon, chosen at random, and note
        its pid in C{kills}.
        """
        ready = sorted(p for p in self.workerPids()[0] if alive(p))
        if ready:
            pid = random.choice(ready)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return  # it ended between the look and the kill
            kills.append(pid)

    def killWorkers(self, daemon: Any) -> None:
        # Whatever a scenario did, no worker outlives the test.
        for pid in self.workerPids(daemon)[1]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    @inlineCallbacks
    def pipeline(self, lines: list[bytes], inFlight: int = 100, gate: Deferred[None] | None = None, connected: Deferred[None] | None = None) -> Any:
        proto = Pipeline(lines, inFlight, gate)
        if not hasattr(self, "_pipelines"):
            self._pipelines: list[Pipeline] = []
            self.addCleanup(self._abortPipelines)
        self._pipelines.append(proto)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        yield endpoint.connect(Factory.forProtocol(lambda: proto))
        if connected is not None:
            connected.callback(None)
        yield proto.done
        proto.transport.loseConnection()
        return proto

    def _abortPipelines(self) -> None:
        # A failed scenario must not leave its connections to the next test.
        for proto in self._pipelines:
            if proto.transport is not None and proto.transport.connected:
                proto.transport.abortConnection()

    @inlineCallbacks
    def stats(self) -> Any:
        proto = yield self.pipeline([b'{"type":"stats"}'])
        return proto.replies[None][0]


class WorkerChaosTests(DaemonTestCase):
    def test_randomKills(self) -> Any:
        """
        5,000 calls with 100 in flight while a ready worker is SIGKILLed
        every 50 ms: every call gets exactly one reply, a result or
        C{worker_crashed}; crashes are at most the kills; the pool is back
        to full strength afterwards.
        """
        return self.chaos(prefetch=1)

    def test_randomKillsWithPrefetch(self) -> Any:
        """
        The same with calls sent ahead (C{--prefetch 4}): a kill still
        costs at most the one call its worker was running.
        """
        return self.chaos(prefetch=4)

    @inlineCallbacks
    def chaos(self, prefetch: int, *options: str, perKill: int = 1) -> Any:
        """
        @param options: more daemon options.
        @param perKill: how many calls one kill may cost at most.
        """
        yield self.startDaemon("--prefetch", str(prefetch), *options)
        kills: list[int] = []
        killer = LoopingCall(self.killRandomWorker, kills)
        killer.start(0.05, now=False)
        n = 5000
        lines = [b'{"function":"add","args":[%d,1],"id":%d}' % (i, i) for i in range(n)]
        try:
            proto = yield self.pipeline(lines, inFlight=100)
        finally:
            killer.stop()
        self.assertEqual(sorted(proto.replies), list(range(n)))
        outcomes: Counter[str] = Counter()
        for i, replies in proto.replies.items():
            self.assertEqual(len(replies), 1, f"call {i} answered {len(replies)} times")
            reply = replies[0]
            if reply["type"] == "result":
                self.assertEqual(reply["result"], i + 1)
                outcomes["result"] += 1
            else:
                outcomes[reply["error"]["type"]] += 1
        self.assertEqual(set(outcomes) - {"result", "worker_crashed"}, set())
        self.assertLessEqual(outcomes["worker_crashed"], perKill * len(kills))
        for _ in range(200):  # the last kill's replacement may still be starting
            stats = yield self.stats()
            if (stats["workers"], stats["idle"], stats["processes"]) == (2, 2, 2):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((stats["workers"], stats["idle"], stats["processes"]), (2, 2, 2))
        report(f"worker chaos (prefetch {prefetch}{''.join(' ' + o for o in options)})", calls=n, kills=len(kills), results=outcomes["result"], worker_crashed=outcomes["worker_crashed"])


class RunawayTests(DaemonTestCase):
    @inlineCallbacks
    def test_hungAndRunaway(self) -> Any:
        """
        A task that sleeps forever or spins times out; one that allocates
        without end hits the worker's memory cap; each worker is replaced
        or survives, and 200 other calls flow meanwhile.
        """
        yield self.startDaemon("--max-memory", "512")
        bad = [
            b'{"function":"sleep","args":[1000000],"timeout":0.5,"id":"sleep"}',
            b'{"function":"spin","timeout":0.5,"id":"spin"}',
            b'{"function":"hog","timeout":20,"id":"hog"}',
        ]
        good = [b'{"function":"add","args":[%d,1],"id":%d}' % (i, i) for i in range(200)]
        badRun = self.pipeline(bad, inFlight=1)
        goodRun = self.pipeline(good, inFlight=10)
        badProto, goodProto = yield gatherResults([badRun, goodRun])
        self.assertEqual([goodProto.replies[i][0].get("result") for i in range(200)], [i + 1 for i in range(200)])
        outcome = {k: v[0]["error"] for k, v in badProto.replies.items()}
        self.assertEqual(outcome["sleep"]["type"], "timeout")
        self.assertEqual(outcome["spin"]["type"], "timeout")
        self.assertEqual((outcome["hog"]["type"], outcome["hog"].get("exception")), ("task_failed", "MemoryError"))
        yield waitFor(lambda: len(self.workerPids()[0]) == 2, "two live workers")
        report("runaway tasks", sleep=outcome["sleep"]["type"], spin=outcome["spin"]["type"], hog=outcome["hog"]["exception"], other_calls_ok=200)


class GarbageTests(DaemonTestCase):
    @inlineCallbacks
    def test_garbage(self) -> Any:
        """
        Random bytes, random JSON and mutations of valid requests, sent on
        real connections (Hypothesis): every complete line but a cancel gets
        exactly one reply, the daemon survives, and serves a valid call on a
        new connection afterwards.
        """
        yield self.startDaemon("--timeout", "2")
        port = self.port
        tried = yield deferToThread(_fuzz, port)
        proto = yield self.pipeline([b'{"function":"add","args":[1,2]}'])
        self.assertEqual(proto.replies[None][0]["result"], 3)
        self.assertTrue(alive(self.daemonProcess.pid))
        report("garbage on the wire", lines_tried=tried)


def _fuzz(port: int) -> int:
    """
    Run the Hypothesis property with blocking sockets (in a thread, so the
    reactor running the daemon's log reader goes on).

    @return: how many lines were sent.
    """
    from hypothesis import HealthCheck, given, settings, strategies as st

    from taskd.wire import Cancel, ProtocolError, decodeRequest

    valid = [
        {"function": "add", "args": [1, 2]},
        {"function": "echo", "args": {"value": "x"}, "id": 5},
        {"function": "add", "args": [1, 2], "id": "k", "timeout": 1},
        {"type": "hello", "version": 1},
        {"type": "cancel", "id": 5},
    ]
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=10,
    )
    keys = st.sampled_from(["function", "args", "kwargs", "id", "timeout", "type", "version"])

    @st.composite
    def mutated(draw: Any) -> bytes:
        request = dict(draw(st.sampled_from(valid)))
        for _ in range(draw(st.integers(0, 3))):
            request[draw(keys)] = draw(json_values | st.sampled_from(["add", "echo", "cancel", "hello", "call", "stats"]))
        if draw(st.booleans()) and request:
            del request[draw(st.sampled_from(sorted(request)))]
        return json.dumps(request).encode()

    lines = st.one_of(
        st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")),
        json_values.map(lambda v: json.dumps(v).encode()),
        mutated(),
    )
    sent = [0]

    def expectedReplies(line: bytes) -> int:
        stripped = line[:-1] if line.endswith(b"\r") else line
        if not stripped.strip():
            return 0
        try:
            request = decodeRequest(stripped)
        except ProtocolError:
            return 1
        return 0 if isinstance(request, Cancel) else 1

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(lines, min_size=1, max_size=8))
    def property(batch: list[bytes]) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"".join(line + b"\n" for line in batch))
            s.shutdown(socket.SHUT_WR)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        sent[0] += len(batch)
        replies = [json.loads(r) for r in data.splitlines()]
        expected = sum(expectedReplies(line) for line in batch)
        # A cancel may name a call of the same batch: that call is then
        # answered "cancelled"; it still gets exactly one reply.
        assert len(replies) == expected, (batch, replies)

    property()
    return sent[0]


class ManyClientsTests(DaemonTestCase):
    @inlineCallbacks
    def test_thousandConnections(self) -> Any:
        """
        1,000 concurrent connections each make 5 calls: all answered; once
        they are gone the daemon's file descriptors are back to their
        baseline and its memory close to it.
        """
        yield self.startDaemon("--max-queue", "10000", "--max-connections", "2000")
        pid = self.daemonProcess.pid
        yield self.pipeline([b'{"function":"add","args":[1,1]}'] * 200)  # warm up
        for _ in range(4):  # four equal readings in a row, 25 ms apart
            yield waitFor(lambda: _stable(pid), "the daemon's descriptors to settle")
        baseFds, baseRss = fds(pid), rss(pid)
        gate: Deferred[None] = Deferred()
        connected: list[Deferred[None]] = [Deferred() for _ in range(1000)]
        clients = [
            self.pipeline([b'{"function":"add","args":[%d,%d],"id":%d}' % (c, i, i) for i in range(5)], inFlight=5, gate=gate, connected=connected[c])
            for c in range(1000)
        ]
        yield gatherResults(connected)
        yield waitFor(lambda: fds(pid) >= baseFds + 1000, "1,000 connections accepted")
        stats = yield self.stats()
        concurrent = stats["connections"] - 1
        self.assertEqual(concurrent, 1000)
        gate.callback(None)
        protos = yield gatherResults(clients)
        for c, proto in enumerate(protos):
            self.assertEqual({i: r[0]["result"] for i, r in proto.replies.items()}, {i: c + i for i in range(5)})
        peakRss = rss(pid)

        yield waitFor(lambda: fds(pid) == baseFds, "the daemon's descriptors back to baseline")
        afterFds, afterRss = fds(pid), rss(pid)
        self.assertEqual(afterFds, baseFds)
        self.assertLess(afterRss - baseRss, 20 * 1024)
        report("many clients", concurrent_connections=concurrent, calls=5000, fds_before=baseFds, fds_after=afterFds,
               rss_before_kib=baseRss, rss_peak_kib=peakRss, rss_after_kib=afterRss)


class SlowReaderTests(DaemonTestCase):
    @inlineCallbacks
    def test_slowReader(self) -> Any:
        """
        A client that asks for 400 results of 1 MiB and never reads: the
        daemon stops reading it, its memory grows by a bounded amount (not
        400 MiB), other clients are served, and closing the slow client
        frees its calls.
        """
        yield self.startDaemon("--max-in-flight", "8")
        pid = self.daemonProcess.pid
        baseRss = rss(pid)
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        slow.connect(("127.0.0.1", self.port))
        slow.setblocking(False)
        payload = b"".join(b'{"function":"big","args":[1048576],"id":%d}\n' % i for i in range(400))
        sentBytes = 0
        for _ in range(100):
            try:
                sentBytes += slow.send(payload[sentBytes:])
            except BlockingIOError:
                pass
            yield deferLater(reactor, 0.02, lambda: None)
            stats = yield self.stats()
            if stats["busy"] == 0 and stats["queued"] == 0 and sentBytes:
                break
        heldRss = rss(pid)
        proto = yield self.pipeline([b'{"function":"add","args":[2,2]}'])
        self.assertEqual(proto.replies[None][0]["result"], 4)
        self.assertLess(heldRss - baseRss, 100 * 1024)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        slow.close()
        for _ in range(100):
            stats = yield self.stats()
            if stats["connections"] == 1:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((stats["connections"], stats["busy"], stats["queued"]), (1, 0, 0))
        report("slow reader", requested_mib=400, rss_before_kib=baseRss, rss_held_kib=heldRss,
               request_bytes_accepted=sentBytes, request_bytes_total=len(payload))


class VanishingClientTests(DaemonTestCase):
    @inlineCallbacks
    def vanish(self, reset: bool) -> Any:
        yield self.startDaemon()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        s = socket.create_connection(("127.0.0.1", self.port))
        s.sendall(b"".join(
            json.dumps({"function": "touch", "args": [directory, str(i), 0.5], "id": i}).encode() + b"\n"
            for i in range(50)
        ))
        yield waitFor(lambda: len(self.workerPids()[0]) == 2, "workers")
        yield deferLater(reactor, 0.2, lambda: None)
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        for _ in range(200):
            stats = yield self.stats()
            if (stats["connections"], stats["busy"], stats["queued"]) == (1, 0, 0):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((stats["connections"], stats["busy"], stats["queued"]), (1, 0, 0))
        yield waitFor(lambda: len(self.workerPids()[0]) == 2, "two live workers")
        ran = len(os.listdir(directory))
        return ran

    @inlineCallbacks
    def test_reset(self) -> Any:
        """
        A client that vanishes with a reset (a crashed host, a killed
        process with unread data): its running calls are cancelled and
        their workers replaced, its queued calls dropped.
        """
        ran = yield self.vanish(reset=True)
        self.assertEqual(ran, 0)
        report("vanishing client (reset)", calls=50, ran=ran)

    @inlineCallbacks
    def test_closed(self) -> Any:
        """
        A client that closes cleanly and goes away: the calls already
        running finish (a clean close means "done sending"), then the first
        reply that cannot be delivered ends the connection and the rest are
        dropped.
        """
        ran = yield self.vanish(reset=False)
        self.assertLessEqual(ran, 2 * self.workersTotal)
        report("vanishing client (close)", calls=50, ran=ran)


class GracefulStopTests(DaemonTestCase):
    @inlineCallbacks
    def test_stopUnderLoad(self) -> Any:
        """
        SIGTERM with 200 calls queued and running: each gets exactly one
        reply, a result or C{stopping}; the daemon exits cleanly and no
        worker remains.
        """
        yield self.startDaemon("--max-in-flight", "300", "--grace", "10")
        lines = [b'{"function":"sleep","args":[0.05],"id":%d}' % i for i in range(200)]
        run = self.pipeline(lines, inFlight=200)
        yield deferLater(reactor, 0.3, lambda: None)
        workers = self.workerPids()[1]
        self.daemonProcess.signalProcess("TERM")
        proto = yield run
        status = yield self.daemon.ended
        outcomes: Counter[str] = Counter()
        for i in range(200):
            self.assertEqual(len(proto.replies.get(i, [])), 1, f"call {i}")
            reply = proto.replies[i][0]
            outcomes["result" if reply["type"] == "result" else reply["error"]["type"]] += 1
        self.assertEqual(set(outcomes), {"result", "stopping"})
        self.assertEqual(status, (None, signal.SIGTERM))
        self.assertEqual([p for p in workers if alive(p)], [])
        report("graceful stop", calls=200, finished=outcomes["result"], stopping=outcomes["stopping"], workers_left=0)


class DaemonKilledTests(DaemonTestCase):
    @inlineCallbacks
    def test_workersDieWithTheDaemon(self) -> Any:
        """
        A daemon killed with SIGKILL while its workers run long tasks takes
        them with it at once (Linux: the workers ask for SIGKILL on their
        parent's death), rather than leave them running to the task's end.
        """
        yield self.startDaemon()
        workers = self.workerPids()[1]
        self.pipeline([b'{"function":"sleep","args":[120],"id":%d}' % i for i in range(2)])
        for _ in range(200):
            stats = yield self.stats()
            if stats["busy"] == 2:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        else:
            self.fail("the workers never started the long tasks")
        self.daemonProcess.signalProcess("KILL")
        yield self.daemon.ended
        start = reactor.seconds()
        yield waitFor(lambda: not any(running(p) for p in workers), "the workers to die")
        report("daemon killed mid-task", workers=len(workers), seconds_to_dead=round(reactor.seconds() - start, 2))


class RestartTests(DaemonTestCase):
    @inlineCallbacks
    def test_restart(self) -> Any:
        """
        The reconnecting client keeps working across a daemon restart:
        a call made during the gap waits and succeeds; with C{failFast}
        it fails at once with L{errors.NotConnected}.
        """
        first = yield self.startDaemon()
        port = self.port
        policy = backoffPolicy(initialDelay=0.05, maxDelay=0.2, jitter=lambda: 0)
        client = ReconnectingClient(reactor, [f"tcp:127.0.0.1:{port}"], retryPolicy=policy)
        fast = ReconnectingClient(reactor, [f"tcp:127.0.0.1:{port}"], retryPolicy=policy, failFast=True)
        for c in (client, fast):
            c.startService()
            self.addCleanup(c.stopService)
        yield waitFor(lambda: client.connectedCount() == 1 and fast.connectedCount() == 1, "connections")
        self.assertEqual((yield client.call("add", 1, 2)), 3)
        self.daemonProcess.signalProcess("TERM")
        yield first.ended
        yield waitFor(lambda: client.connectedCount() == 0, "the old connection to go")
        during = client.call("add", 2, 3)
        yield self.assertFailure(fast.call("add", 2, 3), errors.NotConnected)
        yield self.startDaemon(port=port)
        self.assertEqual((yield during), 5)
        report("daemon restart", waited_call="succeeded", fail_fast_call="not_connected")


class Conversation(LineReceiver):
    """
    A client that sends lines and waits for the next replies, one at a
    time; records when the daemon closes the connection.
    """

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self) -> None:
        self.replies: list[dict[str, Any]] = []
        self.read = 0
        self.sent = 0
        self._waiting: list[tuple[int, Deferred[list[dict[str, Any]]]]] = []
        self.closed: Deferred[float] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.replies.append(json.loads(line))
        self._check()

    def _check(self) -> None:
        for n, d in list(self._waiting):
            if len(self.replies) - self.read >= n:
                self._waiting.remove((n, d))
                got = self.replies[self.read : self.read + n]
                self.read += n
                d.callback(got)

    def send(self, data: bytes) -> None:
        self.sent += data.count(b"\n")
        self.transport.write(data)

    def exchange(self, data: bytes, replies: int = 1) -> Deferred[list[dict[str, Any]]]:
        """
        Send C{data}; fire with the next C{replies} replies.
        """
        d: Deferred[list[dict[str, Any]]] = Deferred()
        self._waiting.append((replies, d))
        self.send(data)
        self._check()
        return d.addTimeout(30, reactor)

    def connectionLost(self, reason: Any = None) -> None:
        for _, d in self._waiting:
            d.errback(AssertionError(f"connection closed; replies so far: {self.replies}"))
        self._waiting = []
        self.closed.callback(reactor.seconds())


class HostileLineTests(DaemonTestCase):
    def converse(self) -> Any:
        proto = Conversation()
        d = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(Factory.forProtocol(lambda: proto))

        def connected(p: Any) -> Any:
            self.addCleanup(lambda: p.transport.abortConnection() if p.transport.connected else None)
            return p

        return d.addCallback(connected)

    @inlineCallbacks
    def test_hostileLines(self) -> Any:
        """
        Each hostile line gets its error reply and the connection goes on
        serving: 2,000 nested arrays; a duplicate id, twice, and a
        malformed line carrying the id of a running call (which stays on
        the books: the id stays taken and a cancel reaches it); a line of
        exactly C{--max-line-length} ending in CR LF.  A reset after a
        duplicate id still cancels the call holding the id.  Nothing
        unhandled in the daemon's log.
        """
        limit = 5000
        yield self.startDaemon("--max-line-length", str(limit))
        c = yield self.converse()
        error = lambda r: (r.get("id"), r["error"]["type"])  # noqa: E731
        (r,) = yield c.exchange(b"[" * 2000 + b"]" * 2000 + b"\n")
        self.assertEqual(r["error"], {"type": "bad_request", "message": "the line nests arrays or objects too deeply", "started": False})
        c.send(b'{"function":"sleep","args":[60],"id":7}\n')
        for _ in range(2):
            (r,) = yield c.exchange(b'{"function":"add","args":[1,1],"id":7}\n')
            self.assertEqual(error(r), (7, "duplicate_id"))
        (r,) = yield c.exchange(b'{"function":5,"id":7}\n')
        self.assertEqual(error(r), (7, "bad_request"))
        head = b'{"function":"echo","args":["'
        tail = b'"]}'
        line = head + b"x" * (limit - len(head) - len(tail)) + tail
        self.assertEqual(len(line), limit)
        (r,) = yield c.exchange(line + b"\r\n")
        self.assertEqual(len(r["result"]), limit - len(head) - len(tail))
        start = reactor.seconds()
        (r,) = yield c.exchange(b'{"type":"cancel","id":7}\n')
        cancelSeconds = reactor.seconds() - start
        self.assertEqual(error(r), (7, "cancelled"))
        (r,) = yield c.exchange(b'{"function":"add","args":[2,3]}\n')
        self.assertEqual(r["result"], 5)

        reset = yield self.converse()
        reset.send(b'{"function":"sleep","args":[60],"id":"x"}\n')
        (r,) = yield reset.exchange(b'{"function":"sleep","args":[60],"id":"x"}\n')
        self.assertEqual(error(r), ("x", "duplicate_id"))
        start = reactor.seconds()
        reset.transport.abortConnection()
        for _ in range(200):
            stats = yield self.stats()
            if (stats["busy"], stats["connections"]) == (0, 2):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        freedSeconds = reactor.seconds() - start
        self.assertEqual((stats["busy"], stats["connections"]), (0, 2))
        self.assertNothingUnhandled()
        report("hostile lines", lines=c.sent + reset.sent, replies=len(c.replies) + len(reset.replies), cancel_s=round(cancelSeconds, 2),
               reset_freed_s=round(freedSeconds, 2), crlf_line_bytes=limit, unhandled=0)

    @inlineCallbacks
    def test_hostileLinesWithToken(self) -> Any:
        """
        With C{--auth-token-file}: 2,000 nested arrays before the hello get
        the one C{unauthenticated} error and the close every bad first line
        gets; a hello whose token is a lone surrogate is a wrong token;
        after a right hello, the nested line is a C{bad_request} and the
        connection goes on serving.  Nothing unhandled in the log.
        """
        token = os.path.abspath(self.mktemp())
        with open(token, "w") as f:
            f.write("s3cret\n")
        yield self.startDaemon("--auth-token-file", token)
        nested = b"[" * 2000 + b"]" * 2000 + b"\n"
        outcomes = []
        for first in (nested, b'{"type":"hello","token":"\\ud800"}\n'):
            c = yield self.converse()
            (r,) = yield c.exchange(first)
            yield c.closed
            self.assertEqual(r["error"]["type"], "unauthenticated")
            outcomes.append(r["error"]["message"])
        self.assertEqual(outcomes, ["authenticate first, with a hello that carries the token", "the token is wrong"])
        c = yield self.converse()
        (r,) = yield c.exchange(b'{"type":"hello","token":"s3cret"}\n')
        self.assertEqual(r["type"], "hello")
        (r,) = yield c.exchange(nested)
        self.assertEqual(r["error"]["type"], "bad_request")
        (r,) = yield c.exchange(b'{"function":"add","args":[2,3]}\n')
        self.assertEqual(r["result"], 5)
        self.assertNothingUnhandled()
        report("hostile lines before authentication", nested="unauthenticated", surrogate_token="the token is wrong",
               nested_after_hello="bad_request", unhandled=0)


class IdleConnectionTests(DaemonTestCase):
    @inlineCallbacks
    def test_thousandIdleConnections(self) -> Any:
        """
        1,000 connections that send nothing (the default
        C{--max-connections}) lock later clients out with C{busy} until the
        idle timeout (2 s here) closes each of them with an C{idle_timeout}
        error; then a new client is served.
        """
        idle = 2.0
        yield self.startDaemon("--idle-timeout", str(idle))
        protos = [Conversation() for _ in range(1000)]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        yield gatherResults([endpoint.connect(Factory.forProtocol(lambda p=p: p)) for p in protos])
        connected = reactor.seconds()
        self.addCleanup(lambda: [p.transport.abortConnection() for p in protos if p.transport.connected])
        locked = yield self.pipeline([b'{"function":"add","args":[1,1]}'])
        self.assertEqual(locked.replies[None][0]["error"]["type"], "busy")
        closedAt = yield gatherResults([p.closed for p in protos])
        lastClosed = max(closedAt) - connected
        for p in protos:
            self.assertEqual([r["error"]["type"] for r in p.replies], ["idle_timeout"])
        self.assertGreaterEqual(min(closedAt) - connected, idle - 1.0)  # each connection's own clock starts at accept
        self.assertLess(lastClosed, idle + 10)
        served = yield self.pipeline([b'{"function":"add","args":[1,1]}'])
        self.assertEqual(served.replies[None][0]["result"], 2)
        self.assertNothingUnhandled()
        report("idle connections", connections=1000, idle_timeout_s=idle, later_client_before="busy",
               first_closed_s=round(min(closedAt) - connected, 2), last_closed_s=round(lastClosed, 2),
               idle_timeout_errors=sum(len(p.replies) for p in protos), new_client="served")


class SlowlorisTests(DaemonTestCase):
    @inlineCallbacks
    def test_slowloris(self) -> Any:
        """
        A client that starts a line and trickles a byte every 100 ms
        without ever ending it gets a C{line_timeout} error and is closed
        after C{--line-timeout} (1 s here); another client is served
        meanwhile.
        """
        yield self.startDaemon("--line-timeout", "1")
        c = Conversation()
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(Factory.forProtocol(lambda: c))
        start = reactor.seconds()
        c.transport.write(b'{"function":"echo","args":["')
        sent = [0]

        def trickle() -> None:
            if c.transport.connected:
                c.transport.write(b"x")
                sent[0] += 1

        dripping = LoopingCall(trickle)
        dripping.start(0.1)
        try:
            other = yield self.pipeline([b'{"function":"add","args":[1,1]}'])
            closedAt = yield c.closed
        finally:
            dripping.stop()
        seconds = closedAt - start
        self.assertEqual(other.replies[None][0]["result"], 2)
        self.assertEqual([r["error"]["type"] for r in c.replies], ["line_timeout"])
        self.assertGreaterEqual(seconds, 0.9)
        self.assertLess(seconds, 3)
        self.assertNothingUnhandled()
        report("slowloris line", line_timeout_s=1, closed_after_s=round(seconds, 2), bytes_trickled=sent[0], other_client="served")
