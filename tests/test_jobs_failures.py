"""
Tests for L{taskd.jobs} when its journal fails to write (a full disk, a
constraint violated): a submit refused leaves no trace, a job accepted is
never lost.  A real SQLite journal, run synchronously on the fake reactor's
clock, is made to fail for real: its file may not grow (C{PRAGMA
max_page_count}), or a trigger of its connection aborts one kind of write.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from taskd import errors
from taskd._sqliteschema import createV1
from taskd.jobs import WRITE_RETRY, JobService
from taskd.journal import DONE, INTERRUPTED, QUEUED, RUNNING, JobRecord, JournalError, SQLiteJournal
from tests.fakes import PoolTestsMixin
from tests.test_jobs import START, registry

#: A trigger that aborts the writes of one state (format it with the state).
REFUSE = (
    "CREATE TEMP TRIGGER refuse BEFORE UPDATE OF state ON jobs WHEN NEW.state = '{0}' "
    "BEGIN SELECT RAISE(ABORT, 'no room for {0} (the test refuses it)'); END"
)


class JournalFailureTests(PoolTestsMixin, SynchronousTestCase):
    """
    L{JobService} on a journal whose writes fail.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.ids = iter(f"j{n}" for n in range(1, 1000))

    def service(self, **kw: Any) -> JobService:
        """
        A started service on a journal whose connection is kept in
        C{self.db} (caught by its schema's migration, for C{PRAGMA}s and
        triggers that make its writes fail).
        """
        pool, reactor = self.startedPool(1, registry=registry())
        reactor.advance(START - reactor.seconds())
        self.reactor = reactor
        caught: list[sqlite3.Connection] = []

        def createAndCatch(db: sqlite3.Connection) -> None:
            createV1(db)
            caught.append(db)

        journal = SQLiteJournal(self.path, reactor, threaded=False, migrations=(createAndCatch,))
        jobs = JobService(pool, journal, newId=lambda: next(self.ids), **kw)
        self.successResultOf(jobs.start())
        self.addCleanup(lambda: jobs.journal.close())
        if caught:  # (a new file)
            (self.db,) = caught
        return jobs

    def stored(self, jobs: JobService, jobId: str) -> JobRecord | None:
        return self.successResultOf(jobs.journal.get(jobId))  # type: ignore[attr-defined]

    def submitted(self, jobs: JobService, payload: bytes = b'{"args":[1,2]}') -> Any:
        d = jobs.submit("add", payload)
        self.reactor.advance(0)
        return d

    def test_refusedSubmitLeavesNoTrace(self) -> None:
        """
        A submit the journal fails to write (its disk is full) is refused
        with C{journal_unavailable}, saying why; the job is nowhere: not in
        the journal, not in the daemon's counts, not asked about, not run.
        Once there is room, submits are accepted and run.
        """
        jobs = self.service()
        (worker,) = self.reactor.processes
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        self.db.execute(f"PRAGMA max_page_count = {pages}")
        refused = self.submitted(jobs, json.dumps({"args": ["x" * 100_000]}).encode())
        failure = self.failureResultOf(refused, errors.JournalUnavailable)
        self.assertEqual(
            str(failure.value),
            "the job was not accepted: the journal could not be written: "
            "database or disk is full; try again later",
        )
        self.assertFalse(failure.value.started)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        # The first removal of old jobs was in the same commit.
        self.assertEqual(len(self.flushLoggedErrors(JournalError)), 1)
        self.assertIsNone(self.stored(jobs, "j1"))
        self.failureResultOf(jobs.status("j1"), errors.UnknownJob)
        self.assertEqual(jobs.stats(), {"jobsQueued": 0, "jobsScheduled": 0, "jobsRunning": 0})
        self.reactor.advance(WRITE_RETRY)
        self.assertEqual(worker.requests(), [])
        self.db.execute("PRAGMA max_page_count = 1000000")
        jobId, _ = self.successResultOf(self.submitted(jobs))
        self.assertEqual(jobId, "j2")
        self.assertEqual(worker.requests(), [("add", {"args": [1, 2]})])

    def test_runningNotWrittenIsNotLost(self) -> None:
        """
        A job whose C{running} the journal fails to write is not handed to
        the pool: it stays queued (in the journal and in the daemon's
        counts), its waiters wait, and it is written running and run once
        the journal writes again, L{WRITE_RETRY} later.
        """
        jobs = self.service()
        (worker,) = self.reactor.processes
        self.db.execute(REFUSE.format(RUNNING))
        jobId, _ = self.successResultOf(self.submitted(jobs))
        waiting = jobs.wait(jobId)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.IntegrityError)), 1)
        self.assertEqual(worker.requests(), [])
        self.assertNoResult(waiting)
        self.assertEqual(self.stored(jobs, jobId).state, QUEUED)  # type: ignore[union-attr]
        self.assertEqual(self.successResultOf(jobs.status(jobId))[0].state, QUEUED)
        self.assertEqual(jobs.stats(), {"jobsQueued": 1, "jobsScheduled": 0, "jobsRunning": 0})
        self.db.execute("DROP TRIGGER refuse")
        self.reactor.advance(WRITE_RETRY)
        self.assertEqual(worker.requests(), [("add", {"args": [1, 2]})])
        self.assertEqual(self.stored(jobs, jobId).state, RUNNING)  # type: ignore[union-attr]
        worker.send(b"R3")
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(waiting), b"3")

    def endedUnwritten(self) -> tuple[JobService, str, Any]:
        """
        @return: a service, a job of it that returned 3 but whose end
            (C{done}) the journal refuses to write, and a wait for it.
        """
        jobs = self.service()
        (worker,) = self.reactor.processes
        self.db.execute(REFUSE.format(DONE))
        jobId, _ = self.successResultOf(self.submitted(jobs))
        waiting = jobs.wait(jobId)
        worker.send(b"R3")
        self.reactor.advance(0)
        return jobs, jobId, waiting

    def test_endNotWrittenIsNotLost(self) -> None:
        """
        A job whose end the journal fails to write is answered for as the
        journal holds it (running), its waiters wait, and its end is
        written again every L{WRITE_RETRY} until it is durable; then its
        waiters get its result.
        """
        jobs, jobId, waiting = self.endedUnwritten()
        self.reactor.advance(WRITE_RETRY)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.IntegrityError)), 2)
        self.assertNoResult(waiting)
        self.assertEqual(self.stored(jobs, jobId).state, RUNNING)  # type: ignore[union-attr]
        self.assertEqual(self.successResultOf(jobs.status(jobId))[0].state, RUNNING)
        self.assertEqual(jobs.stats()["jobsRunning"], 1)
        self.db.execute("DROP TRIGGER refuse")
        self.reactor.advance(WRITE_RETRY)
        self.assertEqual(self.successResultOf(waiting), b"3")
        self.assertEqual(self.stored(jobs, jobId).state, DONE)  # type: ignore[union-attr]
        self.assertEqual(jobs.stats()["jobsRunning"], 0)
        self.assertEqual(self.successResultOf(jobs.wait(jobId)), b"3")

    def test_endNotWrittenAtStop(self) -> None:
        """
        A stop writes at once the ends that wait to be written again; one
        that fails then fails its waiters with C{journal_unavailable},
        saying how the journal holds the job, and the stop goes on (the
        journal closes).  The next start treats the job as the journal
        holds it: interrupted, as after a crash.
        """
        jobs, jobId, waiting = self.endedUnwritten()
        stopped = jobs.stop()
        self.reactor.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.IntegrityError)), 2)
        failure = self.failureResultOf(waiting, errors.JournalUnavailable)
        self.assertEqual(
            str(failure.value),
            "the job ended done, but the journal could not write it (the journal could not be "
            "written: no room for done (the test refuses it)); the journal holds it as running",
        )
        again = self.service()
        record = self.successResultOf(again.status(jobId))[0]
        self.assertEqual(record.state, INTERRUPTED)
