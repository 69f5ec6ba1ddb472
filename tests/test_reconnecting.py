"""
Tests for L{taskd.reconnecting.ReconnectingClient} against daemons on 127.0.0.1:
in-process ones that the test stops and restarts, and real C{twistd taskd}
processes, one of them killed.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, inlineCallbacks
from twisted.logger import LogLevel, capturedLogs
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from taskd import errors
from taskd.reconnecting import ReconnectingClient
from taskd.pool import PoolState, ProcessPool
from taskd.server import TaskServerFactory

from tests.test_pool import alive, waitFor
from tests.test_tap import TwistdMixin


class Daemon:
    """
    A pool with one worker behind a TCP listener that can be stopped
    (connections aborted, as when a daemon dies) and started again on the
    same port.
    """

    def __init__(self, maxQueue: int = 100, maxInFlight: int = 100) -> None:
        self.pool = ProcessPool(reactor, tasks=["taskd.examples"], workers=1, killGrace=1.0, maxQueue=maxQueue)
        self.factory = TaskServerFactory(self.pool, maxInFlight=maxInFlight)
        self.port: Any = None
        self.number = 0

    @inlineCallbacks
    def start(self) -> Any:
        if self.pool.state is PoolState.NEW:
            yield self.pool.start()
        self.port = yield TCP4ServerEndpoint(reactor, self.number, interface="127.0.0.1").listen(self.factory)
        self.number = self.port.getHost().port

    @inlineCallbacks
    def kill(self) -> Any:
        yield self.port.stopListening()
        for protocol in list(self.factory.connections):
            protocol.transport.abortConnection()
        yield waitFor(lambda: not self.factory.connections, "connections to close")

    @inlineCallbacks
    def stop(self) -> Any:
        if self.port is not None and self.port.connected:
            yield self.port.stopListening()
        yield self.pool.stop()


class ReconnectingClientTests(TestCase):
    @inlineCallbacks
    def daemons(self, n: int, **kw: Any) -> Any:
        result = []
        for _ in range(n):
            daemon = Daemon(**kw)
            yield daemon.start()
            self.addCleanup(daemon.stop)
            result.append(daemon)
        return result

    def client(self, daemons: list[Daemon], **kw: Any) -> ReconnectingClient:
        kw.setdefault("retryPolicy", backoffPolicy(initialDelay=0.05, maxDelay=0.2, jitter=lambda: 0))
        client = ReconnectingClient(reactor, [f"tcp:127.0.0.1:{d.number}" for d in daemons], **kw)
        client.startService()
        self.addCleanup(client.stopService)
        return client

    @inlineCallbacks
    def test_roundRobin(self) -> Any:
        """
        Calls are spread over the connected daemons: with as many calls
        outstanding on each, in turn.
        """
        a, b = yield self.daemons(2)
        client = self.client([a, b])
        yield waitFor(lambda: client.connectedCount() == 2, "both connections")
        pids = yield gatherResults([client.call("pid") for _ in range(6)])
        self.assertEqual(sorted(set(pids)), sorted(a.pool.pids() | b.pool.pids()))
        self.assertEqual(sorted(pids.count(p) for p in set(pids)), [3, 3])

    @inlineCallbacks
    def test_leastBusy(self) -> Any:
        """
        A call goes to the daemon with the fewest calls outstanding on its
        connection.
        """
        a, b = yield self.daemons(2)
        client = self.client([a, b])
        yield waitFor(lambda: client.connectedCount() == 2, "both connections")
        sleeps = [client.call("sleep", 0.5) for _ in range(3)]
        yield waitFor(lambda: a.pool.stats()["busy"] + b.pool.stats()["busy"] == 2, "both daemons to run a sleep")
        [quieter] = [d for d in (a, b) if d.pool.stats()["queued"] == 0]
        pid = yield client.call("pid")
        self.assertEqual({pid}, quieter.pool.pids())
        yield gatherResults(sleeps)

    @inlineCallbacks
    def test_busyFailsOver(self) -> Any:
        """
        A call a daemon refuses as C{busy} (it did not start) is sent to
        another daemon; with none left, the caller gets C{busy}.
        """
        a, b = yield self.daemons(2, maxQueue=1)
        full = [a.pool.submit("sleep", [3]), a.pool.submit("sleep", [3])]
        self.assertEqual(a.pool.stats()["queued"], 1)
        client = self.client([a, b])
        yield waitFor(lambda: client.connectedCount() == 2, "both connections")
        pids = []
        with capturedLogs() as events:
            for _ in range(4):
                pids.append((yield client.call("pid")))
        self.assertEqual(set(pids), b.pool.pids())
        self.assertIn(
            "taskd: busy from a daemon; sending 'pid' to another",
            [e["log_format"].format(**e) for e in events if e.get("log_namespace", "").startswith("taskd.reconnecting")],
        )
        full += [b.pool.submit("sleep", [3]), b.pool.submit("sleep", [3])]
        e = yield self.assertFailure(client.call("pid"), errors.PoolBusy)
        self.assertFalse(e.started)
        for d in full:
            d.addErrback(lambda f: f.trap(CancelledError))
            d.cancel()

    @inlineCallbacks
    def test_unsentCallsFailOver(self) -> Any:
        """
        Calls held back on a connection by the daemon's C{maxInFlight} were
        never sent: when that daemon dies they go to another one; the call
        it was running fails with L{errors.ConnectionLost}, since it may
        have run.
        """
        a, b = yield self.daemons(2, maxInFlight=1)
        yield b.kill()
        client = self.client([a, b])
        yield waitFor(lambda: client.connectedCount() == 1, "the connection to a")
        running = client.call("sleep", 5)
        held = [client.call("pid") for _ in range(2)]
        yield waitFor(lambda: a.pool.stats()["busy"] == 1, "the sleep to run")
        self.assertEqual(a.pool.stats()["queued"], 0)
        yield b.start()
        yield waitFor(lambda: client.connectedCount() == 2, "the connection to b")
        yield a.kill()
        e = yield self.assertFailure(running, errors.ConnectionLost)
        self.assertTrue(e.started)
        pids = yield gatherResults(held)
        self.assertEqual(set(pids), b.pool.pids())

    @inlineCallbacks
    def test_idleConnectionClosedByTheDaemon(self) -> Any:
        """
        A daemon that closes an idle connection (C{--idle-timeout}) first
        says so: a call made from then on is not sent on that connection
        (it would be lost with it) but waits for the reconnection, and
        succeeds; the notice is not logged as a problem.
        """
        [daemon] = yield self.daemons(1)
        daemon.factory.idleTimeout = 0.3
        client = self.client([daemon])
        yield waitFor(lambda: client.connectedCount() == 1, "the connection")
        [first] = client._connected
        calls: list[Deferred[Any]] = []
        first.whenClosing().addCallback(lambda _: calls.append(client.call("add", 1, 2)))
        with capturedLogs() as events:
            yield waitFor(lambda: bool(calls), "the daemon to close the idle connection")
            result = yield calls[0]
        self.assertEqual(result, 3)
        self.assertTrue(first.closing)
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])

    @inlineCallbacks
    def test_nothingSentAfterStop(self) -> Any:
        """
        A call made once the client is stopping fails at once with
        L{errors.NotConnected}, and is not sent: the daemon, which reads the
        closing connection as "done sending", would still run it.
        """
        [daemon] = yield self.daemons(1)
        client = self.client([daemon])
        yield waitFor(lambda: client.connectedCount() == 1, "the connection")
        stopping = client.stopService()
        f = yield self.assertFailure(client.call("sleep", 2), errors.NotConnected)
        self.assertEqual(f.message, "the client is not running")
        yield stopping
        yield waitFor(lambda: not daemon.factory.connections, "the connection to close")
        self.assertEqual(daemon.pool.stats()["busy"], 0)

    @inlineCallbacks
    def test_failoverAndRestart(self) -> Any:
        """
        When a daemon dies, its in-flight calls fail with
        L{errors.ConnectionLost} and new calls go to the other; once it is
        back on its port the client reconnects and uses it again.
        """
        a, b = yield self.daemons(2)
        client = self.client([a, b])
        yield waitFor(lambda: client.connectedCount() == 2, "both connections")
        inFlight = [client.call("sleep", 5) for _ in range(2)]
        yield a.kill()
        results = yield gatherResults([d.addErrback(lambda f: f.trap(errors.ConnectionLost)) for d in inFlight])
        self.assertIn(errors.ConnectionLost, results)
        pids = yield gatherResults([client.call("pid") for _ in range(4)])
        self.assertEqual(set(pids), b.pool.pids())
        yield a.start()
        yield waitFor(lambda: client.connectedCount() == 2, "the reconnection")
        pids = yield gatherResults([client.call("pid") for _ in range(4)])
        self.assertEqual(set(pids), a.pool.pids() | b.pool.pids())

    @inlineCallbacks
    def test_callsWaitForADaemon(self) -> Any:
        """
        A call made while no daemon is up waits and runs once one is, with
        its progress callback.
        """
        (a,) = yield self.daemons(1)
        yield a.kill()
        client = self.client([a])
        d = client.call("add", 1, 2)
        seen: list[Any] = []
        withProgress = client.callWith("steps", [2, 0.01], progress=seen.append)
        yield a.start()
        self.assertEqual((yield d), 3)
        self.assertEqual((yield withProgress), 2)
        self.assertEqual(seen, [{"done": 1, "of": 2}, {"done": 2, "of": 2}])

    @inlineCallbacks
    def test_waitingIsBounded(self) -> Any:
        """
        Waiting calls fail with L{errors.NotConnected} after
        C{waitTimeout}, past C{maxWaiting}, and at once with C{failFast};
        a waiting call can be cancelled.
        """
        (a,) = yield self.daemons(1)
        yield a.kill()
        client = self.client([a], waitTimeout=0.3, maxWaiting=2)
        first = client.call("add", 1, 2)
        second = client.call("add", 1, 2)
        e = yield self.assertFailure(client.call("add", 1, 2), errors.NotConnected)
        self.assertIn("2 calls are already waiting", e.message)
        second.cancel()
        yield self.assertFailure(second, CancelledError)
        e = yield self.assertFailure(first, errors.NotConnected)
        self.assertEqual(e.message, "no daemon could be reached within 0.3 seconds")
        fast = self.client([a], failFast=True)
        yield self.assertFailure(fast.call("add", 1, 2), errors.NotConnected)

    @inlineCallbacks
    def test_stopFailsWaiting(self) -> Any:
        """
        Stopping the client fails the calls waiting for a connection.
        """
        (a,) = yield self.daemons(1)
        yield a.kill()
        client = self.client([a])
        d = client.call("add", 1, 2)
        yield client.stopService()
        e = yield self.assertFailure(d, errors.NotConnected)
        self.assertEqual(e.message, "the client was stopped")
        yield self.assertFailure(client.call("add", 1, 2), errors.NotConnected)


class RealDaemonsTests(TwistdMixin, TestCase):
    """
    The reconnecting client over two real C{twistd taskd} processes.
    """

    @inlineCallbacks
    def test_oneDaemonKilled(self) -> Any:
        """
        With one of two daemons killed with SIGKILL, every call still gets
        served by the other; the dead daemon's workers exit on their own.
        """
        ports, workers, processes = [], [], []
        for _ in range(2):
            daemon = self.spawn("--listen", "tcp:0:interface=127.0.0.1", "--workers", "1")
            m = yield daemon.waitFor(rb"starting on (\d+)")
            yield daemon.waitFor(rb"pool ready")
            ports.append(int(m.group(1)))
            workers.append([int(p) for p in re.findall(rb"worker (\d+) started", daemon.output)])
            processes.append((self.process, daemon))
        client = ReconnectingClient(
            reactor,
            [f"tcp:127.0.0.1:{p}" for p in ports],
            retryPolicy=backoffPolicy(initialDelay=0.05, maxDelay=0.2, jitter=lambda: 0),
        )
        client.startService()
        self.addCleanup(client.stopService)
        yield waitFor(lambda: client.connectedCount() == 2, "both connections")
        pids = yield gatherResults([client.call("pid") for _ in range(4)])
        self.assertEqual(sorted(set(pids)), sorted(workers[0] + workers[1]))

        process, daemon = processes[0]
        process.signalProcess("KILL")
        yield daemon.ended
        self.addCleanup(self.killAll, workers[0])
        yield waitFor(lambda: client.connectedCount() == 1, "the dead connection to go")
        pids = yield gatherResults([client.call("pid") for _ in range(10)])
        self.assertEqual(set(pids), set(workers[1]))
        yield waitFor(lambda: not any(alive(p) for p in workers[0]), "orphaned workers to exit")

    def killAll(self, pids: list[int]) -> None:
        for pid in pids:
            if alive(pid):
                os.kill(pid, 9)

