# -*- test-case-name: tests.test_activity -*-
"""
What a running daemon has been doing, kept for people and for Prometheus:
L{Activity} is a L{taskd.observer.PoolObserver} that counts calls by task
and outcome, keeps run times and queue waits as histograms per task, the
ready workers and the calls each ran, the last errors, and calls and
errors per second over the last minutes; the calls running now it reads
from the pool when asked.

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
from typing import Any, Callable, Iterator

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


@define
class _Second:
    at: int
    calls: int = 0
    errors: int = 0


@define(eq=False)
class WorkerRecord:
    """
    A worker process that is ready.

    @ivar served: calls it ran to their end.
    """

    pid: int | None
    startedAt: float
    served: int = 0


class Activity:
    """
    A pool's activity (a L{taskd.observer.PoolObserver}).

    It keeps per call only counts: the calls in flight are the pool's, read
    through C{running} when someone asks.

    @ivar calls: calls ended, by C{(task, outcome)}.
    @ivar runTimes: run times of the calls that ran, by task.
    @ivar waits: how long the calls that ran waited to start, by task.
    @ivar workerStarts: how many workers became ready.
    @ivar workerEnds: workers ended, by reason.
    @ivar workers: the ready workers, by process id.
    @ivar recentErrors: the last L{RECENT_ERRORS} calls that failed, as
        C{(when, number, task, error type)}, oldest first.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
        running: Callable[[], list[ObservedCall]] = list,
    ) -> None:
        """
        @param buckets: the histograms' upper bounds.
        @param running: returns the calls running now (the pool's
            L{taskd.pool.ProcessPool.running}).
        """
        self._clock = clock
        self._buckets = buckets
        self._running = running
        self.calls: dict[tuple[str, str], int] = {}
        self.runTimes: dict[str, Histogram] = {}
        self.waits: dict[str, Histogram] = {}
        self.workerStarts = 0
        self.workerEnds: dict[str, int] = {}
        self.workers: dict[int | None, WorkerRecord] = {}
        self.recentErrors: deque[tuple[float, int, str, str]] = deque(maxlen=RECENT_ERRORS)
        self._seconds: deque[_Second] = deque(maxlen=HISTORY)
        self._now = _Second(-1)

    # -- PoolObserver -------------------------------------------------------

    def callEnded(self, call: ObservedCall, outcome: str, ran: float | None) -> None:
        """
        See L{taskd.observer.PoolObserver.callEnded}.
        """
        name = call.name
        key = (name, outcome)
        calls = self.calls
        calls[key] = calls.get(key, 0) + 1
        if ran is not None:
            # Histogram.observe, twice, inlined: this runs for every call.
            runTimes = self.runTimes.get(name)
            if runTimes is None:
                runTimes = self.runTimes[name] = Histogram(self._buckets)
                self.waits[name] = Histogram(self._buckets)
            bounds = self._buckets
            runTimes.counts[bisect_left(bounds, ran)] += 1
            runTimes.sum += ran
            waited = (call.startedAt or 0.0) - call.submittedAt
            waits = self.waits[name]
            waits.counts[bisect_left(bounds, waited)] += 1
            waits.sum += waited
            worker = self.workers.get(call.pid)
            if worker is not None:
                worker.served += 1
        now = self._clock.seconds()
        second = self._now
        if second.at != int(now):
            second = self._now = _Second(int(now))
            self._seconds.append(second)
        second.calls += 1
        if outcome != RESULT:
            second.errors += 1
            self.recentErrors.append((now, call.number, name, outcome))
            self.log.info(
                "call {number} of task {task} failed: {error}",
                number=call.number,
                task=name,
                error=outcome,
                duration=ran,
                pid=call.pid,
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

    def running(self) -> list[ObservedCall]:
        """
        @return: the calls running in a worker now, in the order they came.
        """
        return self._running()

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

    def snapshot(self, stats: dict[str, Any], chartSeconds: int = 120) -> dict[str, Any]:
        """
        @param stats: the pool's L{taskd.pool.ProcessPool.stats}.
        @return: what the status page shows, as a JSON-able dictionary.
        """
        now = self._clock.seconds()
        running = self.running()
        byPid = {call.pid: call for call in running}
        workers = []
        for w in sorted(self.workers.values(), key=lambda w: w.pid or 0):
            current = byPid.get(w.pid)
            started = None if current is None else current.startedAt
            workers.append(
                {
                    "pid": w.pid,
                    "rss": residentMemory(w.pid),
                    "served": w.served,
                    "task": None if current is None else current.name,
                    "number": None if current is None else current.number,
                    "for": None if started is None else round(now - started, 3),
                }
            )
        return {
            "at": now,
            "workers": workers,
            "running": [
                {
                    "number": call.number,
                    "task": call.name,
                    "age": round(now - (call.startedAt or call.submittedAt), 3),
                    "peer": call.origin,
                    "pid": call.pid,
                }
                for call in running
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
