# -*- test-case-name: tests.test_jobs -*-
"""
How a L{taskd.jobs.JobService} feeds its pool: L{PoolFeeding}, a mixin of
the service (as the pool's rooms are of L{taskd.pool.ProcessPool}): ready
jobs handed a window at a time, each written running first and sent to a
worker at once or taken back, and what the pool's answer makes of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import evolve
from twisted.internet.defer import CancelledError, fail
from twisted.python.failure import Failure

from taskd import _json, errors
from taskd._jobbook import TrackedJob, outcome
from taskd.journal import CANCELLED, DONE, EXPIRED, FAILED, INTERRUPTED, QUEUED, RUNNING

if TYPE_CHECKING:
    from collections import deque

    from twisted.internet.interfaces import IDelayedCall, IReactorTime
    from twisted.logger import Logger

    from twisted.internet.defer import Deferred

    from taskd._jobbook import JobBook
    from taskd.journal import JobRecord, Journal
    from taskd.pool import ProcessPool

#: Seconds before a job refused by a full pool queue is offered again.
BUSY_RETRY = 0.5
#: Seconds before a job taken back from a pool whose workers were all busy
#: (see L{taskd.jobs.JobService}) is offered again.
TAKE_BACK_RETRY = 0.1
#: Seconds before a job's change that the journal failed to write (a full
#: disk) is written again: jobs it would have started, a job's end.
WRITE_RETRY = 1.0


class PoolFeeding:
    """
    A room of L{taskd.jobs.JobService}: see this module's docstring.  What
    it uses of the service is declared here, for the type checker.
    """

    if TYPE_CHECKING:
        pool: ProcessPool
        journal: Journal
        clock: IReactorTime
        window: int | None
        log: Logger
        _ready: deque[TrackedJob]
        _inPool: int
        _running: bool
        _poolFull: bool
        _aheadBy: int
        _endedWhileWriting: int
        _writing: int
        _retryTimer: IDelayedCall | None
        _jobs: JobBook
        _stopping: Deferred[None] | None
        _unwritten: dict[str, tuple[IDelayedCall, TrackedJob, JobRecord, JobRecord]]

        def _retries(self, function: str) -> int:
            ...

        def stopIfIdle(self) -> None:
            ...

    def feedPool(self) -> None:
        """
        Hook: called whenever the pool may take more jobs (a job was
        queued, its time came, a job ended, a retry's time came); hand
        ready jobs to the pool while fewer than the window are in it.
        """
        config = self.pool.config
        window = config.workers * config.prefetch if self.window is None else self.window
        # Jobs written running ahead, while the window is full: see
        # _handAll.
        limit = window + self._aheadBy
        if self._poolFull and self._ready:
            if self.pool.stats()["queued"]:
                # Calls still wait in the pool: nothing is written for
                # nothing.
                self._retryLater(TAKE_BACK_RETRY)
                return
            # One more job at a time, until one is sent.
            window = limit = min(window, self._inPool + 1)
        now = self.clock.seconds()
        starting: list[TrackedJob] = []
        while self._running and self._ready and self._inPool < limit:
            job = self._ready.popleft()
            record = job.record
            if record.deadline is not None and now > record.runAt + record.deadline:
                self._end(job, EXPIRED, error=errors.Expired(
                    f"the job waited more than its deadline ({record.deadline:g} s) "
                    "to start; it was not run"
                ))
                continue
            job.ahead = self._inPool >= window
            self._inPool += 1
            job.record = evolve(record, state=RUNNING, started=now)
            starting.append(job)
        if starting:
            self._writing += len(starting)
            # Written before the tasks may start: after a crash, a job the
            # journal does not show as running has not run.  The jobs of
            # one feeding go in one write (one group commit, one sync);
            # each is handed once it is durable, and sent at once or taken
            # back (_hand).
            self.journal.updateMany([job.record for job in starting]).addCallbacks(
                self._handAll, self._notWritten, callbackArgs=(starting,), errbackArgs=(starting,)
            )

    def _handAll(self, _: object, jobs: list[TrackedJob]) -> None:
        """
        C{jobs} are durably running: hand each, to be sent at once or
        taken back.

        Writing jobs running ahead: if jobs ended in the pool while this
        write was being synced, and jobs wait in line, their places stood
        empty for a sync: that many more jobs (up to a window more) are
        written running from now on while the window is full, so that
        short tasks' next jobs are on disk when the workers want them.
        One written ahead that cannot be sent at once when its write is
        durable is taken back quietly (L{_hand}), and halves how many are:
        long tasks keep the workers busy, and nothing is written ahead for
        them for long.
        """
        self._writing -= len(jobs)
        # Their sends to the workers go together: one write per worker.
        writes = self.pool.writes
        writes.hold()
        try:
            for job in jobs:
                self._hand(job)
        finally:
            writes.release()
        ended, self._endedWhileWriting = self._endedWhileWriting, 0
        if ended and self._ready and not self._poolFull:
            config = self.pool.config
            window = config.workers * config.prefetch if self.window is None else self.window
            if self._aheadBy < window:
                self._aheadBy += 1
                self.feedPool()

    def _hand(self, job: TrackedJob) -> None:
        if job.cancelling or job.record.state != RUNNING:
            self._inPool -= 1
            self._end(job, CANCELLED, error=errors.TaskCancelled("the job was cancelled"))
            return
        record = job.record
        pool = self.pool
        deadline = None
        if record.deadline is not None:
            deadline = max(record.runAt + record.deadline - self.clock.seconds(), 0.001)
        call = pool.submitEncoded(
            record.function,
            record.payload,
            timeout=pool.timeoutFor(record.timeout),
            progress=lambda report: self._progress(job, report),
            priority=record.priority,
            deadline=deadline,
            onStart=lambda: self._sent(job),
        )
        refused: list[Failure] = []
        if call.called:  # the pool answered at once: refused (or a fake pool ran it)
            call.addErrback(refused.append)
        if refused and refused[0].check(errors.PoolBusy, errors.PoolStopping):
            # Not started: back to the front of the line, for later.
            self._takeBack(job, BUSY_RETRY)
            return
        if refused:
            self._ended(refused[0], job)
            return
        if not job.sent and job.ahead:
            # Written ahead, and the workers are still busy: back in line,
            # and no more written ahead until they wait for jobs again.
            call.addErrback(lambda _: None)
            call.cancel()
            self._aheadBy //= 2
            self._takeBack(job, TAKE_BACK_RETRY)
            return
        if not job.sent:
            # Queued in the pool, behind calls: a job that waited there
            # marked running would end interrupted after a crash although
            # it never started.  Taken back (a queued call is cancelled
            # before any worker has it), it waits as queued.
            call.addErrback(lambda _: None)
            call.cancel()
            if not self._poolFull:
                self.log.info("jobs: the pool's workers are busy with calls; jobs wait "
                              "in the journal, queued, until one is free")
            self._poolFull = True
            self._takeBack(job, TAKE_BACK_RETRY)
            return
        self._poolFull = False
        job.call = call
        call.addCallbacks(self._ran, self._ended, callbackArgs=(job,), errbackArgs=(job,))

    def _sent(self, job: TrackedJob) -> None:
        """
        The pool sent C{job}'s call to a worker (again, for a retry).
        """
        job.sent = True

    def _takeBack(self, job: TrackedJob, retry: float) -> None:
        """
        C{job} was handed to the pool and did not start: it is queued
        again, at the head of the line, and offered again after C{retry}
        seconds (or when a job ends).
        """
        self._inPool -= 1
        job.record = evolve(job.record, state=QUEUED, started=None)
        self.journal.update(job.record)
        self._ready.appendleft(job)
        self._retryLater(retry)
        self.stopIfIdle()

    def _retryLater(self, delay: float) -> None:
        if self._running and self._retryTimer is None:
            self._retryTimer = self.clock.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retryTimer = None
        self.feedPool()

    def _notWritten(self, failure: Failure, jobs: list[TrackedJob]) -> None:
        """
        C{jobs}' running could not be written (the journal failed: a full
        disk): the journal still holds them queued, and so do they, at the
        head of the line, offered again after L{WRITE_RETRY}.  None was
        handed to the pool; none is lost.
        """
        self._inPool -= len(jobs)
        self._writing -= len(jobs)
        self.log.warn("jobs: {n} jobs could not be written running ({error}); they wait, "
                      "queued, and are offered again in {s} s", n=len(jobs),
                      error=failure.getErrorMessage(), s=WRITE_RETRY)
        for job in reversed(jobs):
            job.record = evolve(job.record, state=QUEUED, started=None)
            if job.cancelling:
                job.cancelling = False
                self._end(job, CANCELLED, error=errors.TaskCancelled("the job was cancelled"))
            else:
                self._ready.appendleft(job)
        self._retryLater(WRITE_RETRY)
        self.stopIfIdle()

    def _progress(self, job: TrackedJob, report: bytes) -> None:
        job.progress = report
        for _, progress in list(job.waiters):
            if progress is not None:
                try:
                    progress(report)
                except Exception:
                    self.log.failure("a job's progress watcher failed")

    def _ran(self, result: bytes, job: TrackedJob) -> None:
        self._inPool -= 1
        if self._writing:
            self._endedWhileWriting += 1
        job.call = None
        self._end(job, DONE, result=result)
        self.feedPool()
        self.stopIfIdle()

    def _ended(self, failure: Failure, job: TrackedJob) -> None:
        self._inPool -= 1
        if self._writing:
            self._endedWhileWriting += 1
        job.call = None
        error = failure.value
        if isinstance(error, CancelledError) or job.cancelling:
            self._end(job, CANCELLED, error=errors.TaskCancelled("the job was cancelled"))
        elif isinstance(error, errors.PoolStopping):
            self._stoppedWhileRunning(job, error)
        elif isinstance(error, errors.Expired):
            self._end(job, EXPIRED, error=error)
        elif isinstance(error, errors.TaskdError):
            self._end(job, FAILED, error=error)
        else:
            self.log.failure("unexpected error in job {id}", failure, id=job.record.id)
            self._end(job, FAILED, error=errors.TaskdError(f"internal error: {error!r}"))
        self.feedPool()
        self.stopIfIdle()

    # -- ending ------------------------------------------------------------------

    def _end(
        self,
        job: TrackedJob,
        state: str,
        result: bytes | None = None,
        error: errors.TaskdError | None = None,
    ) -> None:
        """
        Write the job's end; once it is durable, tell its waiters and
        forget it (the journal answers for it from then on).
        """
        was = job.record
        job.record = evolve(
            was,
            state=state,
            finished=self.clock.seconds(),
            result=result,
            error=None if error is None else _json.encodeASCII(error.toDict()),
        )
        job.progress = None
        self._writeEnd(job, job.record, was)

    def _writeEnd(self, job: TrackedJob, ended: JobRecord, was: JobRecord) -> None:
        self._unwritten.pop(ended.id, None)
        job.record = ended
        try:
            d = self.journal.update(ended)
        except Exception:
            d = fail()
        d.addCallbacks(self._endWritten, self._endNotWritten, callbackArgs=(job,),
                       errbackArgs=(job, ended, was))

    def _endWritten(self, _: object, job: TrackedJob) -> None:
        self._fire(job)
        if self._jobs.get(job.record.id) is job:
            del self._jobs[job.record.id]

    def _endNotWritten(self, failure: Failure, job: TrackedJob, ended: JobRecord, was: JobRecord) -> None:
        """
        The journal failed to write C{job}'s end (a full disk): the job is
        answered for as the journal holds it (C{was}), its waiters wait,
        and its end is written again after L{WRITE_RETRY} (at once when a
        stop is asked).  Once a stop is asked, an end not written fails
        its waiters with L{errors.JournalUnavailable}, and the journal
        answers for the job as it holds it.
        """
        job.record = was
        if self._stopping is None:
            timer = self.clock.callLater(WRITE_RETRY, self._writeEnd, job, ended, was)
            self._unwritten[ended.id] = (timer, job, ended, was)
            return
        error = errors.JournalUnavailable(
            f"the job ended {ended.state}, but the journal could not write it "
            f"({failure.getErrorMessage()}); the journal holds it as {was.state}"
        )
        waiters, job.waiters = job.waiters, []
        for waiter, _ in waiters:
            if not waiter.called:
                waiter.errback(error)
        if self._jobs.get(ended.id) is job:
            del self._jobs[ended.id]

    def _writeEndsNow(self) -> None:
        """
        Write now the ends waiting for L{WRITE_RETRY} (a stop is asked).
        """
        for timer, job, ended, was in list(self._unwritten.values()):
            timer.cancel()
            self._writeEnd(job, ended, was)

    def _fire(self, job: TrackedJob) -> None:
        waiters, job.waiters = job.waiters, []
        for waiter, _ in waiters:
            if not waiter.called:
                outcome(job.record).chainDeferred(waiter)

    def _stoppedWhileRunning(self, job: TrackedJob, error: errors.PoolStopping) -> None:
        """
        The pool stopped with the job in it: if the pool says it never
        started, or its task opts into retries, it is queued for the next
        start; otherwise it is interrupted.
        """
        if getattr(error, "started", None) is False or self._retries(job.record.function) > 0:
            job.record = evolve(job.record, state=QUEUED, started=None)
            self.journal.update(job.record)
            return
        self._end(job, INTERRUPTED, error=errors.JobInterrupted(
            "the daemon stopped while the job was running, so it may have run in "
            "part; its task does not opt into retries, so it will not run again"
        ))


__all__ = ["BUSY_RETRY", "TAKE_BACK_RETRY", "WRITE_RETRY", "PoolFeeding"]
