"""
Tests for the scheduling policies (L{taskd._queue} and its use by
L{taskd.pool}): priorities with ageing, per-task concurrency caps, rate
limits and deadlines, on the fake process reactor with an exact clock.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import SynchronousTestCase

from taskd import errors
from taskd.config import PoolConfig
from taskd.pool import ProcessPool
from taskd.registry import Registry, TaskOptions, parseRate

from tests.fakes import FakeProcess, FakeProcessReactor, PoolTestsMixin
from tests.test_reliability import DaemonTestCase, report


def schedulingRegistry() -> Registry:
    reg = Registry()
    reg.register(lambda *a: None, "add")
    reg.register(lambda *a: None, "urgent", priority=5)
    reg.register(lambda *a: None, "mail", concurrency=1)
    reg.register(lambda *a: None, "pair", concurrency=2)
    reg.register(lambda *a: None, "smtp", rate="10/s")
    return reg


def sent(process: FakeProcess) -> list[tuple[str, Any]]:
    """
    @return: the (task, first argument) of each call sent to C{process}.
    """
    return [(name, payload["args"][0]) for name, payload in process.requests()]


def holder(reactor: FakeProcessReactor, item: tuple[str, Any]) -> FakeProcess:
    """
    @return: the worker process C{item} (as L{sent} shows it) was sent to.
    """
    [process] = [p for p in reactor.processes if item in sent(p)]
    return process


class LookupTimeout(Exception):
    """
    An exception type defined outside C{builtins}.
    """


class SchedulingMixin(PoolTestsMixin):
    def pool(self, workers: int = 1, **kw: Any) -> tuple[ProcessPool, FakeProcessReactor]:
        kw.setdefault("registry", schedulingRegistry())
        kw.setdefault("maxQueue", 100_000)
        return self.startedPool(workers, **kw)


class OptionsTests(SynchronousTestCase):
    def test_taskOptions(self) -> None:
        """
        C{@task(priority=, concurrency=, rate=)} keeps the options by task
        name; a task without any has none.
        """
        reg = Registry()

        @reg.task(name="m", priority=-3, concurrency=2, rate="5/m")
        def m() -> None: ...

        reg.register(lambda: None, "plain")
        self.assertEqual(reg.options("m"), TaskOptions(-3, 2, "5/m"))
        self.assertEqual(reg.options("plain"), TaskOptions())
        self.assertEqual(reg.optionsByName(), {"m": TaskOptions(-3, 2, "5/m")})

    def test_retryOptions(self) -> None:
        """
        C{retryOn} takes exception classes or names and keeps names, as a
        worker reports them: bare for builtins, with their module for
        others.
        """
        reg = Registry()

        @reg.task(name="r", retries=3, backoff=0.5, retryOn=(ConnectionError, "mail.Bounce", LookupTimeout))
        def r() -> None: ...

        self.assertEqual(
            reg.options("r"),
            TaskOptions(retries=3, backoff=0.5, retryOn=("ConnectionError", "mail.Bounce", f"{__name__}.LookupTimeout")),
        )
        self.assertEqual(
            TaskOptions(priority=1, retries=2).merged(TaskOptions(retries=0, backoff=3.0)),
            TaskOptions(priority=1, retries=0, backoff=3.0),
        )

    def test_badOptions(self) -> None:
        """
        An option out of its range raises C{ValueError} naming the task and
        the option, at the decorator.
        """
        reg = Registry()
        cases = [
            ({"priority": 101}, "task 'x': priority must be a whole number from -100 to 100, not 101"),
            ({"priority": True}, "task 'x': priority must be a whole number from -100 to 100, not True"),
            ({"concurrency": 0}, "task 'x': concurrency must be a whole number of at least 1, not 0"),
            ({"rate": "10"}, "task 'x': rate '10' must be COUNT/s, COUNT/m or COUNT/h (such as '10/s')"),
            ({"rate": "ten/s"}, "task 'x': rate 'ten/s': 'ten' is not a number"),
            ({"rate": "0/s"}, "task 'x': rate '0/s': the count must be a positive number"),
            ({"retries": -1}, "task 'x': retries must be a whole number from 0 to 100, not -1"),
            ({"retries": 2.0}, "task 'x': retries must be a whole number from 0 to 100, not 2.0"),
            ({"backoff": -1}, "task 'x': backoff must be a number of seconds from 0 to 3600, not -1"),
            ({"backoff": "1"}, "task 'x': backoff must be a number of seconds from 0 to 3600, not '1'"),
            ({"retryOn": (42,)}, "task 'x': retryOn must hold exception classes or their names, not 42"),
            (
                {"retires": 3},
                "task 'x': unknown option 'retires' (options: priority, concurrency, rate, retries, backoff, retryOn, mode)",
            ),
        ]
        for options, message in cases:
            e = self.assertRaises(ValueError, reg.task, name="x", **options)
            self.assertEqual(str(e), message)
            e = self.assertRaises(ValueError, reg.register, lambda: None, "x", **options)
            self.assertEqual(str(e), message)
        self.assertNotIn("x", reg)

    def test_parseRate(self) -> None:
        """
        Rates are counts per second, minute or hour.
        """
        self.assertEqual([parseRate(r) for r in ("10/s", "30/m", "7200/h", "0.5/s")], [10.0, 0.5, 2.0, 0.5])

    def test_configOverrides(self) -> None:
        """
        L{PoolConfig.taskLimits} overrides the options it sets, and keeps
        the task's others; a bad one raises C{ValueError} naming it.
        """
        pool, reactor = SchedulingTests.startedFor(
            self, taskLimits={"mail": TaskOptions(concurrency=3, rate="1/s"), "add": TaskOptions(priority=7)}
        )
        queue = pool._queue
        self.assertEqual((queue.limiters["mail"].concurrency, queue.limiters["mail"].interval), (3, 1.0))
        self.assertEqual(queue.defaultPriorities, {"urgent": 5, "add": 7})
        e = self.assertRaises(ValueError, PoolConfig, taskLimits={"m": TaskOptions(concurrency=-1)})
        self.assertEqual(str(e), "taskLimits['m']: concurrency must be a whole number of at least 1, not -1")

    def test_limitsForUnknownTasks(self) -> None:
        """
        Task limits for a name no task module registers (a typo, say) fail
        the pool's start, naming them, rather than limiting nothing.
        """
        reactor = FakeProcessReactor()
        pool = ProcessPool(
            reactor,
            tasks=[],
            workers=1,
            registry=schedulingRegistry(),
            taskLimits={"send_mial": TaskOptions(rate="1/s"), "mail": TaskOptions(concurrency=2), "zz": TaskOptions(priority=1)},
        )
        e = self.failureResultOf(pool.start(), ValueError).value
        self.assertEqual(str(e), "task limits are set for 'send_mial', 'zz', which no task module registers")
        self.assertEqual(reactor.processes, [])


class SchedulingTests(SchedulingMixin, SynchronousTestCase):
    @staticmethod
    def startedFor(case: Any, **kw: Any) -> tuple[ProcessPool, FakeProcessReactor]:
        reactor = FakeProcessReactor()
        case.addCleanup(reactor.closeAll)
        pool = ProcessPool(reactor, tasks=[], workers=1, registry=schedulingRegistry(), **kw)
        pool.start()
        for p in reactor.processes:
            p.ready()
        return pool, reactor

    # -- priorities ------------------------------------------------------

    def test_priorityOrder(self) -> None:
        """
        Queued calls start highest priority first, in arrival order within
        a priority; a task's default priority applies unless the call gives
        one.
        """
        pool, reactor = self.pool(agingInterval=None)
        p = reactor.processes[0]
        ds = [pool.submit("add", [0])]
        for i, priority in [(1, 0), (2, 5), (3, 2), (4, 5), (5, -1), (6, None)]:
            ds.append(pool.submit("add", [i], priority=priority))
        ds.append(pool.submit("urgent", [7]))
        ds.append(pool.submit("urgent", [8], priority=-100))
        self.assertEqual(
            pool.stats()["queuedByPriority"], {"5": 3, "2": 1, "0": 2, "-1": 1, "-100": 1}
        )
        for _ in range(len(ds)):
            p.send(b"R0")
        self.assertEqual(
            [arg for _, arg in sent(p)], [0, 2, 4, 7, 3, 1, 6, 5, 8]
        )
        for d in ds:
            self.successResultOf(d)

    def test_badPriority(self) -> None:
        """
        A priority out of range, or not a whole number, fails the call with
        L{errors.BadRequest}; serving goes on.
        """
        pool, reactor = self.pool()
        for bad in (101, -101, 1.5, True):
            f = self.failureResultOf(pool.submit("add", [1], priority=bad), errors.BadRequest)
            self.assertEqual(f.value.message, "priority must be a whole number from -100 to 100")
        d = pool.submit("add", [1], priority=100)
        self.assertEqual(sent(reactor.processes[0]), [("add", 1)])
        self.assertNoResult(d)

    def test_ageingBound(self) -> None:
        """
        With C{agingInterval=N}, a call of priority C{p} gains a level per
        C{N} seconds waited: against a steady stream of priority-C{q} calls
        (one arriving as each call ends) it starts exactly C{(q - p) * N}
        seconds after it was queued.
        """
        pool, reactor = self.pool(agingInterval=2.0)
        p = reactor.processes[0]
        pool.submit("add", [0])
        waiting = pool.submit("add", ["low"], priority=-1)
        started = {}
        for k in range(1, 20):
            reactor.advance(2.0)
            pool.submit("add", [k], priority=2)
            p.send(b"R0")
            started[reactor.seconds()] = sent(p)[-1][1]
            if started[reactor.seconds()] == "low":
                break
        # (2 - -1) * 2 = 6 seconds: calls 1 and 2 went first, then it.
        self.assertEqual(started, {2.0: 1, 4.0: 2, 6.0: "low"})
        p.send(b"R0")
        self.successResultOf(waiting)

    def test_strictPrioritiesStarve(self) -> None:
        """
        Without ageing (C{agingInterval=None}) the same stream keeps the
        low-priority call waiting: ageing is what bounds its wait.
        """
        pool, reactor = self.pool(agingInterval=None)
        p = reactor.processes[0]
        pool.submit("add", [0])
        waiting = pool.submit("add", ["low"], priority=-1)
        for k in range(1, 50):
            reactor.advance(2.0)
            pool.submit("add", [k], priority=2)
            p.send(b"R0")
        self.assertNotIn(("add", "low"), sent(p))
        self.assertNoResult(waiting)

    def test_lateArrivalsDoNotOvertake(self) -> None:
        """
        A call of priority C{q} arriving C{(q - p) * N} seconds or more
        after a queued call of priority C{p} does not overtake it.
        """
        pool, reactor = self.pool(agingInterval=1.0)
        p = reactor.processes[0]
        pool.submit("add", [0])
        pool.submit("add", ["a"], priority=0)
        reactor.advance(3)
        pool.submit("add", ["b"], priority=3)
        reactor.advance(100)
        p.send(b"R0")
        p.send(b"R0")
        self.assertEqual([arg for _, arg in sent(p)], [0, "a", "b"])

    # -- concurrency caps ----------------------------------------------

    def test_capLetsOtherTasksPass(self) -> None:
        """
        At most C{concurrency} calls of a capped task run at once; calls of
        other tasks queued behind its waiting calls run on the free workers
        meanwhile, and a freed place goes to the next capped call.
        """
        pool, reactor = self.pool(workers=3)
        ds = [pool.submit("mail", [i]) for i in range(3)]
        ds.append(pool.submit("add", ["x"]))
        a, c = holder(reactor, ("mail", 0)), holder(reactor, ("add", "x"))
        self.assertEqual(sorted(len(sent(p)) for p in reactor.processes), [0, 1, 1])
        self.assertEqual((sent(a), sent(c)), ([("mail", 0)], [("add", "x")]))
        self.assertEqual(pool.stats()["queuedByTask"], {"mail": 2})
        self.assertEqual(pool.stats()["idle"], 1)
        c.send(b"R0")
        ds.append(pool.submit("add", ["y"]))
        self.assertEqual(sent(c)[-1], ("add", "y"))
        a.send(b"R0")
        holder(reactor, ("mail", 1)).send(b"R0")
        holder(reactor, ("mail", 2)).send(b"R0")
        c.send(b"R0")
        for d in ds:
            self.successResultOf(d)
        self.assertEqual(pool.stats()["queued"], 0)

    def test_capFreedByTimeoutFeedsIdleWorker(self) -> None:
        """
        When a capped call ends without its worker taking the next one (it
        timed out and its worker is killed), the next capped call goes to
        an idle worker at once.
        """
        pool, reactor = self.pool(workers=2)
        first = pool.submit("mail", [1], timeout=5)
        second = pool.submit("mail", [2])
        a = holder(reactor, ("mail", 1))
        [b] = [p for p in reactor.processes if p is not a]
        self.assertEqual((sent(a), sent(b)), ([("mail", 1)], []))
        reactor.advance(5)
        self.failureResultOf(first, errors.TaskTimeout)
        self.assertEqual(sent(b), [("mail", 2)])
        b.send(b"R0")
        self.successResultOf(second)

    def test_capCountsCallsSentAhead(self) -> None:
        """
        With C{prefetch}, a capped call sent ahead into a busy worker's pipe
        counts as running: no more than C{concurrency} are handed out,
        while other tasks are sent ahead past them.
        """
        pool, reactor = self.pool(workers=1, prefetch=4)
        p = reactor.processes[0]
        ds = [pool.submit("pair", [i]) for i in range(4)]
        ds.append(pool.submit("add", ["x"]))
        self.assertEqual(sent(p), [("pair", 0), ("pair", 1), ("add", "x")])
        self.assertEqual(pool.stats()["queuedByTask"], {"pair": 2})
        p.send(b"R0")
        self.assertEqual(sent(p)[3:], [("pair", 2)])
        p.send(b"R0")
        self.assertEqual(sent(p)[4:], [("pair", 3)])
        for _ in range(3):
            p.send(b"R0")
        for d in ds:
            self.successResultOf(d)

    def test_capAfterCrash(self) -> None:
        """
        Calls sent ahead to a worker that dies go back to the queue and give
        their places under the cap back: the crashed call's and theirs are
        free for the calls that run next.
        """
        pool, reactor = self.pool(workers=1, prefetch=4)
        old = reactor.processes[0]
        ds = [pool.submit("pair", [i]) for i in range(4)]
        old.exit(None, signal.SIGKILL)
        self.failureResultOf(ds[0], errors.WorkerCrashed)
        new = reactor.processes[1]
        new.ready()
        self.assertEqual(sent(new), [("pair", 1), ("pair", 2)])
        self.assertEqual(pool._queue.limiters["pair"].running, 2)
        for _ in range(3):
            new.send(b"R0")
        self.assertEqual(sent(new)[2:], [("pair", 3)])
        for d in ds[1:]:
            self.successResultOf(d)
        self.assertEqual(pool._queue.limiters["pair"].running, 0)

    def test_capWithCancel(self) -> None:
        """
        Cancelling a running capped call frees its place.
        """
        pool, reactor = self.pool(workers=2)
        first = pool.submit("mail", [1])
        second = pool.submit("mail", [2])
        a = holder(reactor, ("mail", 1))
        [b] = [p for p in reactor.processes if p is not a]
        self.assertEqual(sent(b), [])
        first.cancel()
        self.failureResultOf(first)
        self.assertEqual(sent(b), [("mail", 2)])
        b.send(b"R0")
        self.successResultOf(second)

    # -- rate limits ----------------------------------------------------

    def test_rateOverAMinute(self) -> None:
        """
        C{rate="10/s"} starts 600 (plus or minus one) calls in a simulated
        minute, however many wait and however fast workers answer; the
        pool waits for each token with one timer, not by polling.
        """
        pool, reactor = self.pool(workers=2)
        a, b = reactor.processes
        ds = [pool.submit("smtp", [i]) for i in range(1000)]
        self.assertEqual(len(sent(a)) + len(sent(b)), 1)
        [timer] = reactor.getDelayedCalls()
        self.assertAlmostEqual(timer.getTime(), 0.1)
        answered = {a: 0, b: 0}
        while reactor.seconds() < 60 - 1e-6:
            for p in (a, b):
                while answered[p] < len(p.written):
                    p.send(b"R0")
                    answered[p] += 1
            self.assertLessEqual(len(reactor.getDelayedCalls()), 1)
            reactor.advance(0.037)
        started = len(a.written) + len(b.written)
        self.assertTrue(599 <= started <= 601, started)
        for p in (a, b):
            while answered[p] < len(p.written):
                p.send(b"R0")
                answered[p] += 1
        self.assertEqual(pool.stats()["queued"], 1000 - started)
        for d in ds[:started]:
            self.successResultOf(d)
        pool.stop()
        for d in ds[started:]:
            self.failureResultOf(d, errors.PoolStopping)

    def test_rateLetsOtherTasksPass(self) -> None:
        """
        Calls held back by a rate wait in the queue (they do not fail);
        other tasks' calls run meanwhile.
        """
        pool, reactor = self.pool(workers=1)
        p = reactor.processes[0]
        ds = [pool.submit("smtp", [i]) for i in range(2)]
        p.send(b"R0")
        d = pool.submit("add", ["x"])
        self.assertEqual(sent(p), [("smtp", 0), ("add", "x")])
        p.send(b"R0")
        self.assertNoResult(ds[1])
        reactor.advance(0.1)
        self.assertEqual(sent(p)[-1], ("smtp", 1))
        p.send(b"R0")
        for each in (*ds, d):
            self.successResultOf(each)

    def test_stopFailsRateLimitedCalls(self) -> None:
        """
        Stopping fails the calls a rate holds back with
        L{errors.PoolStopping} and leaves no timer behind.
        """
        pool, reactor = self.pool(workers=1)
        p = reactor.processes[0]
        ds = [pool.submit("smtp", [i]) for i in range(3)]
        p.send(b"R0")
        self.successResultOf(ds[0])
        stopped = pool.stop()
        for d in ds[1:]:
            self.failureResultOf(d, errors.PoolStopping)
        p.exit(0)
        self.successResultOf(stopped)
        self.assertEqual(reactor.getDelayedCalls(), [])

    # -- deadlines ------------------------------------------------------

    def test_deadlineExpires(self) -> None:
        """
        A call still queued when its deadline passes fails with
        L{errors.Expired} and is never sent to a worker.
        """
        pool, reactor = self.pool()
        p = reactor.processes[0]
        busy = pool.submit("add", [0])
        late = pool.submit("add", [1], deadline=5)
        reactor.advance(4.999)
        self.assertNoResult(late)
        reactor.advance(0.001)
        f = self.failureResultOf(late, errors.Expired)
        self.assertEqual(f.value.message, "task 'add' waited 5 seconds in the queue without starting (its deadline)")
        self.assertEqual(f.value.type, "expired")
        self.assertEqual(pool.stats()["queued"], 0)
        p.send(b"R0")
        self.successResultOf(busy)
        self.assertEqual(sent(p), [("add", 0)])

    def test_deadlineMet(self) -> None:
        """
        A call that starts before its deadline runs as usual and leaves no
        timer behind; one that finds a free worker starts at once.
        """
        pool, reactor = self.pool()
        p = reactor.processes[0]
        busy = pool.submit("add", [0])
        queued = pool.submit("add", [1], deadline=5)
        reactor.advance(4)
        p.send(b"R0")
        self.assertEqual(reactor.getDelayedCalls(), [])
        reactor.advance(10)
        p.send(b"R1")
        self.assertEqual([self.successResultOf(d) for d in (busy, queued)], [0, 1])
        d = pool.submit("add", [2], deadline=0.5)
        self.assertEqual(reactor.getDelayedCalls(), [])
        p.send(b"R2")
        self.assertEqual(self.successResultOf(d), 2)

    def test_badDeadline(self) -> None:
        """
        A deadline that is not positive fails the call with
        L{errors.BadRequest}.
        """
        pool, reactor = self.pool()
        for bad in (0, -1.0):
            f = self.failureResultOf(pool.submit("add", [1], deadline=bad), errors.BadRequest)
            self.assertEqual(f.value.message, "deadline must be a positive number of seconds")

    def test_cancelQueuedWithDeadline(self) -> None:
        """
        Cancelling a queued call with a deadline cancels its deadline too.
        """
        pool, reactor = self.pool()
        pool.submit("add", [0])
        d = pool.submit("add", [1], deadline=5, priority=3)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(pool.stats()["queuedByPriority"], {})

    # -- together -------------------------------------------------------

    def test_capRateAndDeadlineTogether(self) -> None:
        """
        A high-priority capped call waiting for its place does not hold up
        lower-priority calls, and expires at its deadline if the place does
        not free up in time; calls held by a rate expire the same way.
        """
        pool, reactor = self.pool(workers=2)
        pool.submit("mail", [0])
        capped = pool.submit("mail", [1], priority=100, deadline=3)
        low = pool.submit("add", ["low"], priority=-100)
        a = holder(reactor, ("mail", 0))
        [b] = [p for p in reactor.processes if p is not a]
        self.assertEqual(sent(b), [("add", "low")])
        b.send(b"R0")
        self.successResultOf(low)
        pool.submit("smtp", [0])
        rated = pool.submit("smtp", [1], deadline=0.05)
        reactor.advance(0.05)
        self.failureResultOf(rated, errors.Expired)
        reactor.advance(3)
        self.failureResultOf(capped, errors.Expired)
        self.assertEqual(pool.stats()["queued"], 0)
        self.assertEqual(sent(a), [("mail", 0)])
        self.assertEqual(sent(b), [("add", "low"), ("smtp", 0)])

    def test_queueFullCountsHeldCalls(self) -> None:
        """
        Calls held back by a cap count toward C{maxQueue}; past it, a call
        that cannot start at once fails with L{errors.PoolBusy}, while one
        that a free worker may take still runs.
        """
        pool, reactor = self.pool(workers=2, maxQueue=2)
        pool.submit("mail", [0])
        pool.submit("mail", [1])
        pool.submit("mail", [2])
        self.failureResultOf(pool.submit("mail", [3]), errors.PoolBusy)
        d = pool.submit("add", ["x"])
        holder(reactor, ("add", "x")).send(b"R0")
        self.successResultOf(d)


class DaemonSchedulingTests(DaemonTestCase):
    """
    Concurrency caps and rate limits in a real C{twistd taskd}, set with
    C{--task-limit}, measured by the tasks themselves.
    """

    @inlineCallbacks
    def test_capAndRate(self) -> Any:
        """
        A task with C{concurrency=1} never overlaps itself on three
        workers, while another task's calls run beside it; C{rate="10/s"}
        starts 50 (plus or minus 2) calls in 5 seconds of wall time: no
        5-second window holds more than 52 starts, and the fullest holds
        at least 48 (a machine that stalls the daemon for a while, as a
        loaded CI machine may, makes fewer in the windows around the stall,
        never more).
        """
        yield self.startDaemon(
            "--task-limit", "stamped:concurrency=1", "--task-limit", "ratestamp:rate=10/s", workers=3
        )
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        capped, rated = os.path.join(directory, "capped"), os.path.join(directory, "rated")
        lines = [
            json.dumps({"function": "stamped", "args": [capped, 0.05], "id": i}).encode() for i in range(10)
        ] + [json.dumps({"function": "ratestamp", "args": [rated], "id": 100 + i}).encode() for i in range(80)]
        proto = yield self.pipeline(lines)
        self.assertEqual(
            {id: [r["type"] for r in replies] for id, replies in proto.replies.items()},
            {id: ["result"] for id in [*range(10), *range(100, 180)]},
        )
        with open(capped) as f:
            spans = sorted(tuple(map(float, line.split())) for line in f)
        self.assertEqual(len(spans), 10)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            self.assertLessEqual(end, start)
        with open(rated) as f:
            starts = sorted(float(line) for line in f)
        self.assertEqual(len(starts), 80)
        windows = [sum(1 for t in starts if first <= t < first + 5.0) for first in starts]
        self.assertLessEqual(max(windows), 52, starts)
        self.assertGreaterEqual(max(windows), 48, starts)
        self.assertNothingUnhandled()

    @inlineCallbacks
    def test_urgentPastTenThousand(self) -> Any:
        """
        With 10,000 low-priority C{sleep(0.01)} calls queued, a
        high-priority call starts as soon as a worker is free: no
        low-priority call starts between its arrival and its start but
        those a worker had already begun.
        """
        yield self.startDaemon("--max-queue", "20000", "--max-in-flight", "20000", workers=2)
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        low, urgent = os.path.join(directory, "low"), os.path.join(directory, "urgent")
        n = 10_000
        lines = [
            json.dumps({"function": "stamped", "args": [low, 0.01], "id": i, "priority": -5}).encode()
            for i in range(n)
        ]
        flood = self.pipeline(lines, inFlight=n)
        for _ in range(400):
            stats = yield self.stats()
            if stats["queued"] + stats["busy"] + 200 >= n:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertGreater(stats["queued"], n - 400)
        sentAt = time.time()
        proto = yield self.pipeline(
            [json.dumps({"function": "stamped", "args": [urgent, 0], "id": "u", "priority": 10}).encode()]
        )
        self.assertEqual(proto.replies["u"][0]["type"], "result")
        with open(urgent) as f:
            (startedAt, _), = (tuple(map(float, line.split())) for line in f)
        with open(low) as f:
            lowStarts = [float(line.split()[0]) for line in f]
        overtaking = [t for t in lowStarts if sentAt < t < startedAt]
        # At most one per worker while the line travels, and one more each
        # if it arrived as they finished: never the queue's thousands.
        self.assertLessEqual(len(overtaking), 4, (startedAt - sentAt, overtaking))
        report(
            "urgent call past 10,000 queued",
            waitedMs=round((startedAt - sentAt) * 1000, 1),
            lowStartedMeanwhile=len(overtaking),
            queued=stats["queued"],
        )
        self.daemonProcess.signalProcess("TERM")
        yield flood
        yield self.daemon.ended

    @inlineCallbacks
    def test_retriesUnderChaos(self) -> Any:
        """
        Workers SIGKILLed at random while calls run: every call of a task
        with C{retries=3} ends in its result, none ran more than its four
        attempts; a task without retries is answered with its result or
        C{worker_crashed}, and no call of it ran twice.
        """
        yield self.startDaemon(workers=2)
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        again, once = os.path.join(directory, "again"), os.path.join(directory, "once")
        kills: list[int] = []
        killer = LoopingCall(self.killRandomWorker, kills)
        # No faster than the pool may replace workers (two at once, then
        # one every half second): faster, the pool runs short of workers
        # and the call at the queue's front, a retried one, is the one
        # each kill hits.
        killer.start(0.5, now=False)
        n = 1000
        lines = []
        for i in range(n):
            lines.append(json.dumps({"function": "idempotentRun", "args": [again, i], "id": i}).encode())
            lines.append(json.dumps({"function": "onceRun", "args": [once, i], "id": n + i}).encode())
        try:
            proto = yield self.pipeline(lines, inFlight=50)
        finally:
            killer.stop()
        self.assertEqual(sorted(proto.replies), list(range(2 * n)))
        for id, replies in proto.replies.items():
            self.assertEqual(len(replies), 1, f"call {id} answered {len(replies)} times")
        with open(again) as f:
            againRuns = Counter(int(line) for line in f)
        with open(once) as f:
            onceRuns = Counter(int(line) for line in f)
        crashed = 0
        for i in range(n):
            self.assertEqual(proto.replies[i][0].get("result"), i + 1, proto.replies[i])
            self.assertLessEqual(againRuns[i], 4)
            reply = proto.replies[n + i][0]
            self.assertLessEqual(onceRuns[i], 1, f"call {i} of a task without retries ran twice")
            if reply["type"] == "result":
                self.assertEqual((reply["result"], onceRuns[i]), (i + 1, 1))
            else:
                self.assertEqual((reply["error"]["type"], reply["error"]["started"]), ("worker_crashed", True))
                crashed += 1
        self.assertGreater(len(kills), 0)
        report(
            "retries under worker chaos",
            calls=2 * n,
            kills=len(kills),
            retried=sum(1 for c in againRuns.values() if c > 1),
            mostRuns=max(againRuns.values()),
            onceCrashed=crashed,
        )
