# -*- test-case-name: tests.test_jobs -*-
"""
Background jobs: calls with a life of their own, above the pool.

A job is written to the journal (L{taskd.journal}) before it is accepted,
and every change of its state after that; L{JobService} feeds the jobs
that may start to the pool (L{taskd.pool.ProcessPool.submitEncoded}) a
few at a time, so that jobs wait in the journal rather than in the pool's
queue, and keeps their results until their retention ends.

A job's life::

    submit --> SCHEDULED --(its time)--> QUEUED --(fed to the pool)--> RUNNING
                              |                                           |
                              +-----> CANCELLED, EXPIRED                  +--> DONE, FAILED,
                                                                               CANCELLED, INTERRUPTED

After a crash, the jobs the journal holds as queued or scheduled run; a
job that was running is run again only if its task opts into retries
(C{@task(retries=N)}, N > 0, or C{--task-limit NAME:retries=N}), and ends
L{INTERRUPTED} otherwise: a job never runs twice unless its task said it
may.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any, Callable

from attrs import evolve
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd import errors
from taskd._handback import HandBack
from taskd._jobbook import JobBook, RandomIds, TrackedJob, outcome, recordOnEnd
from taskd._jobfeeding import BUSY_RETRY, TAKE_BACK_RETRY, WRITE_RETRY, PoolFeeding
from taskd.journal import (
    CANCELLED,
    FINAL_STATES,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SCHEDULED,
    Added,
    Journal,
    JobRecord,
)
from taskd.pool import ProcessPool

#: Seconds finished jobs are kept, by default.
DEFAULT_JOB_TTL = 24 * 3600.0
#: Jobs the journal keeps at most, by default.
DEFAULT_MAX_JOBS = 100_000
#: Seconds between two removals of the jobs past their retention.
PRUNE_INTERVAL = 60.0
#: Jobs removed per transaction: small, so that other writes wait little.
PRUNE_BATCH = 500

#: Submits answered in one reactor turn, at most (each costs the reactor
#: some tens of microseconds: putting the job in line, writing its
#: C{accepted}, reading a request in its place).
ANSWERS_PER_TURN = 8

#: What L{JobService.take} tells its caller: the job's id and whether it is
#: an earlier job's (found by its key), or a C{Failure}.
Taken = tuple[str, bool]


class JobService(PoolFeeding):
    """
    Takes jobs, journals them, runs them in a pool, and answers for them.

    A job is written L{RUNNING} (and synced) before it is handed to the
    pool, and handed only to be sent to a worker at once: if the pool
    queues it instead (its workers are busy, with calls), it is taken back
    and waits in the journal as L{QUEUED}, offered again when one of its
    jobs ends or after L{TAKE_BACK_RETRY}.  So the journal shows a job
    L{RUNNING} only if a worker may have it, and a crash re-runs only jobs
    that no worker had (see docs/jobs.md).

    @ivar pool: the pool the jobs run in.
    @ivar journal: where they are written.
    @ivar ttl: seconds a job that ended is kept.
    @ivar maxJobs: jobs not yet ended at most; past it a submit is
        refused with L{errors.PoolBusy}.
    @ivar window: jobs handed to the pool at once, at most (by default its
        workers times its prefetch: enough to keep it busy, no more).
    """

    log = Logger()

    def __init__(
        self,
        pool: ProcessPool,
        journal: Journal,
        *,
        clock: IReactorTime | None = None,
        ttl: float = DEFAULT_JOB_TTL,
        maxJobs: int = DEFAULT_MAX_JOBS,
        window: int | None = None,
        newId: Callable[[], str] | None = None,
    ) -> None:
        """
        @param clock: the clock of delays, deadlines and retention (the
            pool's reactor by default).
        @param newId: makes a new job's id (L{RandomIds} by default).
        """
        self.pool = pool
        self.journal = journal
        self.ttl = ttl
        self.maxJobs = maxJobs
        self.window = window
        self.clock: IReactorTime = pool.reactor if clock is None else clock
        self._newId: Callable[[], str] = RandomIds() if newId is None else newId
        # The jobs that have not ended (and those whose end is being
        # written), by id.
        self._jobs = JobBook()
        self._ready: deque[TrackedJob] = deque()
        self._scheduled: list[tuple[float, int, TrackedJob]] = []
        self._seq = 0
        self._inPool = 0
        self._submitting = 0
        self._timer: IDelayedCall | None = None
        self._timerAt = 0.0
        self._retryTimer: IDelayedCall | None = None
        # The jobs whose end the journal failed to write, by id: written
        # again after WRITE_RETRY (see PoolFeeding._endNotWritten).
        self._unwritten: dict[str, tuple[IDelayedCall, TrackedJob, JobRecord, JobRecord]] = {}
        self._pruneTimer: IDelayedCall | None = None
        self._running = False
        self._stopping: Deferred[None] | None = None
        # Whether the last job offered was taken back (the pool's workers
        # were busy): offer one at a time until one is sent.
        self._poolFull = False
        # How many jobs to write running ahead (see PoolFeeding._handAll),
        # and how many jobs' running writes are not yet durable.
        self._aheadBy = 0
        self._endedWhileWriting = 0
        self._writing = 0
        # The submits of this reactor turn, journaled together (see take).
        self._adding: list[tuple[JobRecord, Callable[[Any], object]]] = []
        self._addCall: IDelayedCall | None = None
        # Submits and waiters told a slice a turn, each slice's replies to
        # a connection in one write (the pool's write batch held).
        self._answers = HandBack(pool.reactor, ANSWERS_PER_TURN, writes=pool.writes, after=self._afterSlice)
        self._accepted = False
        # The journal's own answers likewise, where it hands back slices.
        answers = getattr(journal, "answers", None)
        if isinstance(answers, HandBack):
            answers.writes = pool.writes

    # -- life -----------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Open the journal and pick up the jobs it holds: queued and
        scheduled ones will run; one that was running runs again if its
        task opts into retries, and ends L{INTERRUPTED} if not.

        @return: a C{Deferred} that fires once the journal is open, or
            fails with L{taskd.journal.JournalError}.
        """
        return self.journal.open().addCallback(self._recover)

    def _recover(self, records: list[JobRecord]) -> None:
        self._running = True
        rerun = interrupted = 0
        for record in records:
            job = TrackedJob(record)
            self._jobs[record.id] = job
            if record.state == RUNNING:
                if self._retries(record.function) > 0:
                    rerun += 1
                    job.record = evolve(record, state=QUEUED, started=None)
                    self.journal.update(job.record)
                else:
                    interrupted += 1
                    self._end(job, INTERRUPTED, error=errors.JobInterrupted(
                        "the daemon stopped while the job was running, so it may have "
                        "run in part; its task does not opt into retries, so it was "
                        "not run again"
                    ))
                    continue
            self.enqueueJob(job)
        if records:
            self.log.info("jobs: {total} picked up from the journal ({rerun} run again, "
                          "{interrupted} interrupted)", total=len(records), rerun=rerun,
                          interrupted=interrupted)
        self._pruneTimer = self.clock.callLater(0, self._prune)
        self.feedPool()

    def stop(self) -> Deferred[None]:
        """
        Stop feeding the pool and starting timers; once the jobs handed to
        the pool have ended (the pool's own stop ends them), close the
        journal.  Jobs not yet handed stay in the journal for the next
        start.

        @return: a C{Deferred} that fires when the journal is closed.
        """
        if self._stopping is None:
            self._running = False
            self._stopping = Deferred()
            for timer in (self._timer, self._retryTimer, self._pruneTimer):
                if timer is not None and timer.active():
                    timer.cancel()
            if self._addCall is not None:
                # Submits already taken: journaled before the journal
                # closes, and kept for the next start.
                self._addCall.cancel()
                self._addGroup()
            self._writeEndsNow()
            self.stopIfIdle()
        return self._stopping

    # -- hooks ----------------------------------------------------------------
    #
    # Where a service whose queue is elsewhere (taskd.sharedjobs: the
    # database is the queue) differs from this one, which keeps its queue in
    # memory.  Called by the service itself, never by its callers; a
    # subclass overrides them (and may call them) and nothing else of its
    # queueing.

    def stopIfIdle(self) -> None:
        """
        Hook: called whenever a job leaves the pool, or a stop is asked;
        once a stop is asked and no job is in the pool, close the journal
        (and fire what L{stop} returned).
        """
        if self._stopping is None or self._inPool or self._stopping.called:
            return
        stopping = self._stopping
        self.journal.close().chainDeferred(stopping)

    # -- what clients ask -------------------------------------------------------

    def submit(
        self,
        function: str,
        payload: bytes,
        *,
        runAt: float | None = None,
        key: str | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[tuple[str, bool]]:
        """
        Journal a new job; the C{Deferred} fires once it is durable.

        @param payload: the arguments, as for
            L{taskd.pool.ProcessPool.submitEncoded}.
        @param runAt: when it may start (seconds since the epoch); now if
            C{None}.
        @param key: an idempotency key: while a job with this key is in
            the journal, its id is the answer and nothing is added.
        @param deadline: seconds the job may wait past C{runAt}; past them
            it ends L{EXPIRED} without running.
        @return: a C{Deferred} firing with (the job's id, whether it is an
            earlier job's, found by its key), or failing with
            L{errors.UnknownTask}, L{errors.PoolBusy} (C{maxJobs} jobs have
            not ended) or L{errors.PoolStopping}.
        """
        answer: Deferred[Taken] = Deferred()
        # The caller may cancel its answer (its connection is lost): the
        # job is journaled and runs all the same.
        self.take(
            function, payload, answer.callback, runAt=runAt, key=key, timeout=timeout,
            priority=priority, deadline=deadline,
        )
        return answer

    def take(
        self,
        function: str,
        payload: bytes,
        tell: Callable[[Taken | Failure], object],
        *,
        runAt: float | None = None,
        key: str | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> None:
        """
        L{submit} without a C{Deferred}: what a connection calls for each
        submit line.  The submits of one reactor turn go to the journal as
        one write (L{taskd.journal.Journal.addMany}), and are answered a
        slice at a time once it is durable.

        @param tell: called once with (the job's id, whether it is an
            earlier job's), once the job is durable, or with a C{Failure}
            (at once if the submit is refused: see L{submit}).
        """
        if not self._running:
            tell(Failure(errors.PoolStopping("the daemon is not taking jobs (it is starting or stopping)")))
            return
        if function not in self.pool.registry:
            tell(Failure(errors.UnknownTask(f"no task named {function!r}")))
            return
        unfinished = len(self._jobs) + self._submitting
        if unfinished >= self.maxJobs:
            tell(Failure(errors.PoolBusy(
                f"the daemon holds {unfinished} jobs that have not ended, its limit "
                "(--max-jobs); try again later"
            )))
            return
        now = self.clock.seconds()
        if runAt is None or runAt <= now:
            state, runAt = QUEUED, now if runAt is None else runAt
        else:
            state = SCHEDULED
        record = JobRecord(
            self._newId(), function, payload, state, now, runAt, key, timeout, priority, deadline
        )
        self._submitting += 1
        self._adding.append((record, tell))
        if self._addCall is None:
            self._addCall = self.pool.reactor.callLater(0, self._addGroup)

    def _addGroup(self) -> None:
        """
        Journal the submits taken since the last group, in one write.
        """
        self._addCall = None
        group, self._adding = self._adding, []
        try:
            d = self.journal.addMany([record for record, _ in group])
        except Exception:
            d = fail()
        d.addCallbacks(self._added, self._notAdded, callbackArgs=(group,), errbackArgs=(group,))

    def _added(self, results: list[Added], group: list[tuple[JobRecord, Callable[[Any], object]]]) -> None:
        self._answers.tell(
            (self._accept, (record, result, tell)) for (record, tell), result in zip(group, results)
        )

    def _accept(self, accepted: tuple[JobRecord, Added, Callable[[Any], object]]) -> None:
        """
        One journaled submit: the job is put in line, and its caller told.
        """
        record, result, tell = accepted
        self._submitting -= 1
        if result.existing:
            tell((result.id, True))
            return
        job = TrackedJob(record)
        self._jobs[record.id] = job
        if self._running:
            self.enqueueJob(job)
            self._accepted = True
        tell((record.id, False))

    def _notAdded(self, failure: Failure, group: list[tuple[JobRecord, Callable[[Any], object]]]) -> None:
        self._submitting -= len(group)
        if not isinstance(failure.value, errors.TaskdError):
            # The journal failed (a full disk): nothing of the group was
            # written, and the submitters are told so precisely.
            failure = Failure(errors.JournalUnavailable(
                f"the job was not accepted: {failure.getErrorMessage()}; try again later"
            ))
        self._answers.tell((tell, failure) for _, tell in group)

    def _afterSlice(self) -> None:
        # Once for the jobs a slice of answers put in line.
        if self._accepted:
            self._accepted = False
            self.feedPool()

    def status(self, jobId: str) -> Deferred[tuple[JobRecord, bytes | None]]:
        """
        @return: a C{Deferred} firing with the job's record and its last
            progress report (while it runs), or failing with
            L{errors.UnknownJob}.
        """
        job = self._jobs.get(jobId)
        if job is not None:
            return succeed((job.record, job.progress))
        return self._stored(jobId).addCallback(lambda record: (record, None))

    def wait(
        self, jobId: str, progress: Callable[[bytes], object] | None = None
    ) -> Deferred[bytes]:
        """
        Wait for a job to end.  Cancelling the C{Deferred} stops waiting;
        the job goes on.

        @param progress: called with each progress report (JSON) the job
            makes from now on.
        @return: a C{Deferred} firing with its result (JSON) once it is
            L{DONE}, or failing with its error.
        """
        job = self._jobs.get(jobId)
        if job is None or job.record.state in FINAL_STATES:
            if job is not None:
                return outcome(job.record)
            return self._stored(jobId).addCallback(outcome)

        def stopWaiting(d: Deferred[bytes]) -> None:
            job.waiters[:] = [w for w in job.waiters if w[0] is not d]

        d: Deferred[bytes] = Deferred(stopWaiting)
        job.waiters.append((d, progress))
        return d

    def cancel(self, jobId: str) -> Deferred[JobRecord]:
        """
        Cancel a job: one not yet running ends L{CANCELLED} at once; a
        running one's call is cancelled (its worker is stopped).  A job
        that has ended stays as it is.

        @return: a C{Deferred} firing with the job's record once its end is
            written, or failing with L{errors.UnknownJob}.
        """
        job = self._jobs.get(jobId)
        if job is None:
            return self._stored(jobId)
        done: Deferred[JobRecord] = Deferred()
        job.waiters.append((recordOnEnd(job, done), None))
        state = job.record.state
        if jobId in self._unwritten:
            pass  # It has ended: its end is written again soon.
        elif state in (QUEUED, SCHEDULED):
            self._unqueue(job)
            self._end(job, CANCELLED, error=errors.TaskCancelled("the job was cancelled"))
        elif state == RUNNING and not job.cancelling:
            job.cancelling = True
            if job.call is not None:
                job.call.cancel()
        return done

    def stats(self) -> dict[str, int]:
        """
        @return: the jobs not yet ended, by state.
        """
        counts = self._jobs.counts
        return {
            "jobsQueued": counts[QUEUED],
            "jobsScheduled": counts[SCHEDULED],
            "jobsRunning": counts[RUNNING],
        }

    def _stored(self, jobId: str) -> Deferred[JobRecord]:
        def found(record: JobRecord | None) -> JobRecord:
            if record is None:
                raise errors.UnknownJob(
                    f"no job {jobId!r}: it was never submitted to this daemon, or it "
                    "ended before the daemon's retention (--job-ttl, --max-jobs)"
                )
            return record

        return self.journal.get(jobId).addCallback(found)

    # -- queueing and feeding ---------------------------------------------------

    def _track(self, record: JobRecord) -> TrackedJob:
        # A job this daemon answers for from now on (a shared journal's claims).
        job = self._jobs[record.id] = TrackedJob(record)
        return job

    def _retries(self, function: str) -> int:
        options = self.pool.registry.options(function)
        override = self.pool.config.taskLimits.get(function)
        if override is not None:
            options = options.merged(override)
        return options.retries or 0

    def enqueueJob(self, job: TrackedJob) -> None:
        """
        Hook: C{job} (journaled, not ended) may run: put it in line, on the
        delays' timer if its time has not come.  Then
        L{taskd._jobfeeding.PoolFeeding.feedPool} is called.
        """
        self._seq += 1
        job.seq = self._seq
        if job.record.runAt > self.clock.seconds():
            if job.record.state != SCHEDULED:
                job.record = evolve(job.record, state=SCHEDULED)
            heapq.heappush(self._scheduled, (job.record.runAt, job.seq, job))
            self._arm()
        else:
            if job.record.state == SCHEDULED:
                job.record = evolve(job.record, state=QUEUED)
            self._ready.append(job)

    def _unqueue(self, job: TrackedJob) -> None:
        if job.record.state == SCHEDULED:
            self._scheduled = [e for e in self._scheduled if e[2] is not job]
            heapq.heapify(self._scheduled)
            self._arm()
        else:
            self._ready.remove(job)

    def _arm(self) -> None:
        """
        Set the one timer of the delays: at the earliest scheduled job's
        time.
        """
        if not self._running:
            return
        when = self._scheduled[0][0] if self._scheduled else None
        timer = self._timer
        if timer is not None and timer.active():
            # Compared with the time it was set for: its getTime() is that
            # time give or take a rounding, and a timer set again for
            # every submit is work the reactor does for nothing.
            if when is not None and self._timerAt == when:
                return
            timer.cancel()
        self._timer = None
        if when is not None:
            self._timerAt = when
            self._timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._due)

    def _due(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        while self._scheduled and self._scheduled[0][0] <= now:
            job = heapq.heappop(self._scheduled)[2]
            job.record = evolve(job.record, state=QUEUED)
            self._ready.append(job)
        self._arm()
        self.feedPool()

    # -- retention ---------------------------------------------------------------

    def _prune(self) -> None:
        """
        Remove a small batch of the jobs that ended more than L{ttl}
        seconds ago; go on at once while batches come back full, then
        wait L{PRUNE_INTERVAL}.
        """
        self._pruneTimer = None
        if not self._running:
            return

        def pruned(removed: int) -> None:
            if self._running:
                delay = 0.0 if removed >= PRUNE_BATCH else PRUNE_INTERVAL
                self._pruneTimer = self.clock.callLater(delay, self._prune)

        def failed(failure: Failure) -> None:
            self.log.failure("removing old jobs failed", failure)
            pruned(0)

        self.journal.prune(self.clock.seconds() - self.ttl, PRUNE_BATCH).addCallbacks(pruned, failed)


__all__ = [
    "ANSWERS_PER_TURN", "BUSY_RETRY", "DEFAULT_JOB_TTL", "DEFAULT_MAX_JOBS", "TAKE_BACK_RETRY",
    "WRITE_RETRY", "JobService", "RandomIds", "Taken",
]
