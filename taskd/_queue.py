# -*- test-case-name: tests.test_scheduling -*-
"""
The queue room: the calls waiting for a worker and the policies that pick
the next one (priorities with ageing, per-task concurrency caps and rate
limits).  It knows nothing of workers or processes: the scheduler
(L{taskd.pool}) asks it for "the next call a worker may take now"
(L{CallQueue.next}) and "when may a waiting call become runnable"
(L{CallQueue.wakeAt}), and tells it when a call it let start has left its
worker (L{CallQueue.ended}).

With no policies (every call of priority 0, no task limited) every call
sits in one FIFO, and L{CallQueue.next} is a C{deque.popleft}.

See C{docs/scheduling.md} for the semantics.
"""

from __future__ import annotations

from collections import deque
from itertools import count
from typing import Callable, Generic, Iterator, Mapping, Protocol, TypeVar

from attrs import define, field

from taskd.registry import TaskOptions, parseRate

#: A rate limit's tolerance for floating-point time: a token due at C{t}
#: may be taken at C{t - EPSILON}.
EPSILON = 1e-9


class Queueable(Protocol):
    """
    What the queue needs to know of a call.
    """

    #: The task's name.
    name: str
    #: Its priority (higher runs first).
    priority: int
    #: When it was first queued (the reactor's time); set by L{CallQueue}.
    queuedAt: float
    #: Its place in arrival order; set by L{CallQueue}.
    seq: int


C = TypeVar("C", bound=Queueable)


@define
class TaskLimiter:
    """
    One task's limits and what it uses of them now.

    @ivar concurrency: how many of its calls may run at once (C{None}: any
        number).
    @ivar interval: seconds between two starts, or C{None} for no rate
        limit.  Starts are given slots C{interval} apart (a token bucket
        holding one token): a call may start once its slot has come, and a
        call that starts late (no worker was free) does not push the slots
        after it back unless it is a whole interval late.  So over any
        C{T} seconds at most C{T / interval + 2} calls start, and, while
        calls wait and workers are free, C{T / interval} (plus or minus
        one) do.
    @ivar running: its calls handed to a worker (running, or sent ahead
        into a busy worker's pipe) and not ended.
    @ivar nextStart: the next call's slot.
    """

    concurrency: int | None
    interval: float | None
    running: int = 0
    nextStart: float = float("-inf")

    def mayStart(self, now: float) -> bool:
        """
        @return: whether a call of this task may start at C{now}.
        """
        if self.concurrency is not None and self.running >= self.concurrency:
            return False
        return self.interval is None or now + EPSILON >= self.nextStart

    def start(self, now: float) -> None:
        """
        Count a call that starts at C{now} (a worker took it).
        """
        self.running += 1
        interval = self.interval
        if interval is not None:
            slot = self.nextStart
            self.nextStart = slot + interval if now - slot < interval else now + interval


@define
class CallQueue(Generic[C]):
    """
    The calls waiting for a worker.

    Calls wait in buckets: one per priority for tasks without limits, and
    one per priority and task for limited tasks, each a FIFO.  The next
    call is the head of a bucket whose task may start now with the highest
    I{effective} priority: its priority plus one level per C{agingInterval}
    seconds it has waited; between equals, the one that came first.

    @ivar size: how many calls wait.
    @ivar limiters: the limited tasks (a concurrency cap or a rate), by
        name.
    @ivar defaultPriorities: the tasks with a default priority other than
        0, by name.
    @ivar agingInterval: seconds of waiting per level of priority gained,
        or C{None} for strict priorities (no ageing).
    """

    clock: Callable[[], float]
    agingInterval: float | None = 1.0
    size: int = 0
    limiters: dict[str, TaskLimiter] = field(factory=dict)
    defaultPriorities: dict[str, int] = field(factory=dict)
    # The bucket of priority 0 for tasks without limits: the only one used
    # when no policy is, kept apart so that that case is a plain deque.
    _plain: deque[C] = field(factory=deque)
    # Every other bucket that holds calls: (priority, task name or None).
    _buckets: dict[tuple[int, str | None], deque[C]] = field(factory=dict)
    _seq: Iterator[int] = field(factory=count)

    def configure(self, policies: Mapping[str, TaskOptions]) -> None:
        """
        Set each task's policies (replacing earlier ones).  Calls already
        queued stay in their buckets; call this before any is.

        @param policies: options by task name (see L{TaskOptions}).
        @raise ValueError: for an option out of its range.
        """
        limiters: dict[str, TaskLimiter] = {}
        priorities: dict[str, int] = {}
        for name, options in policies.items():
            options.check()
            if options.priority:
                priorities[name] = options.priority
            if options.concurrency is not None or options.rate is not None:
                interval = None if options.rate is None else 1.0 / parseRate(options.rate)
                old = self.limiters.get(name)
                limiter = TaskLimiter(options.concurrency, interval)
                if old is not None:
                    limiter.running, limiter.nextStart = old.running, old.nextStart
                limiters[name] = limiter
        self.limiters = limiters
        self.defaultPriorities = priorities

    def push(self, call: C) -> None:
        """
        Queue C{call} behind the calls of its bucket.
        """
        call.queuedAt = self.clock()
        call.seq = next(self._seq)
        self.size += 1
        if call.priority == 0 and call.name not in self.limiters:
            self._plain.append(call)
        else:
            self._bucket(call).append(call)

    def pushFront(self, call: C) -> None:
        """
        Put back C{call}, taken by L{next} earlier (and L{ended} since), at
        the front of its bucket, with its first place in arrival order.
        """
        self.size += 1
        if call.priority == 0 and call.name not in self.limiters:
            self._plain.appendleft(call)
        else:
            self._bucket(call).appendleft(call)

    def _key(self, call: C) -> tuple[int, str | None]:
        return (call.priority, call.name if call.name in self.limiters else None)

    def _bucket(self, call: C) -> deque[C]:
        key = self._key(call)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = deque()
        return bucket

    def remove(self, call: C) -> None:
        """
        Take C{call} out of the queue (cancelled, or past its deadline).

        @raise ValueError: if it is not queued.
        """
        if call.priority == 0 and call.name not in self.limiters:
            self._plain.remove(call)
        else:
            key = self._key(call)
            bucket = self._buckets[key]
            bucket.remove(call)
            if not bucket:
                del self._buckets[key]
        self.size -= 1

    def next(self) -> C | None:
        """
        Take the next call a worker may run now: counted as started (for
        its task's concurrency cap and rate) until L{ended}.

        @return: the call, or C{None} if none waits or none may start now.
        """
        if not self._buckets:
            if self._plain:
                self.size -= 1
                return self._plain.popleft()
            return None
        return self._pick()

    def _pick(self) -> C | None:
        now = self.clock()
        aging = self.agingInterval
        best: tuple[int, int] | None = None
        bestKey: tuple[int, str | None] | None = None
        limiters = self.limiters
        candidates = list(self._buckets.items())
        if self._plain:
            candidates.append(((0, None), self._plain))
        for key, bucket in candidates:
            priority, name = key
            if name is not None and not limiters[name].mayStart(now):
                continue
            head = bucket[0]
            if aging is not None:
                priority += int((now - head.queuedAt) // aging)
            rank = (priority, -head.seq)
            if best is None or rank > best:
                best, bestKey = rank, key
        if bestKey is None:
            return None
        if bestKey == (0, None):
            call = self._plain.popleft()
        else:
            bucket = self._buckets[bestKey]
            call = bucket.popleft()
            if not bucket:
                del self._buckets[bestKey]
            if bestKey[1] is not None:
                limiters[bestKey[1]].start(now)
        self.size -= 1
        return call

    def mayStart(self, name: str) -> bool:
        """
        @return: whether a call of task C{name} may start now, as far as its
            limits go (for a call that would not wait in the queue).
        """
        limiter = self.limiters.get(name)
        return limiter is None or limiter.mayStart(self.clock())

    def started(self, name: str) -> None:
        """
        Count a call of task C{name} that starts without having waited in
        the queue (L{next} counts the ones that did).
        """
        limiter = self.limiters.get(name)
        if limiter is not None:
            limiter.start(self.clock())

    def ended(self, call: C) -> bool:
        """
        A call that was let start left its worker (it ended, or it goes
        back to the queue).

        @return: whether that freed a place under a concurrency cap.
        """
        limiter = self.limiters.get(call.name)
        if limiter is None:
            return False
        limiter.running -= 1
        return limiter.concurrency is not None

    def wakeAt(self) -> float | None:
        """
        @return: the earliest time at which a rate limit lets a waiting
            call start, if waiting calls are held back only by rates; or
            C{None} if none is (a cap frees up only when a call ends).
        """
        earliest: float | None = None
        for priority, name in self._buckets:
            if name is None:
                continue
            limiter = self.limiters[name]
            if limiter.concurrency is not None and limiter.running >= limiter.concurrency:
                continue
            if limiter.interval is not None and (earliest is None or limiter.nextStart < earliest):
                earliest = limiter.nextStart
        return earliest

    def drain(self) -> list[C]:
        """
        Take every waiting call out, in no particular order.
        """
        calls = list(self._plain)
        for bucket in self._buckets.values():
            calls.extend(bucket)
        self._plain = deque()
        self._buckets = {}
        self.size = 0
        return calls

    def __iter__(self) -> Iterator[C]:
        yield from self._plain
        for bucket in self._buckets.values():
            yield from bucket

    def byPriority(self) -> dict[str, int]:
        """
        @return: how many calls wait at each priority (their own, not
            aged), by priority as a string (a JSON object's keys).
        """
        counts: dict[str, int] = {}
        if self._plain:
            counts["0"] = len(self._plain)
        for (priority, name), bucket in self._buckets.items():
            counts[str(priority)] = counts.get(str(priority), 0) + len(bucket)
        return dict(sorted(counts.items(), key=lambda item: -int(item[0])))

    def byTask(self) -> dict[str, int]:
        """
        @return: how many calls wait for each task, by name.
        """
        counts: dict[str, int] = {}
        for call in self:
            counts[call.name] = counts.get(call.name, 0) + 1
        return dict(sorted(counts.items()))
