"""
Tests for L{taskd.jobs}: background jobs above a real pool of fake worker
processes, with a real (SQLite) journal run synchronously, on the fake
reactor's clock: exact about time and about what is durable when.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from taskd import errors
from taskd.config import PoolConfig
from taskd.jobs import BUSY_RETRY, PRUNE_BATCH, PRUNE_INTERVAL, TAKE_BACK_RETRY, JobService
from taskd.journal import (
    CANCELLED,
    DONE,
    EXPIRED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SCHEDULED,
    JobRecord,
    SQLiteJournal,
)
from taskd.registry import Registry, TaskOptions
from tests.fakes import PoolTestsMixin

START = 1000.0


class TickingClock(Clock):
    """
    A clock that moves a microsecond each time it is read, as a real one
    does between two readings.
    """

    def seconds(self) -> float:
        self.rightNow += 1e-6
        return self.rightNow


def registry() -> Registry:
    reg = Registry()
    for name in ("add", "sleep"):
        reg.register(lambda *a, **k: None, name)
    reg.register(lambda *a, **k: None, "safe", retries=2)
    return reg


class JobServiceTests(PoolTestsMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.ids = iter(f"j{n}" for n in range(1, 100000))

    def service(self, workers: int = 1, path: str | None = None, **kw: Any) -> JobService:
        pool, reactor = self.startedPool(workers, registry=kw.pop("registry", registry()), **kw.pop("pool", {}))
        reactor.advance(START - reactor.seconds())
        self.reactor = reactor
        self.pool = pool
        journal = SQLiteJournal(path or self.path, reactor, threaded=False, maxJobs=kw.pop("journalMax", None))
        jobs = JobService(pool, journal, newId=lambda: next(self.ids), **kw)
        self.successResultOf(jobs.start())
        self.addCleanup(lambda: jobs.journal.close())
        return jobs

    def submit(self, jobs: JobService, name: str = "add", args: Any = (1, 2), **kw: Any) -> str:
        d = jobs.submit(name, json.dumps({"args": list(args)}).encode(), **kw)
        self.assertNoResult(d)  # not before the commit
        self.reactor.advance(0)
        jobId, existing = self.successResultOf(d)
        self.assertFalse(existing)
        return jobId

    def state(self, jobs: JobService, jobId: str) -> JobRecord:
        return self.successResultOf(jobs.status(jobId))[0]

    def stored(self, jobs: JobService, jobId: str) -> JobRecord | None:
        return self.successResultOf(jobs.journal.get(jobId))  # type: ignore[attr-defined]

    def test_submitRunsAndKeepsTheResult(self) -> None:
        """
        A submitted job is answered once it is journaled, written as
        running before it is handed to a worker, and its result is kept:
        L{JobService.wait} gives it even after the job has ended.
        """
        jobs = self.service()
        (worker,) = self.reactor.processes
        seen: list[Any] = []
        update, updateMany = jobs.journal.update, jobs.journal.updateMany

        def noting(record: JobRecord) -> Any:
            # What the worker had been sent when each change was asked for.
            seen.append((record.state, len(worker.requests())))
            return update(record)

        def notingMany(records: list[JobRecord]) -> Any:
            seen.extend((record.state, len(worker.requests())) for record in records)
            return updateMany(records)

        jobs.journal.update = noting  # type: ignore[method-assign]
        jobs.journal.updateMany = notingMany  # type: ignore[method-assign]
        jobId = self.submit(jobs)
        waiting = jobs.wait(jobId)
        self.assertEqual(worker.requests(), [("add", {"args": [1, 2]})])
        self.assertEqual(self.stored(jobs, jobId).state, RUNNING)  # type: ignore[union-attr]
        self.reactor.advance(2)
        worker.send(b"R3")
        self.assertNoResult(waiting)  # not before "done" is durable
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(waiting), b"3")
        record = self.stored(jobs, jobId)
        assert record is not None
        self.assertEqual(
            (record.state, record.submitted, record.started, record.finished, record.result),
            (DONE, START, START, START + 2, b"3"),
        )
        self.assertEqual(self.successResultOf(jobs.wait(jobId)), b"3")
        self.assertEqual(self.state(jobs, jobId).state, DONE)
        # "running" was durable before the task was sent.
        self.assertEqual(seen, [(RUNNING, 0), (DONE, 1)])

    def test_failed(self) -> None:
        """
        A job whose task raised ends L{FAILED} with the error a call would
        have got.
        """
        jobs = self.service()
        jobId = self.submit(jobs)
        self.reactor.advance(0)
        error = {"type": "task_failed", "message": "ValueError: no", "exception": "ValueError", "traceback": "TB"}
        self.reactor.processes[0].send(b"E" + json.dumps(error).encode())
        self.reactor.advance(0)
        self.assertEqual(self.state(jobs, jobId).state, FAILED)
        failure = self.failureResultOf(jobs.wait(jobId), errors.TaskFailed)
        self.assertEqual((failure.value.message, failure.value.remoteType), ("ValueError: no", "ValueError"))

    def test_unknownJob(self) -> None:
        """
        Asking about a job the journal does not hold fails with
        L{errors.UnknownJob}.
        """
        jobs = self.service()
        for d in (jobs.status("nope"), jobs.wait("nope"), jobs.cancel("nope")):
            self.assertIn("no job 'nope'", self.failureResultOf(d, errors.UnknownJob).value.message)

    def test_unknownTask(self) -> None:
        """
        A job of a task the daemon does not serve is refused, not journaled.
        """
        jobs = self.service()
        self.failureResultOf(jobs.submit("nope", b"{}"), errors.UnknownTask)
        self.assertEqual(self.successResultOf(jobs.journal.size()), 0)  # type: ignore[attr-defined]

    def test_window(self) -> None:
        """
        Jobs are handed to the pool a window at a time (its workers times
        its prefetch): the rest wait in the journal, not the pool's queue,
        and follow as jobs end.
        """
        jobs = self.service(workers=2)
        ids = [self.submit(jobs, args=(n, 0)) for n in range(5)]
        self.reactor.advance(0)
        self.assertEqual(self.pool.stats()["queued"], 0)
        self.assertEqual([self.state(jobs, i).state for i in ids], [RUNNING, RUNNING, QUEUED, QUEUED, QUEUED])
        (first,) = [p for p in self.reactor.processes if p.requests()[0][1]["args"] == [0, 0]]
        first.send(b"R0")
        self.reactor.advance(0)
        self.assertEqual([self.state(jobs, i).state for i in ids], [DONE, RUNNING, RUNNING, QUEUED, QUEUED])
        self.assertEqual([r[1]["args"] for r in first.requests()], [[0, 0], [2, 0]])

    def test_poolQueueFull(self) -> None:
        """
        A job the pool refuses (its queue full of calls) was not run: it is
        queued again, at the head, and offered again after L{BUSY_RETRY}.
        """
        jobs = self.service(pool={"maxQueue": 0}, window=2)
        self.pool.submit("sleep", [1])
        jobId = self.submit(jobs)
        self.reactor.advance(0)
        self.assertEqual(self.state(jobs, jobId).state, QUEUED)
        self.assertEqual(self.stored(jobs, jobId).state, QUEUED)  # type: ignore[union-attr]
        self.reactor.processes[0].send(b"R1")
        self.reactor.advance(BUSY_RETRY)
        self.reactor.advance(0)
        self.assertEqual(self.state(jobs, jobId).state, RUNNING)

    def test_takenBackFromABusyPool(self) -> None:
        """
        A job the pool would queue (its worker busy with a call) is not
        left there marked running: it is taken back (its call cancelled
        before any worker had it), written L{QUEUED} again, and offered one
        at a time every L{TAKE_BACK_RETRY} (with nothing written while the
        pool still has calls queued), until a worker takes it: only then is
        it L{RUNNING}.
        """
        jobs = self.service(window=3)
        (worker,) = self.reactor.processes
        self.pool.submit("sleep", [1])
        self.pool.submit("sleep", [2])
        ids = [self.submit(jobs) for _ in range(3)]
        self.reactor.advance(0)
        self.assertEqual([self.state(jobs, i).state for i in ids], [QUEUED] * 3)
        self.assertEqual([self.stored(jobs, i).state for i in ids], [QUEUED] * 3)  # type: ignore[union-attr]
        self.assertEqual(self.pool.stats()["queued"], 1)
        writes = jobs.journal.writes  # type: ignore[attr-defined]
        self.reactor.advance(TAKE_BACK_RETRY)
        self.reactor.advance(0)
        self.assertEqual(jobs.journal.writes, writes)  # type: ignore[attr-defined]
        worker.send(b"R1")  # the first call ends; the second runs
        self.reactor.advance(TAKE_BACK_RETRY)
        self.reactor.advance(0)
        # One job offered (a probe), taken back again.
        self.assertEqual(jobs.journal.writes - writes, 2)  # type: ignore[attr-defined]
        self.assertEqual([self.stored(jobs, i).state for i in ids], [QUEUED] * 3)  # type: ignore[union-attr]
        worker.send(b"R2")  # the worker is free
        self.reactor.advance(TAKE_BACK_RETRY)
        self.reactor.advance(0)
        self.assertEqual([self.state(jobs, i).state for i in ids], [RUNNING, QUEUED, QUEUED])
        self.assertEqual(worker.requests()[-1], ("add", {"args": [1, 2]}))
        self.assertEqual(self.pool.stats()["queued"], 0)
        worker.send(b"R3")
        self.reactor.advance(0)
        self.reactor.advance(0)
        self.assertEqual([self.state(jobs, i).state for i in ids], [DONE, RUNNING, QUEUED])

    def test_delay(self) -> None:
        """
        A job with a time to run is L{SCHEDULED} until then, on one timer
        set for the earliest; at its time it runs.
        """
        jobs = self.service(workers=2)
        later = self.submit(jobs, runAt=START + 10)
        sooner = self.submit(jobs, runAt=START + 5)
        self.assertEqual([self.state(jobs, i).state for i in (later, sooner)], [SCHEDULED, SCHEDULED])
        times = [c.getTime() for c in self.reactor.getDelayedCalls()]
        self.assertIn(START + 5, times)
        self.assertNotIn(START + 10, times)
        self.reactor.advance(5 - 0.001)
        self.assertEqual(self.state(jobs, sooner).state, SCHEDULED)
        self.reactor.advance(0.001)
        self.reactor.advance(0)
        self.assertEqual([self.state(jobs, i).state for i in (later, sooner)], [SCHEDULED, RUNNING])
        self.reactor.advance(5)
        self.reactor.advance(0)
        self.assertEqual(self.state(jobs, later).state, RUNNING)

    def test_delayTimerSetOnce(self) -> None:
        """
        Submits of jobs that start after the earliest scheduled one leave
        its timer as it is, on a clock that moves between two readings (a
        real one): the timer is not cancelled and set again for each.
        """
        ticking = TickingClock()
        ticking.advance(START)
        jobs = self.service(clock=ticking)

        def timers(at: float) -> list[Any]:
            return [c for c in ticking.getDelayedCalls() if abs(c.getTime() - at) < 1]

        self.submit(jobs, runAt=START + 3600.3)
        (timer,) = timers(START + 3600.3)
        for n in range(20):
            self.submit(jobs, runAt=START + 3601 + n)
        self.assertEqual(timers(START + 3600.3), [timer])
        self.assertTrue(timer.active())
        sooner = self.submit(jobs, runAt=START + 30)
        self.assertFalse(timer.active())
        (moved,) = timers(START + 30)
        ticking.advance(30)
        self.reactor.advance(0)
        self.assertEqual(self.state(jobs, sooner).state, RUNNING)
        self.assertFalse(moved.active())

    def test_deadline(self) -> None:
        """
        A job still waiting past its deadline ends L{EXPIRED} without
        running.
        """
        jobs = self.service(window=1)
        blocker = self.submit(jobs)
        late = self.submit(jobs, deadline=3.0)
        self.reactor.advance(4)
        self.reactor.processes[0].send(b"R3")
        self.reactor.advance(0)
        self.reactor.advance(0)
        self.assertEqual(self.state(jobs, blocker).state, DONE)
        self.assertEqual(self.state(jobs, late).state, EXPIRED)
        self.failureResultOf(jobs.wait(late), errors.Expired)
        self.assertEqual(len(self.reactor.processes[0].requests()), 1)

    def test_key(self) -> None:
        """
        A second submit with the key of a known job answers that job's id
        and adds nothing.
        """
        jobs = self.service()
        first = self.submit(jobs, key="mail-42")
        d = jobs.submit("add", b'{"args":[9,9]}', key="mail-42")
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(d), (first, True))
        self.assertEqual(self.successResultOf(jobs.journal.size()), 1)  # type: ignore[attr-defined]

    def test_maxJobs(self) -> None:
        """
        With C{maxJobs} jobs not yet ended (submits still being written
        count), a submit is refused with L{errors.PoolBusy}; once one ends,
        one is taken again.
        """
        jobs = self.service(maxJobs=2)
        self.submit(jobs)
        pending = jobs.submit("add", b'{"args":[1,1]}')
        failure = self.failureResultOf(jobs.submit("add", b"{}"), errors.PoolBusy)
        self.assertEqual(
            failure.value.message,
            "the daemon holds 2 jobs that have not ended, its limit (--max-jobs); try again later",
        )
        self.reactor.advance(0)
        self.successResultOf(pending)
        self.reactor.processes[0].send(b"R3")
        self.reactor.advance(0)
        self.submit(jobs)

    def test_cancelQueued(self) -> None:
        """
        Cancelling a job that has not started ends it L{CANCELLED}; it
        never runs, and a waiter hears so.
        """
        jobs = self.service(window=1)
        self.submit(jobs)
        queued = self.submit(jobs)
        waiting = jobs.wait(queued)
        cancelled = jobs.cancel(queued)
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(cancelled).state, CANCELLED)
        self.failureResultOf(waiting, errors.TaskCancelled)
        self.assertEqual(self.stored(jobs, queued).state, CANCELLED)  # type: ignore[union-attr]
        self.reactor.processes[0].send(b"R3")
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.processes[0].requests()), 1)

    def test_cancelRunning(self) -> None:
        """
        Cancelling a running job cancels its call (its worker is
        stopped); it ends L{CANCELLED}.
        """
        jobs = self.service()
        jobId = self.submit(jobs)
        self.reactor.advance(0)
        cancelled = jobs.cancel(jobId)
        self.assertNoResult(cancelled)
        self.assertIn("SIGKILL", self.reactor.processes[0].signals)
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(cancelled).state, CANCELLED)

    def test_stopWaiting(self) -> None:
        """
        Cancelling a wait (its connection is lost) leaves the job running.
        """
        jobs = self.service()
        jobId = self.submit(jobs)
        waiting = jobs.wait(jobId)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.reactor.advance(0)
        self.reactor.processes[0].send(b"R3")
        self.reactor.advance(0)
        self.assertEqual(self.state(jobs, jobId).state, DONE)

    def test_progress(self) -> None:
        """
        A waiter that asked for progress gets the job's reports; the job's
        status carries the last one while it runs.
        """
        jobs = self.service()
        jobId = self.submit(jobs)
        reports: list[bytes] = []
        waiting = jobs.wait(jobId, reports.append)
        self.reactor.advance(0)
        self.reactor.processes[0].send(b'P{"done":1}')
        self.assertEqual(reports, [b'{"done":1}'])
        self.assertEqual(self.successResultOf(jobs.status(jobId))[1], b'{"done":1}')
        self.reactor.processes[0].send(b"R3")
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(waiting), b"3")

    def test_recovery(self) -> None:
        """
        After a crash (the journal reopened by a new service): queued and
        scheduled jobs run; a job that was running runs again only if its
        task opts into retries, and ends L{INTERRUPTED} otherwise.
        """
        jobs = self.service(workers=2, window=2)
        plain = self.submit(jobs, "sleep", (1,))
        safe = self.submit(jobs, "safe", (2,))
        queued = self.submit(jobs, "add", (3, 4))
        scheduled = self.submit(jobs, "add", (5, 6), runAt=START + 30)
        self.reactor.advance(0)
        self.assertEqual([self.state(jobs, i).state for i in (plain, safe, queued, scheduled)], [RUNNING, RUNNING, QUEUED, SCHEDULED])
        # The crash: nothing more is written; the file is let go.
        jobs.journal._closeDatabase()  # type: ignore[attr-defined]
        after = self.service(workers=2, path=self.path)
        self.reactor.advance(0)
        interrupted = self.successResultOf(after.status(plain))[0]
        self.assertEqual(interrupted.state, INTERRUPTED)
        failure = self.failureResultOf(after.wait(plain), errors.JobInterrupted)
        self.assertIn("not run again", failure.value.message)
        self.assertEqual([self.state(after, i).state for i in (safe, queued, scheduled)], [RUNNING, RUNNING, SCHEDULED])
        ran = sorted(r[1]["args"][0] for p in self.reactor.processes for r in p.requests())
        self.assertEqual(ran, [2, 3])
        for p in self.reactor.processes[-2:]:
            p.send(b"R0")
        self.reactor.advance(30)
        self.assertEqual(self.state(after, scheduled).state, RUNNING)

    def test_statsByState(self) -> None:
        """
        L{JobService.stats} counts the jobs that have not ended by state,
        through every change: submitted, started, cancelled, ended, picked
        up again after a crash.
        """
        jobs = self.service(workers=1, window=1)

        def stats(service: JobService) -> tuple[int, int, int]:
            s = service.stats()
            return s["jobsQueued"], s["jobsScheduled"], s["jobsRunning"]

        self.assertEqual(stats(jobs), (0, 0, 0))
        running = self.submit(jobs, "sleep", (1,))
        queued = [self.submit(jobs) for _ in range(3)]
        later = self.submit(jobs, runAt=START + 30)
        self.reactor.advance(0)
        self.assertEqual(stats(jobs), (3, 1, 1))
        cancelled = jobs.cancel(queued[0])
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(cancelled).state, CANCELLED)
        self.assertEqual(stats(jobs), (2, 1, 1))
        self.reactor.processes[0].send(b"R0")
        self.reactor.advance(0)
        self.reactor.advance(0)
        self.assertEqual(self.state(jobs, running).state, DONE)
        self.assertEqual(stats(jobs), (1, 1, 1))
        jobs.journal._closeDatabase()  # type: ignore[attr-defined]
        after = self.service(workers=1, path=self.path, window=1)
        self.reactor.advance(0)
        # The one running at the crash ended interrupted; the last queued
        # one runs.
        self.assertEqual(self.state(after, queued[1]).state, INTERRUPTED)
        self.assertEqual(stats(after), (0, 1, 1))
        self.reactor.advance(30)
        self.reactor.advance(0)
        self.assertEqual(self.state(after, later).state, QUEUED)
        self.assertEqual(stats(after), (1, 0, 1))

    def test_retriesFromTaskLimit(self) -> None:
        """
        C{--task-limit NAME:retries=N} opts a task into being run again
        after a crash, as C{@task(retries=N)} does.
        """
        jobs = self.service()
        config = PoolConfig(tasks=[], workers=1, taskLimits={"sleep": TaskOptions(retries=1)})
        self.pool.config = config
        jobId = self.submit(jobs, "sleep", (1,))
        self.reactor.advance(0)
        jobs.journal._closeDatabase()  # type: ignore[attr-defined]
        after = self.service(path=self.path)
        after.pool.config = config
        # The pool of the new service is another: check the rule itself.
        self.assertEqual(after._retries("sleep"), 1)  # type: ignore[attr-defined]
        self.assertEqual(self.stored(after, jobId).state, RUNNING)  # type: ignore[union-attr]

    def test_prune(self) -> None:
        """
        Jobs that ended more than the TTL ago are removed in batches of
        L{PRUNE_BATCH}, the next batch at once while they come back full,
        then every L{PRUNE_INTERVAL}.
        """
        # The worker takes them all in its pipe (a job is handed to a pool
        # only to be sent to a worker at once).
        jobs = self.service(ttl=100.0, window=PRUNE_BATCH + 10, pool={"prefetch": PRUNE_BATCH + 10})
        journal = jobs.journal
        for n in range(PRUNE_BATCH + 5):
            jobs.submit("add", b'{"args":[1,1]}')
        self.reactor.advance(0)
        self.reactor.advance(0)
        for n in range(PRUNE_BATCH + 5):
            self.reactor.processes[0].send(b"R2")
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(journal.size()), PRUNE_BATCH + 5)  # type: ignore[attr-defined]
        self.reactor.advance(PRUNE_INTERVAL)  # the finished jobs are 60 s old
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(journal.size()), PRUNE_BATCH + 5)  # type: ignore[attr-defined]
        commits = journal.commits  # type: ignore[attr-defined]
        self.reactor.advance(PRUNE_INTERVAL)  # 120 s: one full batch, then at once the rest
        self.reactor.advance(0)
        self.assertEqual(self.successResultOf(journal.size()), 0)  # type: ignore[attr-defined]
        self.assertEqual(journal.commits - commits, 2)  # type: ignore[attr-defined]

    def test_stop(self) -> None:
        """
        Stopping takes no more jobs, leaves queued ones in the journal for
        the next start, and closes the journal once the jobs in the pool
        have ended.
        """
        jobs = self.service(window=1)
        running = self.submit(jobs)
        queued = self.submit(jobs)
        self.reactor.advance(0)
        stopped = jobs.stop()
        self.failureResultOf(jobs.submit("add", b"{}"), errors.PoolStopping)
        self.assertNoResult(stopped)
        self.reactor.processes[0].send(b"R3")
        self.reactor.advance(0)
        self.successResultOf(stopped)
        again = self.service(path=self.path)
        self.assertEqual(self.successResultOf(again.journal.get(running)).state, DONE)  # type: ignore[union-attr, attr-defined]
        self.assertEqual(self.state(again, queued).state, RUNNING)
