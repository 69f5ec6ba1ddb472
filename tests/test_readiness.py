"""
Tests for L{taskd.gate}: a daemon binds its ports at start but accepts no
connection (and so answers no hello, no health check, no submit) until its
jobs' journal is open.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.application import strports
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from taskd import tap
from taskd.pool import ProcessPool
from taskd.server import TaskServerFactory

from tests.pgserver import PostgreSQLServer, freshDatabase, skipReason
from tests.test_goodbye import _Lines
from tests.test_pool import waitFor
from tests.test_reliability import DaemonTestCase


class SlowJournal:
    """
    The jobs of a daemon whose journal opens when the test says so.
    """

    def __init__(self) -> None:
        self.opened: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        return self.opened

    def stop(self) -> Deferred[None]:
        return succeed(None)


class GateTests(TestCase):
    """
    L{tap.TaskdService} with its listener held by its gate, on the real
    reactor and a real port.
    """

    @inlineCallbacks
    def test_acceptsOnceReady(self) -> Any:
        """
        The port is bound at start, and a client can connect (the kernel
        queues it), but the daemon does not accept it, and its health check
        says it is starting, until the journal is open; then the queued
        connection is served.
        """
        pool = ProcessPool(reactor, tasks=["taskd.examples"], workers=1, killGrace=1.0)
        factory = TaskServerFactory(pool)
        jobs = SlowJournal()
        service = tap.TaskdService(reactor, pool, factory, ["tcp:0"], jobs=jobs)  # type: ignore[arg-type]
        listener = strports.service("tcp:0:interface=127.0.0.1", factory, reactor=reactor)
        listener.endpoint = service.gate.hold(listener.endpoint)
        service.addListener(listener)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        (port,) = service.gate.ports
        client = _Lines()
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: client)
        )
        client.transport.write(b'{"type":"hello"}\n')
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(factory.connections, set())
        self.assertEqual(client.data, b"")
        self.assertEqual(service.healthProblem(), "starting: the jobs' journal is not open yet")
        jobs.opened.callback(None)
        yield client.waitLines(1)
        self.assertEqual(json.loads(client.lines()[0])["type"], "hello")
        self.assertIsNone(service.healthProblem())
        client.transport.loseConnection()
        yield client.closed


class JournalNotOpenTests(DaemonTestCase):
    """
    A real daemon whose PostgreSQL journal cannot open yet (another session
    holds the lock its schema check takes).
    """

    def setUp(self) -> None:
        reason = skipReason()
        if reason is not None:
            raise SkipTest(reason)

    @inlineCallbacks
    def test_submitWaitsForTheJournal(self) -> Any:
        """
        A submit sent while the journal is not open is not refused with
        C{stopping} (as it was when the daemon listened first): it waits
        in the port's queue and is accepted once the journal is open.
        """
        import psycopg

        pg = PostgreSQLServer()
        self.addCleanup(pg.destroy)
        pg.start()
        dsn = freshDatabase(pg)
        lock = psycopg.connect(dsn, autocommit=True)
        self.addCleanup(lock.close)
        lock.execute("SELECT pg_advisory_lock(hashtext('taskd_journal'))")
        daemon = yield self.startDaemon("--journal", dsn)
        client = _Lines()
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(Factory.forProtocol(lambda: client))
        self.addCleanup(lambda: client.transport.abortConnection() if client.transport.connected else None)
        client.transport.write(b'{"type":"submit","function":"add","args":[1,2],"id":1}\n')
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(client.data, b"")
        self.assertNotIn(b"taskd ready", daemon.output)
        lock.execute("SELECT pg_advisory_unlock(hashtext('taskd_journal'))")
        yield client.waitLines(1)
        reply = json.loads(client.lines()[0])
        self.assertEqual((reply["type"], reply["id"]), ("accepted", 1))
        yield waitFor(lambda: b"taskd ready" in daemon.output, "the daemon to say it is ready")
