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

from bisect import bisect_left, bisect_right
from collections import deque
from typing import Any, Callable, Iterator

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime
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

    def observeAll(self, values: list[float]) -> None:
        """
        Count every value of C{values}, as L{observe} would one at a time
        (the sum is added in the same order), for less: the values are
        sorted, and each bound is looked for once.  C{values} is left
        sorted.
        """
        if not values:
            return
        self.sum = sum(values, self.sum)
        values.sort()
        counts = self.counts
        below = 0
        for i, bound in enumerate(self.bounds):
            atOrBelow = bisect_right(values, bound)
            counts[i] += atOrBelow - below
            below = atOrBelow
        counts[-1] += len(values) - below

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
class TaskCounts:
    """
    What one task's calls have done, in plain numbers: a call's end adds
    one to a count and, if it ran, puts its run time and wait in two
    lists; the histograms take those in when they are read, or once a
    second (L{Activity.fold}), sorted, each bound looked for once (a
    bisection per value and call cost more than the rest of a call's end
    together).

    @ivar results: calls that returned their result.
    @ivar failures: the other calls, by outcome (C{"cancelled"} or the
        error's type).
    @ivar runTimes: run times of the calls that ran, up to the last fold.
    @ivar waits: how long the calls that ran waited to start, up to the
        last fold.
    @ivar ran: run times since the last fold.
    @ivar waited: waits since the last fold.
    """

    name: str
    runTimes: Histogram
    waits: Histogram
    results: int = 0
    failures: dict[str, int] = field(factory=dict)
    ran: list[float] = field(factory=list)
    waited: list[float] = field(factory=list)

    def fold(self) -> None:
        """
        Count the run times and waits since the last fold in the
        histograms.
        """
        if self.ran:
            self.runTimes.observeAll(self.ran)
            self.waits.observeAll(self.waited)
            self.ran = []
            self.waited = []


@define(eq=False)
class WorkerRecord:
    """
    A worker process that is ready.
    """

    pid: int | None
    startedAt: float


class Activity:
    """
    A pool's activity (a L{taskd.observer.PoolObserver}).

    It keeps per call only counts (L{TaskCounts}): the calls in flight are
    the pool's, read through C{running} when someone asks, and the calls
    each worker answered through C{served}.  Calls and errors per second
    come from the counts, read once a second by a timer of its own (from
    its creation until L{stop}), not from each call.

    @ivar tasks: the counts of each task that had a call end, by name.
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
        served: Callable[[], dict[int | None, int]] = dict,
    ) -> None:
        """
        @param buckets: the histograms' upper bounds.
        @param running: returns the calls running now (the pool's
            L{taskd.pool.ProcessPool.running}).
        @param served: returns how many calls each worker answered, by
            process id (the pool's L{taskd.pool.ProcessPool.served}).
        """
        self._clock = clock
        self._buckets = buckets
        self._running = running
        self._served = served
        self.tasks: dict[str, TaskCounts] = {}
        self.workerStarts = 0
        self.workerEnds: dict[str, int] = {}
        self.workers: dict[int | None, WorkerRecord] = {}
        self.recentErrors: deque[tuple[float, int, str, str]] = deque(maxlen=RECENT_ERRORS)
        # (whole second, calls ended before it, errors before it), oldest first.
        self._samples: deque[tuple[int, int, int]] = deque(maxlen=HISTORY + 1)
        self._errors = 0
        self._timer: IDelayedCall | None = None
        self._sample()

    # -- PoolObserver -------------------------------------------------------

    def callEnded(self, call: ObservedCall, outcome: str, ran: float | None) -> None:
        """
        See L{taskd.observer.PoolObserver.callEnded}.
        """
        # This runs for every call: a few additions, nothing more.
        try:
            counts = self.tasks[call.name]
        except KeyError:
            counts = self._newTask(call.name)
        if outcome == RESULT:
            counts.results += 1
        else:
            self._failed(counts, call, outcome, ran)
        if ran is not None:
            counts.ran.append(ran)
            counts.waited.append((call.startedAt or 0.0) - call.submittedAt)

    def _newTask(self, name: str) -> TaskCounts:
        counts = self.tasks[name] = TaskCounts(name, Histogram(self._buckets), Histogram(self._buckets))
        return counts

    def _failed(self, counts: TaskCounts, call: ObservedCall, outcome: str, ran: float | None) -> None:
        counts.failures[outcome] = counts.failures.get(outcome, 0) + 1
        self._errors += 1
        self.recentErrors.append((self._clock.seconds(), call.number, counts.name, outcome))
        self.log.info(
            "call {number} of task {task} failed: {error}",
            number=call.number,
            task=counts.name,
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

    # -- the rates' timer -----------------------------------------------------

    def fold(self) -> None:
        """
        Count the run times and waits of the calls that ended since the
        last fold in their histograms (see L{TaskCounts}); done once a
        second, and before the histograms are read.
        """
        for counts in self.tasks.values():
            counts.fold()

    def _sample(self, second: int | None = None) -> None:
        # Once a second, on the whole second: the counts so far, as of the
        # second the timer was set for (a late timer's calls count in it);
        # and the run times and waits into their histograms, so that the
        # lists of them hold at most a second's.
        self.fold()
        now = self._clock.seconds()
        self._samples.append((int(now) if second is None else second, self.ended, self._errors))
        following = int(now) + 1
        self._timer = self._clock.callLater(following - now, self._sample, following)

    def stop(self) -> None:
        """
        Stop the timer that reads the counts once a second (the daemon is
        stopping); L{rates} then knows nothing after this moment.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- reading --------------------------------------------------------------

    @property
    def ended(self) -> int:
        """
        How many calls ended, of every task and outcome.
        """
        return sum(c.results + sum(c.failures.values()) for c in self.tasks.values())

    @property
    def calls(self) -> dict[tuple[str, str], int]:
        """
        Calls ended, by C{(task, outcome)} (outcomes that never happened
        left out).
        """
        out = {}
        for name, counts in self.tasks.items():
            if counts.results:
                out[(name, RESULT)] = counts.results
            for outcome, n in counts.failures.items():
                out[(name, outcome)] = n
        return out

    @property
    def runTimes(self) -> dict[str, Histogram]:
        """
        Run times of the calls that ran, by task (tasks none of whose
        calls ran left out).
        """
        self.fold()
        return {name: c.runTimes for name, c in self.tasks.items() if c.runTimes.count}

    @property
    def waits(self) -> dict[str, Histogram]:
        """
        How long the calls that ran waited to start, by task (tasks none
        of whose calls ran left out).
        """
        self.fold()
        return {name: c.waits for name, c in self.tasks.items() if c.waits.count}

    def running(self) -> list[ObservedCall]:
        """
        @return: the calls running in a worker now, in the order they came.
        """
        return self._running()

    def rates(self, seconds: int = HISTORY) -> list[tuple[int, int, int]]:
        """
        @return: for each of the last C{seconds} whole seconds (oldest
            first, the current one last), C{(second, calls ended, errors)}.
            Two readings of the counts a second apart give a second's
            figures; what ended since the last reading is the current
            second's.  (When the reactor was held for longer than a
            second, the calls of the seconds its timer missed count in the
            second it was set for.)
        """
        now = int(self._clock.seconds())
        bySecond: dict[int, tuple[int, int]] = {}
        previous: tuple[int, int, int] | None = None
        for sample in (*self._samples, (now + 1, self.ended, self._errors)):
            if previous is not None:
                at = min(sample[0] - 1, now)
                calls, errors = bySecond.get(at, (0, 0))
                bySecond[at] = (calls + sample[1] - previous[1], errors + sample[2] - previous[2])
            previous = sample
        out = []
        for at in range(now - seconds + 1, now + 1):
            calls, errors = bySecond.get(at, (0, 0))
            out.append((at, calls, errors))
        return out

    def snapshot(self, stats: dict[str, Any], chartSeconds: int = 120) -> dict[str, Any]:
        """
        @param stats: the pool's L{taskd.pool.ProcessPool.stats}.
        @return: what the status page shows, as a JSON-able dictionary.
        """
        now = self._clock.seconds()
        running = self.running()
        served = self._served()
        byPid = {call.pid: call for call in running}
        workers = []
        for w in sorted(self.workers.values(), key=lambda w: w.pid or 0):
            current = byPid.get(w.pid)
            started = None if current is None else current.startedAt
            workers.append(
                {
                    "pid": w.pid,
                    "rss": residentMemory(w.pid),
                    "served": served.get(w.pid, 0),
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
