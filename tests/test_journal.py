"""
Tests for L{taskd.journal}: the SQLite journal of background jobs.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from taskd._handback import HAND_BACK
from taskd._sqliteschema import createV1
from taskd.journal import (
    DONE,
    IN_MEMORY,
    MIGRATIONS,
    QUEUED,
    RUNNING,
    SCHEDULED,
    Added,
    JobRecord,
    JournalError,
    SQLiteJournal,
)


def record(n: int, state: str = QUEUED, key: str | None = None) -> JobRecord:
    return JobRecord(f"job{n}", "add", b'{"args":[%d,1]}' % (n,), state, 100.0 + n, 100.0 + n, key)


class TurnClock(Clock):
    """
    A L{Clock} that also runs one turn as a reactor does: the calls due
    when the turn starts, not those they add (which L{Clock.advance}
    runs too).
    """

    def turn(self) -> None:
        now = self.seconds()
        for call in [c for c in self.calls if c.getTime() <= now]:
            if call in self.calls:
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


class SQLiteJournalTests(SynchronousTestCase):
    """
    The journal with its statements run at once (C{threaded=False}) on a
    L{Clock}: exact about what is committed when.
    """

    def journal(self, path: str | None = None, **kw: Any) -> tuple[SQLiteJournal, TurnClock]:
        clock = TurnClock()
        journal = SQLiteJournal(path or self.mktemp(), clock, threaded=False, **kw)
        self.addCleanup(journal.close)
        return journal, clock

    def test_newFile(self) -> None:
        """
        A new journal file gets the latest schema, in WAL mode, and holds
        no jobs.
        """
        path = self.mktemp()
        journal, _ = self.journal(path)
        self.assertEqual(self.successResultOf(journal.open()), [])
        self.assertEqual(self.successResultOf(journal.schemaVersion()), len(MIGRATIONS))
        self.successResultOf(journal.close())
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_groupCommit(self) -> None:
        """
        Writes asked for in one turn of the reactor are committed in one
        transaction, after it; each C{Deferred} fires only then.
        """
        journal, clock = self.journal()
        self.successResultOf(journal.open())
        ds = [journal.add(record(n)) for n in range(100)]
        for d in ds:
            self.assertNoResult(d)
        self.assertEqual(journal.commits, 0)
        clock.advance(0)
        self.assertEqual(journal.commits, 1)
        self.assertEqual(journal.writes, 100)
        self.assertEqual(self.successResultOf(ds[7]), Added("job7", False))

    def test_handedBackInSlices(self) -> None:
        """
        A commit's answers are told L{HAND_BACK} a reactor turn, oldest
        first, so that a big batch does not hold the reactor; the next
        commit does not wait for them, and its answers come after theirs.
        """
        journal, clock = self.journal()
        self.successResultOf(journal.open())
        told: list[str] = []
        for n in range(2 * HAND_BACK + 3):
            journal.add(record(n)).addCallback(lambda added: told.append(added.id))
        clock.turn()
        self.assertEqual(journal.commits, 1)
        self.assertEqual(told, [f"job{n}" for n in range(HAND_BACK)])
        later = journal.add(record(100)).addCallback(lambda added: told.append(added.id))
        clock.turn()
        self.assertEqual(journal.commits, 2)
        self.assertEqual(len(told), 2 * HAND_BACK)
        clock.turn()
        self.assertEqual(told, [f"job{n}" for n in range(2 * HAND_BACK + 3)] + ["job100"])
        self.successResultOf(later)
        # The turn after the last slice tells nothing, and leaves no timer.
        clock.turn()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_closeTellsEveryone(self) -> None:
        """
        Closing tells every caller whose write was committed before the
        journal says it is closed.
        """
        journal, clock = self.journal()
        self.successResultOf(journal.open())
        ds = [journal.add(record(n)) for n in range(3 * HAND_BACK)]
        clock.turn()
        self.assertNoResult(ds[-1])
        closed = journal.close()
        self.successResultOf(closed)
        self.assertEqual(self.successResultOf(ds[-1]), Added(f"job{3 * HAND_BACK - 1}", False))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_reopen(self) -> None:
        """
        Reopened, a journal gives back the jobs that had not ended, oldest
        first, as they were written; ended ones stay readable with
        L{SQLiteJournal.get}.
        """
        path = self.mktemp()
        journal, clock = self.journal(path)
        self.successResultOf(journal.open())
        for n in range(4):
            journal.add(record(n, SCHEDULED if n == 2 else QUEUED))
        clock.advance(0)
        journal.update(evolve(record(1), state=DONE, finished=200.0, result=b"2"))
        journal.update(evolve(record(3), state=RUNNING, started=150.0))
        clock.advance(0)
        self.successResultOf(journal.close())
        again, _ = self.journal(path)
        records = self.successResultOf(again.open())
        self.assertEqual([(r.id, r.state) for r in records], [("job0", QUEUED), ("job2", SCHEDULED), ("job3", RUNNING)])
        self.assertEqual(records[2].started, 150.0)
        self.assertEqual(records[0].payload, b'{"args":[0,1]}')
        done = self.successResultOf(again.get("job1"))
        assert done is not None
        self.assertEqual((done.state, done.finished, done.result), (DONE, 200.0, b"2"))
        self.assertIsNone(self.successResultOf(again.get("nope")))

    def test_key(self) -> None:
        """
        A job whose key is held by a job in the journal is not added: the
        answer is the other job's id, even within one transaction.
        """
        journal, clock = self.journal()
        self.successResultOf(journal.open())
        first = journal.add(record(1, key="k"))
        second = journal.add(record(2, key="k"))
        other = journal.add(record(3, key="other"))
        clock.advance(0)
        self.assertEqual(
            [self.successResultOf(d) for d in (first, second, other)],
            [Added("job1", False), Added("job1", True), Added("job3", False)],
        )
        self.assertIsNone(self.successResultOf(journal.get("job2")))

    def test_addMany(self) -> None:
        """
        L{SQLiteJournal.addMany} adds a group of jobs in one write of the
        next commit, in their order: jobs with and without keys mixed, a
        key taken earlier in the group or before it answered with the
        holder's id, each job's row in the group's order (a reopened
        journal gives them back in it).
        """
        path = self.mktemp()
        journal, clock = self.journal(path)
        self.successResultOf(journal.open())
        journal.add(record(0, key="old"))
        clock.advance(0)
        group = [
            record(1), record(2), record(3, key="k"), record(4), record(5, key="k"),
            record(6, key="old"), record(7),
        ]
        d = journal.addMany(group)
        self.assertNoResult(d)
        clock.advance(0)
        self.assertEqual((journal.commits, journal.writes), (2, 2))
        self.assertEqual(self.successResultOf(d), [
            Added("job1", False), Added("job2", False), Added("job3", False), Added("job4", False),
            Added("job3", True), Added("job0", True), Added("job7", False),
        ])
        self.successResultOf(journal.close())
        again, _ = self.journal(path)
        records = self.successResultOf(again.open())
        self.assertEqual([r.id for r in records], ["job0", "job1", "job2", "job3", "job4", "job7"])
        self.assertEqual(records[3], group[2])

    def test_addManyFails(self) -> None:
        """
        A group that cannot be written (a job id taken) fails as one:
        nothing of it is added, and the journal goes on.
        """
        journal, clock = self.journal()
        self.successResultOf(journal.open())
        journal.add(record(1))
        clock.advance(0)
        failed = journal.addMany([record(2), record(1)])
        clock.advance(0)
        self.failureResultOf(failed, JournalError)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.IntegrityError)), 1)
        self.assertIsNone(self.successResultOf(journal.get("job2")))
        later = journal.add(record(3))
        clock.advance(0)
        self.assertEqual(self.successResultOf(later), Added("job3", False))

    def test_updateMany(self) -> None:
        """
        L{SQLiteJournal.updateMany} writes each job's change in one write
        of the next commit.
        """
        journal, clock = self.journal()
        self.successResultOf(journal.open())
        journal.addMany([record(n) for n in range(3)])
        clock.advance(0)
        d = journal.updateMany([
            evolve(record(0), state=RUNNING, started=150.0),
            evolve(record(2), state=DONE, finished=160.0, result=b"3"),
        ])
        self.assertNoResult(d)
        clock.advance(0)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual((journal.commits, journal.writes), (2, 2))
        states = [self.successResultOf(journal.get(f"job{n}")) for n in range(3)]
        self.assertEqual(
            [(r.state, r.started, r.finished, r.result) for r in states if r is not None],
            [(RUNNING, 150.0, None, None), (QUEUED, None, None, None), (DONE, None, 160.0, b"3")],
        )

    def test_maxJobs(self) -> None:
        """
        Past C{maxJobs} rows, the jobs that ended first are removed as new
        ones are added; jobs that have not ended never are.
        """
        journal, clock = self.journal(maxJobs=3)
        self.successResultOf(journal.open())
        for n in range(3):
            journal.add(record(n))
        clock.advance(0)
        for n, finished in ((0, 300.0), (1, 200.0)):
            journal.update(evolve(record(n), state=DONE, finished=finished))
        journal.add(record(3))
        clock.advance(0)
        self.assertEqual(self.successResultOf(journal.size()), 3)
        self.assertIsNone(self.successResultOf(journal.get("job1")))
        journal.add(record(4))
        journal.add(record(5))
        clock.advance(0)
        # Only unfinished jobs are left to remove: none is.
        self.assertEqual(self.successResultOf(journal.size()), 4)
        self.assertEqual(
            [self.successResultOf(journal.get(f"job{n}")) is None for n in range(6)],
            [True, True, False, False, False, False],
        )

    def test_prune(self) -> None:
        """
        L{SQLiteJournal.prune} removes at most C{limit} jobs that ended
        before the time given, the oldest first.
        """
        journal, clock = self.journal()
        self.successResultOf(journal.open())
        for n in range(5):
            journal.add(record(n))
        clock.advance(0)
        for n in range(4):
            journal.update(evolve(record(n), state=DONE, finished=1000.0 + n))
        first = journal.prune(1002.5, 2)
        second = journal.prune(1002.5, 2)
        clock.advance(0)
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (2, 1))
        self.assertEqual(self.successResultOf(journal.size()), 2)

    def test_newerSchema(self) -> None:
        """
        A journal of a newer schema than this taskd knows is not opened:
        the error says which versions.
        """
        path = self.mktemp()
        db = sqlite3.connect(path)
        db.execute("PRAGMA user_version = 99")
        db.close()
        journal, _ = self.journal(path)
        failure = self.failureResultOf(journal.open(), JournalError)
        self.assertEqual(
            str(failure.value),
            f"the journal {path!r} has schema version 99, written by a newer taskd; "
            "this one reads versions up to 1",
        )

    def test_migrations(self) -> None:
        """
        Opening a journal runs the migrations from its version on, in
        order, and records the version reached; jobs already in it stay.
        """
        path = self.mktemp()
        journal, clock = self.journal(path)
        self.successResultOf(journal.open())
        journal.add(record(1))
        clock.advance(0)
        self.successResultOf(journal.close())

        def addNote(db: sqlite3.Connection) -> None:
            db.execute("ALTER TABLE jobs ADD COLUMN note TEXT DEFAULT 'v2'")

        newer, _ = self.journal(path, migrations=(*MIGRATIONS, addNote))
        self.assertEqual([r.id for r in self.successResultOf(newer.open())], ["job1"])
        self.assertEqual(self.successResultOf(newer.schemaVersion()), 2)
        self.successResultOf(newer.close())
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT id, note FROM jobs").fetchall(), [("job1", "v2")])

    def test_locked(self) -> None:
        """
        A second journal on a file in use (a second daemon given the same
        journal) is refused, saying so.
        """
        path = self.mktemp()
        journal, _ = self.journal(path)
        self.successResultOf(journal.open())
        second, _ = self.journal(path)
        failure = self.failureResultOf(second.open(), JournalError)
        self.assertIn("is in use by another daemon", str(failure.value))
        self.successResultOf(journal.close())
        third, _ = self.journal(path)
        self.assertEqual(self.successResultOf(third.open()), [])

    def test_inMemory(self) -> None:
        """
        L{IN_MEMORY} keeps jobs for as long as the journal is open.
        """
        journal, clock = self.journal(IN_MEMORY)
        self.successResultOf(journal.open())
        journal.add(record(1))
        clock.advance(0)
        found = self.successResultOf(journal.get("job1"))
        self.assertEqual(found, record(1))

    def test_closeCommitsPending(self) -> None:
        """
        Closing commits the writes asked for first; a write after that is
        refused.
        """
        path = self.mktemp()
        journal, _ = self.journal(path)
        self.successResultOf(journal.open())
        added = journal.add(record(1))
        self.successResultOf(journal.close())
        self.assertEqual(self.successResultOf(added), Added("job1", False))
        self.assertRaises(JournalError, journal.add, record(2))
        again, _ = self.journal(path)
        self.assertEqual([r.id for r in self.successResultOf(again.open())], ["job1"])


class FailedCommitTests(SynchronousTestCase):
    """
    A group commit that fails (a constraint violated, a full disk) changes
    nothing: not the file, and not the count of rows the journal keeps to
    enforce C{maxJobs}, so that no job that ended is removed before its
    time, and the journal does not grow past C{maxJobs}.
    """

    def journal(self, **kw: Any) -> tuple[SQLiteJournal, TurnClock, list[sqlite3.Connection]]:
        """
        @return: an open journal, its clock, and (in a list) its
            connection, caught by its schema's migration, to fill its disk
            with C{PRAGMA max_page_count}.
        """
        connections: list[sqlite3.Connection] = []

        def createAndCatch(db: sqlite3.Connection) -> None:
            createV1(db)
            connections.append(db)

        clock = TurnClock()
        journal = SQLiteJournal(self.mktemp(), clock, threaded=False, migrations=(createAndCatch,), **kw)
        self.addCleanup(journal.close)
        self.successResultOf(journal.open())
        return journal, clock, connections

    def present(self, journal: SQLiteJournal, *ids: str) -> list[bool]:
        return [self.successResultOf(journal.get(i)) is not None for i in ids]

    def test_failedAddsNotCounted(self) -> None:
        """
        The jobs of a group that failed (one of its writes broke a
        constraint: a job id taken) are not counted: with C{maxJobs} rows
        in the file, a job that ended is not removed to make room.
        """
        journal, clock, _ = self.journal(maxJobs=3)
        journal.addMany([record(0), record(1)])
        clock.advance(0)
        journal.update(evolve(record(0), state=DONE, finished=200.0))
        clock.advance(0)
        added, taken = journal.add(record(2)), journal.add(record(1))
        clock.advance(0)
        for d in (added, taken):
            self.assertIn("UNIQUE constraint failed: jobs.id", str(self.failureResultOf(d, JournalError).value))
        self.flushLoggedErrors(sqlite3.IntegrityError)
        journal.add(record(3))
        clock.advance(0)
        self.assertEqual(self.successResultOf(journal.size()), 3)
        self.assertEqual(self.present(journal, "job0", "job1", "job2", "job3"), [True, True, False, True])

    def test_failedRemovalsNotCounted(self) -> None:
        """
        The jobs a failed group would have removed (by L{SQLiteJournal.prune})
        are counted still: the journal does not grow past C{maxJobs}.
        """
        journal, clock, _ = self.journal(maxJobs=3)
        journal.addMany([record(0), record(1), record(2)])
        clock.advance(0)
        journal.updateMany([evolve(record(n), state=DONE, finished=200.0 + n) for n in (0, 1)])
        clock.advance(0)
        pruned, taken = journal.prune(1000.0, 10), journal.add(record(2))
        clock.advance(0)
        self.failureResultOf(pruned, JournalError)
        self.failureResultOf(taken, JournalError)
        self.flushLoggedErrors(sqlite3.IntegrityError)
        self.assertEqual(self.present(journal, "job0", "job1"), [True, True])
        journal.addMany([record(3), record(4)])
        clock.advance(0)
        self.assertEqual(self.successResultOf(journal.size()), 3)
        self.assertEqual(self.present(journal, "job0", "job1", "job3", "job4"), [False, False, True, True])

    def test_diskFull(self) -> None:
        """
        A group that fills the disk (here: the file may not grow, C{PRAGMA
        max_page_count}) fails with SQLite's own error ("database or disk
        is full", not that of a rollback SQLite had done already); nothing
        of it is written or counted, and once there is room the journal
        goes on: with C{maxJobs} rows, the job that ended is kept.
        """
        journal, clock, (db,) = self.journal(maxJobs=2)
        journal.add(record(0))
        clock.advance(0)
        journal.update(evolve(record(0), state=DONE, finished=200.0))
        clock.advance(0)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
        big = evolve(record(2), payload=b'{"args":["%s"]}' % (b"x" * 100_000,))
        small, large = journal.add(record(1)), journal.add(big)
        clock.advance(0)
        for d in (small, large):
            failure = self.failureResultOf(d, JournalError)
            self.assertEqual(str(failure.value), "the journal could not be written: database or disk is full")
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        db.execute("PRAGMA max_page_count = 1000000")
        self.assertEqual(self.present(journal, "job1", "job2"), [False, False])
        journal.add(record(3))
        clock.advance(0)
        self.assertEqual(self.present(journal, "job0", "job1", "job2", "job3"), [True, False, False, True])


class ThreadedJournalTests(TestCase):
    """
    The journal as the daemon runs it: statements on a thread of its own.
    """

    @inlineCallbacks
    def test_offTheReactorThread(self) -> Any:
        """
        Every statement runs on the journal's thread, never the reactor's;
        writes asked for while a commit runs go together into the next one.
        """
        threads: set[int] = set()

        def note(db: sqlite3.Connection) -> None:
            threads.add(threading.get_ident())

        journal = SQLiteJournal(self.mktemp(), reactor, migrations=(*MIGRATIONS, note))
        self.addCleanup(journal.close)
        yield journal.open()
        first = journal.add(record(0))
        while journal.commits == 0 and not journal._committing:
            yield deferLater(0.001)
        more = [journal.add(record(n)) for n in range(1, 51)]
        results = yield gatherResults([first, *more])
        self.assertEqual(len(results), 51)
        self.assertEqual((journal.commits, journal.writes), (2, 51))
        self.assertEqual(len(threads), 1)
        self.assertNotIn(threading.get_ident(), threads)
        yield journal.close()
        self.assertIsNone(journal._threadPool)


def deferLater(seconds: float) -> Any:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


# -- one suite, both backends ---------------------------------------------------


class JournalContractMixin:
    """
    What every L{taskd.journal.Journal} does, the same for each backend,
    on the real reactor (the journals run their statements on threads).
    Subclasses give L{makeJournal}.
    """

    def makeJournal(self, **kw: Any) -> Any:
        raise NotImplementedError()

    @inlineCallbacks
    def opened(self, **kw: Any) -> Any:
        journal = self.makeJournal(**kw)
        self.addCleanup(journal.close)  # type: ignore[attr-defined]
        yield journal.open()
        return journal

    @inlineCallbacks
    def test_addGetUpdate(self) -> Any:
        """
        A job added is read back as written; an update changes its state,
        timestamps, result and error; a job never added is C{None}.
        """
        journal = yield self.opened()
        added = yield gatherResults([journal.add(record(n)) for n in range(3)])
        self.assertEqual(added, [Added(f"job{n}", False) for n in range(3)])
        found = yield journal.get("job1")
        self.assertEqual(found, record(1))
        ended = evolve(record(2), state=DONE, started=150.0, finished=200.0, result=b"3", error=None)
        yield journal.update(ended)
        self.assertEqual((yield journal.get("job2")), ended)
        self.assertIsNone((yield journal.get("nope")))
        self.assertEqual((yield journal.size()), 3)

    @inlineCallbacks
    def test_key(self) -> Any:
        """
        A job whose key is held by a job in the journal is not added: the
        answer is the other job's id, even within one transaction.
        """
        journal = yield self.opened()
        results = yield gatherResults([
            journal.add(record(1, key="k")), journal.add(record(2, key="k")),
            journal.add(record(3, key="other")),
        ])
        self.assertEqual(results, [Added("job1", False), Added("job1", True), Added("job3", False)])
        self.assertIsNone((yield journal.get("job2")))

    @inlineCallbacks
    def test_maxJobs(self) -> Any:
        """
        Past C{maxJobs} rows, the jobs that ended first are removed as new
        ones are added; jobs that have not ended never are.
        """
        journal = yield self.opened(maxJobs=3)
        yield gatherResults([journal.add(record(n)) for n in range(3)])
        yield gatherResults([
            journal.update(evolve(record(n), state=DONE, finished=finished))
            for n, finished in ((0, 300.0), (1, 200.0))
        ])
        yield journal.add(record(3))
        self.assertEqual((yield journal.size()), 3)
        self.assertIsNone((yield journal.get("job1")))
        yield gatherResults([journal.add(record(4)), journal.add(record(5))])
        self.assertEqual((yield journal.size()), 4)
        gone = []
        for n in range(6):
            gone.append((yield journal.get(f"job{n}")) is None)
        self.assertEqual(gone, [True, True, False, False, False, False])

    @inlineCallbacks
    def test_prune(self) -> Any:
        """
        C{prune} removes at most C{limit} jobs that ended before the time
        given, the oldest first.
        """
        journal = yield self.opened()
        yield gatherResults([journal.add(record(n)) for n in range(5)])
        yield gatherResults([
            journal.update(evolve(record(n), state=DONE, finished=1000.0 + n)) for n in range(4)
        ])
        first = yield journal.prune(1002.5, 2)
        second = yield journal.prune(1002.5, 2)
        self.assertEqual((first, second), (2, 1))
        self.assertEqual((yield journal.size()), 2)
        self.assertIsNotNone((yield journal.get("job3")))

    @inlineCallbacks
    def test_closeCommitsPending(self) -> Any:
        """
        Closing commits the writes asked for first; a write after that is
        refused with L{JournalError}.
        """
        journal = self.makeJournal()
        yield journal.open()
        added = journal.add(record(1))
        yield journal.close()
        self.assertEqual((yield added), Added("job1", False))
        self.assertRaises(JournalError, journal.add, record(2))
        again = yield self.opened()
        self.assertEqual((yield again.get("job1")), record(1))

    @inlineCallbacks
    def test_schemaVersion(self) -> Any:
        """
        A new journal gets the latest schema version.
        """
        journal = yield self.opened()
        self.assertEqual((yield journal.schemaVersion()), self.latestVersion)


class SQLiteContractTests(JournalContractMixin, TestCase):
    """
    The journal contract, for L{SQLiteJournal} on its thread.
    """

    latestVersion = len(MIGRATIONS)

    def setUp(self) -> None:
        self.path = self.mktemp()

    def makeJournal(self, **kw: Any) -> Any:
        return SQLiteJournal(self.path, reactor, **kw)


class PostgreSQLContractTests(JournalContractMixin, TestCase):
    """
    The journal contract, for L{taskd.pgjournal.PostgreSQLJournal} on a
    throwaway PostgreSQL server (see L{tests.pgserver}).
    """

    from tests.pgserver import skipReason

    skip = skipReason()
    del skipReason

    def setUp(self) -> None:
        from taskd.pgjournal import PG_MIGRATIONS
        from tests.pgserver import dropDatabase, freshDatabase

        self.latestVersion = len(PG_MIGRATIONS)
        self.dsn = freshDatabase()
        self.addCleanup(dropDatabase, self.dsn)

    def makeJournal(self, **kw: Any) -> Any:
        from taskd.pgjournal import PostgreSQLJournal

        return PostgreSQLJournal(self.dsn, reactor, **kw)
