# -*- test-case-name: tests.test_jobs -*-
"""
The jobs a L{taskd.jobs.JobService} holds in memory: L{TrackedJob} (a
job, its call, its waiters), L{JobBook} (them by id, counted by state as
they change), new jobs' ids (L{RandomIds}), and a job's end as a call's
(L{outcome}).
"""

from __future__ import annotations

import os
from typing import Callable

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed

from taskd.journal import DONE, QUEUED, RUNNING, SCHEDULED, JobRecord, jobError


@define(eq=False)
class TrackedJob:
    """
    A job a L{taskd.jobs.JobService} answers for: its record (as last
    written), its call in the pool, who waits for it, its last progress.
    """

    _record: JobRecord
    # The pool's Deferred, once the job is handed to it.
    call: Deferred[bytes] | None = None
    waiters: list[tuple[Deferred[bytes], Callable[[bytes], object] | None]] = field(factory=list)
    progress: bytes | None = None
    cancelling: bool = False
    seq: int = 0
    # Whether the pool has sent it to a worker (it may have started).
    sent: bool = False
    # Whether it was written running ahead, while the window was full.
    ahead: bool = False
    # The book that counts it (see JobBook), while it is in one.
    book: JobBook | None = None

    @property
    def record(self) -> JobRecord:
        """
        The job as last written; setting it keeps its book's counts.
        """
        return self._record

    @record.setter
    def record(self, record: JobRecord) -> None:
        if self.book is not None and record.state != self._record.state:
            self.book.moved(self._record.state, record.state)
        self._record = record


class JobBook(dict[str, TrackedJob]):
    """
    The jobs a service answers for, by id, with how many are in each state
    (kept as they change: L{JobService.stats} is asked often, by
    C{stats} requests and metrics scrapes, and counting thousands of jobs
    each time took milliseconds of the reactor's).
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = dict.fromkeys((QUEUED, SCHEDULED, RUNNING), 0)

    def moved(self, was: str, now: str) -> None:
        """
        One of its jobs went from state C{was} to state C{now}.
        """
        counts = self.counts
        counts[was] = counts.get(was, 0) - 1
        counts[now] = counts.get(now, 0) + 1

    def __setitem__(self, jobId: str, job: TrackedJob) -> None:
        if jobId in self:
            del self[jobId]
        super().__setitem__(jobId, job)
        job.book = self
        state = job.record.state
        self.counts[state] = self.counts.get(state, 0) + 1

    def __delitem__(self, jobId: str) -> None:
        job = self[jobId]
        super().__delitem__(jobId)
        job.book = None
        self.counts[job.record.state] -= 1



class RandomIds:
    """
    New jobs' ids: 32 hexadecimal digits (128 random bits, as a
    C{uuid4().hex} has 122), read from C{os.urandom} 256 ids at a time
    (one system call per id was a tenth of what a submit cost the
    reactor).
    """

    def __init__(self, perRead: int = 256) -> None:
        self._perRead = perRead
        self._hex = ""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._hex):
            self._hex = os.urandom(16 * self._perRead).hex()
            at = 0
        self._at = at + 32
        return self._hex[at:at + 32]


def recordOnEnd(job: TrackedJob, done: Deferred[JobRecord]) -> Deferred[bytes]:
    """
    @return: a waiter that fires C{done} with the job's record when the
        job ends, whatever its end.
    """
    waiter: Deferred[bytes] = Deferred()
    waiter.addBoth(lambda _: done.callback(job.record))
    return waiter


def outcome(record: JobRecord) -> Deferred[bytes]:
    """
    @return: a job's end as a call's: its result, or its error.
    """
    if record.state == DONE:
        return succeed(record.result if record.result is not None else b"null")
    return fail(jobError(record))


__all__ = ["JobBook", "RandomIds", "TrackedJob", "outcome", "recordOnEnd"]
