# -*- test-case-name: tests.test_sharedjobs -*-
"""
Background jobs shared by many daemons through one PostgreSQL journal
(L{taskd.pgjournal.PostgreSQLJournal}).

L{SharedJobService} is a L{taskd.jobs.JobService} whose queue is the
database: a submitted job is written there and left for whichever daemon
has a free worker to claim it (C{FOR UPDATE SKIP LOCKED}); the jobs this
daemon claimed run here exactly as on one host.  Any daemon answers for
any job: status from the database, C{wait} by C{NOTIFY end:ID} (or the
poll), C{cancel} by the database (a job not yet running) or by asking the
daemon that runs it (C{NOTIFY cancel:ID}, and the flag its lease renewals
read).  A daemon renews the leases of the jobs it runs every third of
C{--job-lease}; a lease that expires means its daemon died, and any daemon
then requeues the job (its task opts into retries) or ends it
L{taskd.journal.INTERRUPTED}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from taskd import errors
from taskd._jobbook import outcome
from taskd.jobs import JobService
from taskd.journal import EXPIRED, FINAL_STATES, JobRecord
from taskd.pgjournal import DEFAULT_POLL, PostgreSQLJournal, redact
from taskd.pool import ProcessPool


class SharedJobService(JobService):
    """
    A L{JobService} on a journal shared with other daemons.

    @ivar pollInterval: seconds between two polls of the database (for
        jobs whose time came, expired leases, and the ends of jobs waited
        for), the fallback of C{NOTIFY}.
    @ivar reaped: jobs whose lease expired that this daemon requeued or
        ended, so far.
    """

    journal: PostgreSQLJournal

    def __init__(
        self,
        pool: ProcessPool,
        journal: PostgreSQLJournal,
        *,
        pollInterval: float = DEFAULT_POLL,
        **kw: Any,
    ) -> None:
        super().__init__(pool, journal, **kw)
        self.pollInterval = pollInterval
        self.reaped = 0
        self._claiming = False
        self._more = False
        self._remote: dict[str, list[Deferred[JobRecord]]] = {}
        self._poll: LoopingCall | None = None
        self._renewal: LoopingCall | None = None
        self._wakeTimer: IDelayedCall | None = None
        journal.notified = self._notified

    # -- life -----------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Open the journal and start claiming jobs, polling and renewing
        leases.
        """

        def started(_: object) -> None:
            self.log.info(
                "jobs: sharing the PostgreSQL journal {dsn} as {owner}",
                dsn=redact(self.journal.dsn), owner=self.journal.owner,
            )
            for name, interval, f in (
                ("_poll", self.pollInterval, self._tick),
                ("_renewal", self.journal.lease / 3, self._renew),
            ):
                loop = LoopingCall(f)
                loop.clock = self.clock
                setattr(self, name, loop)
                loop.start(interval, now=False).addErrback(
                    lambda failure: self.log.failure("jobs: a periodic task failed", failure)
                )
            self._tick()

        return super().start().addCallback(started)

    def stop(self) -> Deferred[None]:
        """
        See L{JobService.stop}: also stops polling; leases are renewed until
        the jobs running here have ended (or been requeued).
        """
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._wakeTimer is not None and self._wakeTimer.active():
            self._wakeTimer.cancel()
        for waiters in self._remote.values():
            for d in waiters:
                d.errback(errors.PoolStopping("the daemon is stopping", started=False))
        self._remote.clear()
        stopping = super().stop()

        def stopped(result: object) -> object:
            if self._renewal is not None and self._renewal.running:
                self._renewal.stop()
            return result

        return stopping.addBoth(stopped)

    def stopIfIdle(self) -> None:
        """
        See L{JobService.stopIfIdle}: not while a claim is under way (its
        jobs are coming); leases stop being renewed first.
        """
        if not self._claiming:
            if self._stopping is not None and self._renewal is not None and not self._inPool:
                if self._renewal.running:
                    self._renewal.stop()
            super().stopIfIdle()

    # -- queueing: the database is the queue -----------------------------------

    def enqueueJob(self, job: Any) -> None:
        """
        See L{JobService.enqueueJob}: a new job is claimed from the
        database like any other, by whichever daemon has room first, so it
        is forgotten here.
        """
        jobId = job.record.id
        if self._jobs.get(jobId) is job:
            del self._jobs[jobId]

    def feedPool(self) -> None:
        """
        See L{JobService.feedPool}: claim as many jobs from the database
        as the window has room for (one claim at a time).
        """
        while self._ready:
            # Refused by a full pool: its update released it to the
            # database; its waiters wait there.
            job = self._ready.popleft()
            if self._jobs.get(job.record.id) is job:
                del self._jobs[job.record.id]
            for waiter, _ in job.waiters:
                self._remote.setdefault(job.record.id, []).append(self._chained(waiter))
            job.waiters = []
        if not self._running:
            return
        if self._claiming:
            self._more = True
            return
        config = self.pool.config
        window = config.workers * config.prefetch if self.window is None else self.window
        free = window - self._inPool
        if free <= 0 or self._retryTimer is not None:
            return
        self._claiming = True
        self._more = False
        try:
            d = self.journal.claim(free, self.clock.seconds())
        except Exception:
            self._claiming = False
            raise
        d.addCallbacks(self._claimed, self._claimFailed, callbackArgs=(free,))

    def _chained(self, waiter: Deferred[bytes]) -> Deferred[JobRecord]:
        d: Deferred[JobRecord] = Deferred()
        d.addCallback(outcome).chainDeferred(waiter)
        return d

    def _claimed(self, records: list[JobRecord], asked: int) -> None:
        self._claiming = False
        now = self.clock.seconds()
        for record in records:
            job = self._track(record)
            self._inPool += 1
            if not self._running:
                self._hand(job)  # refused by the stopping pool: released
                continue
            if record.deadline is not None and now > record.runAt + record.deadline:
                self._inPool -= 1
                self._end(job, EXPIRED, error=errors.Expired(
                    f"the job waited more than its deadline ({record.deadline:g} s) "
                    "to start; it was not run"
                ))
                continue
            self._hand(job)
        if self._running and (self._more or len(records) == asked):
            self.feedPool()
        self.stopIfIdle()

    def _claimFailed(self, failure: Failure) -> None:
        self._claiming = False
        self.log.warn("jobs: claiming failed: {error}", error=failure.getErrorMessage())
        self.stopIfIdle()

    # -- wake-ups -----------------------------------------------------------------

    def _notified(self, payload: str) -> None:
        kind, _, jobId = payload.partition(":")
        if kind == "new":
            if self._running:
                self.feedPool()
        elif kind == "end":
            if jobId in self._remote:
                self._settle([jobId])
        elif kind == "cancel":
            job = self._jobs.get(jobId)
            if job is not None and job.record.state not in FINAL_STATES:
                super().cancel(jobId)

    def _tick(self) -> None:
        if not self._running:
            return

        def reaped(counts: tuple[int, int]) -> None:
            again, ended = counts
            if again or ended:
                self.reaped += again + ended
                self.log.info(
                    "jobs: {again} jobs of a daemon whose lease expired queued again, "
                    "{ended} interrupted", again=again, ended=ended,
                )

        self.journal.reap(self._retries, self.clock.seconds()).addCallbacks(
            reaped, lambda f: self.log.warn("jobs: reaping failed: {e}", e=f.getErrorMessage())
        )
        self.feedPool()
        if self._remote:
            self._settle(list(self._remote))

    def _settle(self, jobIds: list[str]) -> None:
        """
        Answer the waiters of those of C{jobIds} that ended.
        """

        def ended(records: list[JobRecord]) -> None:
            for record in records:
                for d in self._remote.pop(record.id, []):
                    if not d.called:
                        d.callback(record)

        try:
            d = self.journal.ended(jobIds)
        except Exception:
            return
        d.addCallbacks(ended, lambda f: None)

    def _renew(self) -> None:
        def renewed(held: list[tuple[str, bool]]) -> None:
            lost = []
            for jobId, cancelAsked in held:
                job = self._jobs.get(jobId)
                if job is None:
                    lost.append(jobId)
                elif cancelAsked and not job.cancelling and job.record.state not in FINAL_STATES:
                    super(SharedJobService, self).cancel(jobId)
            if lost and not self._claiming:
                self.journal.release(lost)

        try:
            d = self.journal.renew()
        except Exception:
            return
        d.addCallbacks(renewed, lambda f: self.log.warn(
            "jobs: renewing leases failed: {e}", e=f.getErrorMessage()
        ))

    # -- what clients ask ---------------------------------------------------------

    def wait(self, jobId: str, progress: Callable[[bytes], object] | None = None) -> Deferred[bytes]:
        """
        See L{JobService.wait}: a job this daemon does not run is waited
        for in the database (progress reports come only from the daemon
        running it).
        """
        if jobId in self._jobs:
            return super().wait(jobId, progress)
        ended: Deferred[JobRecord] = self._stored(jobId).addCallback(self._waitRemote)
        return ended.addCallback(outcome)

    def _waitRemote(self, record: JobRecord) -> Deferred[JobRecord] | JobRecord:
        if record.state in FINAL_STATES:
            return record
        waiters = self._remote.setdefault(record.id, [])

        def stopWaiting(d: Deferred[JobRecord]) -> None:
            if d in waiters:
                waiters.remove(d)
            if not waiters:
                self._remote.pop(record.id, None)

        d: Deferred[JobRecord] = Deferred(stopWaiting)
        waiters.append(d)
        return d

    def cancel(self, jobId: str) -> Deferred[JobRecord]:
        """
        See L{JobService.cancel}: any daemon cancels any job.
        """
        if jobId in self._jobs:
            return super().cancel(jobId)

        def changed(record: JobRecord | None) -> Deferred[JobRecord] | JobRecord:
            if record is None:
                return self._stored(jobId)
            if record.state in FINAL_STATES:
                return record
            return self._waitRemote(record)

        return self.journal.cancel(jobId, self.clock.seconds()).addCallback(changed)

    def stats(self) -> dict[str, int]:
        """
        See L{JobService.stats}: the jobs this daemon runs.
        """
        return super().stats()


__all__ = ["SharedJobService"]
