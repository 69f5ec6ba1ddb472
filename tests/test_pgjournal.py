"""
Tests for L{taskd.pgjournal}: what a journal shared by several daemons does
beyond L{taskd.journal.Journal} (whose suite, in tests/test_journal.py, runs
against both backends), on throwaway PostgreSQL servers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from typing import Any

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from taskd import errors
from taskd.jobs import ANSWERS_PER_TURN
from taskd.journal import CANCELLED, DONE, INTERRUPTED, QUEUED, RUNNING, Added, JournalError
from tests.fakes import PoolTestsMixin
from tests.pgserver import PostgreSQLServer, dropDatabase, freshDatabase, skipReason
from tests.test_handback import turn
from tests.test_jobs import START, registry
from tests.test_journal import record
from tests.test_pool import waitFor


def sleep(seconds: float) -> Any:
    return deferLater(reactor, seconds, lambda: None)


class PostgreSQLJournalTests(TestCase):
    """
    Claims, leases, cancels and wake-ups between journals (daemons) sharing
    one database.
    """

    skip = skipReason()

    def setUp(self) -> None:
        self.dsn = freshDatabase()
        self.addCleanup(dropDatabase, self.dsn)

    @inlineCallbacks
    def journal(self, dsn: str | None = None, **kw: Any) -> Any:
        from taskd.pgjournal import PostgreSQLJournal

        journal = PostgreSQLJournal(dsn or self.dsn, reactor, **kw)
        self.addCleanup(journal.close)
        yield journal.open()
        return journal

    @inlineCallbacks
    def test_claimsNeverOverlap(self) -> Any:
        """
        Two daemons claiming at once in small batches take every due job
        exactly once between them, oldest first, marked running with the
        claimer as owner; a job whose time has not come is not claimed.
        """
        a = yield self.journal(owner="a")
        b = yield self.journal(owner="b")
        yield gatherResults([a.add(record(n)) for n in range(200)])
        yield a.add(evolve(record(999), runAt=10_000.0))
        first = yield b.claim(3, 5000.0)
        self.assertEqual([r.id for r in first], ["job0", "job1", "job2"])
        taken: dict[str, list[str]] = {"a": [], "b": [r.id for r in first]}

        @inlineCallbacks
        def drain(journal: Any) -> Any:
            while True:
                claimed = yield journal.claim(7, 5000.0)
                if not claimed:
                    return
                self.assertEqual({r.state for r in claimed}, {RUNNING})
                self.assertEqual({r.started for r in claimed}, {5000.0})
                taken[journal.owner].extend(r.id for r in claimed)

        yield gatherResults([drain(a), drain(b)])
        everything = taken["a"] + taken["b"]
        self.assertEqual(sorted(everything), sorted(f"job{n}" for n in range(200)))
        self.assertEqual(len(set(everything)), 200)
        self.assertEqual((yield a.get("job999")).state, QUEUED)

    @inlineCallbacks
    def test_expiredLease(self) -> Any:
        """
        A daemon that stops renewing (it died): once its lease expires,
        another daemon's reap queues again the job whose task opts into
        retries and ends the other C{interrupted}, saying why; the dead
        daemon's late update is refused (the job keeps its one final
        state).
        """
        dead = yield self.journal(owner="dead", lease=0.3)
        alive = yield self.journal(owner="alive", lease=0.3)
        yield gatherResults([dead.add(record(1)), dead.add(evolve(record(2), function="safe"))])
        claimed = yield dead.claim(10, 500.0)
        self.assertEqual(len(claimed), 2)
        self.assertEqual((yield alive.reap(lambda f: 0, 600.0)), (0, 0))
        yield sleep(0.5)
        counts = yield alive.reap(lambda f: 2 if f == "safe" else 0, 600.0)
        self.assertEqual(counts, (1, 1))
        lost = yield alive.get("job1")
        self.assertEqual((lost.state, lost.finished), (INTERRUPTED, 600.0))
        self.assertIn(b"its lease expired", lost.error)
        self.assertEqual((yield alive.get("job2")).state, QUEUED)
        yield dead.update(evolve(claimed[0], state=DONE, finished=700.0, result=b"2"))
        self.assertEqual((yield alive.get("job1")).state, INTERRUPTED)
        again = yield alive.claim(10, 800.0)
        self.assertEqual([r.id for r in again], ["job2"])

    @inlineCallbacks
    def test_renewalNotBehindReads(self) -> Any:
        """
        A lease's renewal asked while hundreds of reads wait (a burst of
        C{job} requests) is written after one batch of them at most
        (L{READS_PER_BATCH}), not after all: a daemon asked about many jobs
        keeps its leases (renewed every third of a lease), and nobody
        reaps the jobs it runs.
        """
        from taskd._pgconnection import READS_PER_BATCH

        journal = yield self.journal(owner="busy")
        yield journal.add(record(1))
        yield journal.claim(1, 500.0)
        answered: list[int] = []
        gets = [journal.get("job1").addCallback(lambda r, k=k: answered.append(k) or r) for k in range(300)]
        renewedAfter: list[int] = []
        held = yield journal.renew().addCallback(lambda held: renewedAfter.append(len(answered)) or held)
        self.assertEqual(held, [("job1", False)])
        records = yield gatherResults(gets)
        self.assertEqual({r.state for r in records}, {RUNNING})
        self.assertEqual(answered, list(range(300)))
        self.assertLessEqual(renewedAfter[0], 2 * READS_PER_BATCH)

    @inlineCallbacks
    def test_renewKeepsTheLease(self) -> Any:
        """
        Renewed every third of its length, a lease never expires: nobody
        reaps the job.
        """
        owner = yield self.journal(owner="busy", lease=0.3)
        other = yield self.journal(owner="other", lease=0.3)
        yield owner.add(record(1))
        yield owner.claim(1, 500.0)
        for _ in range(6):
            yield sleep(0.1)
            held = yield owner.renew()
            self.assertEqual(held, [("job1", False)])
            self.assertEqual((yield other.reap(lambda f: 0, 600.0)), (0, 0))

    @inlineCallbacks
    def test_cancelAnywhere(self) -> Any:
        """
        Any daemon cancels a queued job at once; a running one is flagged
        for its owner, which hears it by C{NOTIFY} and by its next lease
        renewal.
        """
        runner = yield self.journal(owner="runner")
        asker = yield self.journal(owner="asker")
        heard: list[str] = []
        runner.notified = heard.append
        yield gatherResults([asker.add(record(1)), asker.add(record(2))])
        (claimed,) = yield runner.claim(1, 500.0)
        self.assertEqual(claimed.id, "job1")
        queued = yield asker.cancel("job2", 600.0)
        self.assertEqual((queued.state, queued.finished), (CANCELLED, 600.0))
        running = yield asker.cancel("job1", 600.0)
        self.assertEqual(running.state, RUNNING)
        yield waitFor(lambda: "cancel:job1" in heard, "the cancel notification")
        self.assertIn("end:job2", heard)
        self.assertEqual((yield runner.renew()), [("job1", True)])
        self.assertIsNone((yield asker.cancel("nope", 600.0)))

    @inlineCallbacks
    def test_notifications(self) -> Any:
        """
        Every daemon hears of a new job (C{new}) and of a job's end
        (C{end:ID}), on the reactor thread.
        """
        a = yield self.journal()
        b = yield self.journal()
        heard: list[tuple[str, bool]] = []
        b.notified = lambda p: heard.append((p, threading.current_thread() is threading.main_thread()))
        yield a.add(record(1))
        yield waitFor(lambda: ("new", True) in heard, "the new job notification")
        yield a.update(evolve(record(1), state=DONE, finished=1.0))
        yield waitFor(lambda: ("end:job1", True) in heard, "the end notification")
        ended = yield b.ended(["job1", "nope"])
        self.assertEqual([r.id for r in ended], ["job1"])

    @inlineCallbacks
    def test_offTheReactorThread(self) -> Any:
        """
        Every statement runs on the journal's thread, never the reactor's.
        """
        threads: set[int] = set()

        def note(db: Any) -> None:
            threads.add(threading.get_ident())

        from taskd.pgjournal import PG_MIGRATIONS

        journal = yield self.journal(migrations=(*PG_MIGRATIONS, note))
        self.assertEqual(len(threads), 1)
        self.assertNotIn(threading.get_ident(), threads)
        self.assertEqual((yield journal.schemaVersion()), 2)

    @inlineCallbacks
    def test_newerSchema(self) -> Any:
        """
        A database of a newer schema than this taskd knows is not used:
        the error says which versions.
        """
        import psycopg

        first = yield self.journal()
        yield first.close()
        with psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute("UPDATE taskd_schema SET version = 99")
        from taskd.pgjournal import PostgreSQLJournal

        journal = PostgreSQLJournal(self.dsn, reactor)
        failure = yield self.assertFailure(journal.open(), JournalError)
        self.assertIn("has schema version 99, written by a newer taskd; this one reads "
                      "versions up to 1", str(failure))

    @inlineCallbacks
    def test_unreachable(self) -> Any:
        """
        While the server is down, an add fails at once with
        L{errors.JournalUnavailable} saying so, and a job's change of state
        waits; once the server is back, the journal reconnects, the change
        is written, and adds work again.  Nothing acknowledged is lost.
        """
        server = PostgreSQLServer()
        self.addCleanup(server.destroy)
        server.start()
        dsn = freshDatabase(server)
        journal = yield self.journal(dsn)
        yield journal.add(record(1))
        server.stop()
        update = journal.update(evolve(record(1), state=DONE, finished=5.0, result=b"2"))
        failure = yield self.assertFailure(journal.add(record(2)), errors.JournalUnavailable)
        self.assertIn("the jobs' journal (PostgreSQL) is unreachable", str(failure))
        self.assertFalse(update.called)
        failure = yield self.assertFailure(journal.get("job1"), errors.JournalUnavailable)
        server.start()
        yield update
        self.assertEqual(journal.reconnects, 1)
        self.assertEqual((yield journal.get("job1")).state, DONE)
        yield journal.add(record(2))
        self.assertEqual((yield journal.size()), 2)

    @inlineCallbacks
    def test_notOpen(self) -> Any:
        """
        Read before it is open (or once it is closing), the journal answers
        with L{errors.JournalUnavailable} saying so, rather than raising.
        """
        from taskd.pgjournal import PostgreSQLJournal

        journal = PostgreSQLJournal(self.dsn, reactor)
        failure = yield self.assertFailure(journal.get("job1"), errors.JournalUnavailable)
        self.assertEqual(
            str(failure), "the jobs' journal is not open (the daemon is starting or stopping)"
        )


#: PostgreSQL's answer to a C{COMMIT} that committed (CommandComplete).
COMMITTED = b"C\x00\x00\x00\x0bCOMMIT\x00"


class _Relay(Protocol):
    """
    One side of a L{CommitLosingProxy}'s connection: what it reads, its
    peer writes.
    """

    peer: _Relay | None = None
    proxy: CommitLosingProxy

    def dataReceived(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None:
            self.peer.transport.loseConnection()  # type: ignore[union-attr]


class _FromServer(_Relay):
    def dataReceived(self, data: bytes) -> None:
        if self.proxy.armed and COMMITTED in data:
            # Committed, and the client never learns it.
            self.proxy.armed = False
            self.proxy.lost += 1
            self.transport.abortConnection()  # type: ignore[union-attr]
            assert self.peer is not None
            self.peer.transport.abortConnection()  # type: ignore[union-attr]
            return
        super().dataReceived(data)


class _FromClient(_Relay):
    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]
        server = _FromServer()
        server.proxy, server.peer, self.peer = self.proxy, self, server

        def connected(_: object) -> None:
            self.transport.resumeProducing()  # type: ignore[union-attr]

        endpoint = UNIXClientEndpoint(reactor, self.proxy.socket)
        connectProtocol(endpoint, server).addCallbacks(
            connected, lambda _: self.transport.abortConnection()  # type: ignore[union-attr]
        )


class CommitLosingProxy(Factory):
    """
    A proxy in front of a PostgreSQL server's unix socket that, once
    C{armed}, drops the connection whose transaction just committed
    instead of passing on the C{COMMIT}'s answer: the client loses the
    connection during a commit that took place.
    """

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.armed = False
        self.lost = 0

    def buildProtocol(self, addr: Any) -> _FromClient:
        relay = _FromClient()
        relay.proxy = self
        return relay


class CommitLostTests(TestCase):
    """
    The connection lost during the C{COMMIT} of an add that was committed:
    its caller must not be told it failed (a submit refused would leave a
    job behind, which runs).
    """

    skip = skipReason()

    @inlineCallbacks
    def test_addCommittedAsTheConnectionWasLost(self) -> Any:
        """
        An add whose connection is lost as it commits is kept and run again
        once the journal has reconnected; the second run finds the job the
        first one committed, and the caller is told it was added, once.
        """
        import psycopg

        from taskd.pgjournal import PostgreSQLJournal
        from tests.pgserver import sharedServer

        dsn = freshDatabase()
        self.addCleanup(dropDatabase, dsn)
        server = sharedServer()
        here = tempfile.mkdtemp(prefix="taskd-proxy-")
        self.addCleanup(shutil.rmtree, here, True)
        proxy = CommitLosingProxy(os.path.join(server.dir, ".s.PGSQL.5432"))
        port = reactor.listenUNIX(os.path.join(here, ".s.PGSQL.5432"), proxy)
        self.addCleanup(port.stopListening)
        journal = PostgreSQLJournal(dsn.replace(f"host={server.dir}", f"host={here}"), reactor, listen=False)
        self.addCleanup(journal.close)
        yield journal.open()
        proxy.armed = True
        added = yield journal.add(record(1))
        self.assertEqual(added, Added("job1", False))
        self.assertEqual((proxy.lost, journal.reconnects), (1, 1))
        with psycopg.connect(dsn, autocommit=True) as db:
            rows = db.execute("SELECT id FROM taskd_jobs").fetchall()
        self.assertEqual(rows, [("job1",)])


class InTurn:
    """
    A thread pool that runs what it is given at once, in the caller's
    thread (the journal's statements, on a real server): its results reach
    the reactor, as from a thread, in the next turn.
    """

    def callInThreadWithCallback(self, onResult: Any, f: Any, *args: Any, **kw: Any) -> None:
        try:
            result = f(*args, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def stop(self) -> None:
        pass


class HandBackTests(PoolTestsMixin, SynchronousTestCase):
    """
    The answers of a group commit on PostgreSQL told a slice a reactor
    turn, as on SQLite: a real server, its statements run in the test's
    thread, above a pool of fake workers, turned one reactor turn at a time.
    """

    skip = skipReason()

    def setUp(self) -> None:
        self.dsn = freshDatabase()
        self.addCleanup(dropDatabase, self.dsn)

    def journal(self, clock: Any, **kw: Any) -> Any:
        from taskd.pgjournal import PostgreSQLJournal

        class InTurnJournal(PostgreSQLJournal):
            def _startThread(self) -> None:
                self._threadPool = InTurn()  # type: ignore[assignment]

        # Results "from the thread" come in the next turn.
        clock.callFromThread = lambda f, *a, **k: clock.callLater(0, f, *a, **k)
        journal = InTurnJournal(self.dsn, clock, listen=False, **kw)
        self.addCleanup(lambda: (journal.close(), clock.advance(0)))
        return journal

    def turns(self, clock: Any, told: list[Any], n: int) -> list[int]:
        """
        Turn C{clock} until C{told} holds C{n} answers (50 turns at most).

        @return: how many C{told} held after each turn.
        """
        counts: list[int] = []
        while len(told) < n and len(counts) < 50:
            turn(clock)
            counts.append(len(told))
        return counts

    def test_submitsAnsweredASliceATurn(self) -> None:
        """
        The C{accepted} answers of a large group of submits committed in
        one transaction go back over several reactor turns,
        L{ANSWERS_PER_TURN} a turn, each slice inside one hold of the
        pool's write batch, in order, none lost or doubled: the slicing
        of L{taskd.jobs.JobService}, the same on both journals.
        """
        from taskd.sharedjobs import SharedJobService

        pool, clock = self.startedPool(1, registry=registry())
        clock.advance(START - clock.seconds())
        ids = iter(f"j{n}" for n in range(1, 1000))
        jobs = SharedJobService(pool, self.journal(clock), newId=lambda: next(ids), window=0)
        started = jobs.start()
        clock.advance(0)
        self.successResultOf(started)
        told: list[Any] = []
        depths: list[int] = []

        def tell(reply: Any) -> None:
            depths.append(pool.writes.depth)
            told.append(reply)

        n = 3 * ANSWERS_PER_TURN + 3
        for i in range(n):
            jobs.take("add", b'{"args":[%d,1]}' % (i,), tell, runAt=START + 60)
        commits = jobs.journal.commits
        counts = self.turns(clock, told, n)
        # One turn journals the group, one commits it, one hands back the
        # commit's result: its first slice.
        self.assertEqual(counts, [0, 0] + [ANSWERS_PER_TURN * k for k in (1, 2, 3)] + [n])
        turn(clock)
        self.assertEqual(told, [(f"j{i + 1}", False) for i in range(n)])
        self.assertEqual(depths, [1] * n)
        self.assertEqual(jobs.journal.commits, commits + 1)
        size = jobs.journal.size()
        clock.advance(0)
        self.assertEqual(self.successResultOf(size), n)
        jobs.stop()
        clock.advance(0)
