# -*- test-case-name: tests.test_activity -*-
"""
What a running daemon has been doing, kept for people and for Prometheus:
L{Activity} is a L{taskd.observer.PoolObserver} that counts calls by task
and outcome, keeps run times and queue waits as histograms per task, the
calls in flight (each with a daemon-wide number), the workers and what
they run, the last errors, and calls and errors per second over the last
minutes.

It is plain Python (no dependency): L{taskd.metrics} reads it when
Prometheus scrapes, and L{taskd.web}'s status page when it sends an
update.  Every label it keeps is from a closed set: task names (the pool
only tells of calls of registered tasks), outcomes (C{"result"},
C{"cancelled"} and the error types of L{taskd.errors}) and worker end
reasons (L{taskd.observer.WORKER_END_REASONS}).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from itertools import count
from typing import Any, Iterator

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from taskd.observer import RESULT, ObservedCall

#: Upper bounds, in seconds, of the run time and queue wait histograms'
#: buckets (the last one, C{+Inf}, is implied).
DEFAULT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 300.0,
)

#: How many seconds of calls per second the status page's chart shows.
HISTORY = 300

#: How many errors the status page lists.
RECENT_ERRORS = 20


@define
class Histogram:
    """
    Counts of observed values by bucket, as Prometheus keeps them.

    @ivar bounds: the buckets' upper bounds, ascending.
    @ivar counts: values in each bucket alone (not cumulative); one more
        than C{bounds}, for C{+Inf}.
    @ivar sum: the sum of the values.
    """

    bounds: tuple[float, ...]
    counts: list[int] = field()
    sum: float = 0.0

    @counts.default
    def _zeros(self) -> list[int]:
        return [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """
        Count C{value}.
        """
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """
        How many values were observed.
        """
        return sum(self.counts)

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """
        @return: each bucket's upper bound (C{float("inf")} last) with the
            number of values at or below it.
        """
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            yield bound, total


@define(eq=False)
class CallRecord:
    """
    A call in flight.

    @ivar number: its daemon-wide number (from 1, in the order calls were
        accepted).
    @ivar pid: the worker running it, once it started.
    @ivar startedAt: when it started running, or C{None} while queued.
    """

    number: int
    call: ObservedCall
    queuedAt: float
    pid: int | None = None
    startedAt: float | None = None


@define(eq=False)
class WorkerRecord:
    """
    A worker process that is ready.

    @ivar served: calls it answered.
    @ivar current: the call it runs, if any.
    """

    pid: int | None
    startedAt: float
    served: int = 0
    current: CallRecord | None = None


@define
class _Second:
    at: int
    calls: int = 0
    errors: int = 0


class Activity:
    """
    A pool's activity (a L{taskd.observer.PoolObserver}).

    @ivar calls: calls ended, by C{(task, outcome)}.
    @ivar runTimes: run times of the calls that started, by task.
    @ivar waits: how long calls waited before they started, by task.
    @ivar workerStarts: how many workers became ready.
    @ivar workerEnds: workers ended, by reason.
    @ivar inFlight: the calls accepted and not yet ended, by number.
    @ivar workers: the ready workers, by process id.
    @ivar recentErrors: the last L{RECENT_ERRORS} calls that failed, as
        C{(when, number, task, error type)}, oldest first.
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime, buckets: tuple[float, ...] = DEFAULT_BUCKETS
    ) -> None:
        self._clock = clock
        self._buckets = buckets
        self._numbers = count(1)
        self.calls: dict[tuple[str, str], int] = {}
        self.runTimes: dict[str, Histogram] = {}
        self.waits: dict[str, Histogram] = {}
        self.workerStarts = 0
        self.workerEnds: dict[str, int] = {}
        self.inFlight: dict[int, CallRecord] = {}
        self._records: dict[ObservedCall, CallRecord] = {}
        self.workers: dict[int | None, WorkerRecord] = {}
        self.recentErrors: deque[tuple[float, int, str, str]] = deque(maxlen=RECENT_ERRORS)
        self._seconds: deque[_Second] = deque(maxlen=HISTORY)

    # -- PoolObserver -------------------------------------------------------

    def callQueued(self, call: ObservedCall) -> None:
        """
        See L{taskd.observer.PoolObserver.callQueued}.
        """
        record = CallRecord(next(self._numbers), call, self._clock.seconds())
        self.inFlight[record.number] = record
        self._records[call] = record

    def callStarted(self, call: ObservedCall, pid: int | None, waited: float) -> None:
        """
        See L{taskd.observer.PoolObserver.callStarted}.
        """
        record = self._records.get(call)
        if record is None:
            return
        record.pid = pid
        record.startedAt = self._clock.seconds()
        histogram = self.waits.get(call.name)
        if histogram is None:
            histogram = self.waits[call.name] = Histogram(self._buckets)
        histogram.observe(waited)
        worker = self.workers.get(pid)
        if worker is not None:
            worker.current = record

    def callEnded(self, call: ObservedCall, outcome: str, ran: float | None) -> None:
        """
        See L{taskd.observer.PoolObserver.callEnded}.
        """
        record = self._records.pop(call, None)
        if record is None:
            return
        del self.inFlight[record.number]
        key = (call.name, outcome)
        self.calls[key] = self.calls.get(key, 0) + 1
        if ran is not None:
            histogram = self.runTimes.get(call.name)
            if histogram is None:
                histogram = self.runTimes[call.name] = Histogram(self._buckets)
            histogram.observe(ran)
        worker = self.workers.get(record.pid)
        if worker is not None and worker.current is record:
            worker.current = None
            if ran is not None:
                worker.served += 1
        now = self._clock.seconds()
        second = self._second(now)
        second.calls += 1
        if outcome != RESULT:
            second.errors += 1
            self.recentErrors.append((now, record.number, call.name, outcome))
            self.log.info(
                "call {number} of task {task} failed: {error}",
                number=record.number,
                task=call.name,
                error=outcome,
                duration=ran,
                pid=record.pid,
                peer=call.origin,
            )

    def workerStarted(self, pid: int | None) -> None:
        """
        See L{taskd.observer.PoolObserver.workerStarted}.
        """
        self.workerStarts += 1
        self.workers[pid] = WorkerRecord(pid, self._clock.seconds())

    def workerEnded(self, pid: int | None, reason: str) -> None:
        """
        See L{taskd.observer.PoolObserver.workerEnded}.
        """
        self.workerEnds[reason] = self.workerEnds.get(reason, 0) + 1
        self.workers.pop(pid, None)

    # -- reading --------------------------------------------------------------

    def running(self) -> list[CallRecord]:
        """
        @return: the calls running in a worker now, oldest first.
        """
        return sorted(
            (r for r in self.inFlight.values() if r.startedAt is not None),
            key=lambda r: r.number,
        )

    def cancel(self, number: int) -> bool:
        """
        Cancel the call in flight with daemon-wide number C{number}: its
        caller gets a C{cancelled} error, and its worker (if it runs) is
        replaced.

        @return: whether there was such a call.
        """
        record = self.inFlight.get(number)
        if record is None:
            return False
        record.call.deferred.cancel()
        return True

    def rates(self, seconds: int = HISTORY) -> list[tuple[int, int, int]]:
        """
        @return: for each of the last C{seconds} whole seconds (oldest
            first, the current one last), C{(second, calls ended, errors)}.
        """
        now = int(self._clock.seconds())
        byTime = {s.at: s for s in self._seconds}
        out = []
        for at in range(now - seconds + 1, now + 1):
            s = byTime.get(at)
            out.append((at, 0, 0) if s is None else (at, s.calls, s.errors))
        return out

    def _second(self, now: float) -> _Second:
        at = int(now)
        if self._seconds and self._seconds[-1].at == at:
            return self._seconds[-1]
        second = _Second(at)
        self._seconds.append(second)
        return second

    def snapshot(self, stats: dict[str, Any], chartSeconds: int = 120) -> dict[str, Any]:
        """
        @param stats: the pool's L{taskd.pool.ProcessPool.stats}.
        @return: what the status page shows, as a JSON-able dictionary.
        """
        now = self._clock.seconds()
        workers = []
        for w in sorted(self.workers.values(), key=lambda w: w.pid or 0):
            current = w.current
            workers.append(
                {
                    "pid": w.pid,
                    "rss": residentMemory(w.pid),
                    "served": w.served,
                    "task": None if current is None else current.call.name,
                    "number": None if current is None else current.number,
                    "for": None
                    if current is None or current.startedAt is None
                    else round(now - current.startedAt, 3),
                }
            )
        return {
            "at": now,
            "workers": workers,
            "running": [
                {
                    "number": r.number,
                    "task": r.call.name,
                    "age": round(now - (r.startedAt or r.queuedAt), 3),
                    "peer": r.call.origin,
                    "pid": r.pid,
                }
                for r in self.running()
            ],
            "queued": stats.get("queuedByTask", {}),
            "pool": {k: v for k, v in stats.items() if isinstance(v, int)},
            "errors": [
                {"at": at, "number": n, "task": task, "type": kind}
                for at, n, task, kind in reversed(self.recentErrors)
            ],
            "rates": [[c, e] for _, c, e in self.rates(chartSeconds)],
        }


def residentMemory(pid: int | None) -> int | None:
    """
    @return: the resident memory of process C{pid} in bytes, from
        C{/proc}; C{None} where it cannot be read.
    """
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * _PAGE_SIZE


def _pageSize() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4096


_PAGE_SIZE = _pageSize()
