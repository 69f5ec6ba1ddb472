"""
Tests for L{taskd.pool} that drive real worker processes.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from taskd import errors
from taskd.pool import PoolService, PoolState, ProcessPool

TASKS = ["taskd.examples", "tests.tasks"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@inlineCallbacks
def waitFor(predicate: Callable[[], bool], what: str, tries: int = 400) -> Any:
    """
    Poll C{predicate} every 25 ms, at most C{tries} times (10 s).
    """
    for _ in range(tries):
        if predicate():
            return
        yield deferLater(reactor, 0.025, lambda: None)
    raise AssertionError(f"gave up waiting for {what}")


class RealPoolTestCase(TestCase):
    """
    Starts a pool per test and, whatever happens, stops it and checks that
    no worker process outlives it.
    """

    def makePool(self, **kw: Any) -> ProcessPool:
        kw.setdefault("tasks", TASKS)
        kw.setdefault("workers", 2)
        kw.setdefault("killGrace", 2.0)
        pool = ProcessPool(reactor, **kw)
        self.addCleanup(self._stopAndCheck, pool)
        return pool

    @inlineCallbacks
    def startPool(self, **kw: Any) -> Any:
        pool = self.makePool(**kw)
        yield pool.start()
        return pool

    @inlineCallbacks
    def _stopAndCheck(self, pool: ProcessPool) -> Any:
        pids = set(pool.pids()) | getattr(self, "seenPids", set())
        yield pool.stop()
        self.assertEqual(pool.pids(), set())
        self.assertEqual([p for p in pids if alive(p)], [])

    def captureLogs(self) -> list[LogEvent]:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events


class RoundTripTests(RealPoolTestCase):
    @inlineCallbacks
    def test_positionalAndKeyword(self) -> Any:
        """
        Positional and keyword arguments reach the task; its result comes
        back decoded.
        """
        pool = yield self.startPool()
        self.assertEqual((yield pool.submit("add", [1, 2])), 3)
        self.assertEqual((yield pool.submit("add", kwargs={"a": "x", "b": "y"})), "xy")
        value = {"list": [1, 2.5, None, True], "text": "h\u00e9\u2603 \U0001f600", "n": {}}
        self.assertEqual((yield pool.submit("echo", [value])), value)

    @inlineCallbacks
    def test_bigArguments(self) -> Any:
        """
        Arguments and results larger than a pipe holds (256 KiB) cross it
        whole, and the calls behind them follow in order.
        """
        pool = yield self.startPool(workers=1)
        big = "\u00e9" * 600000  # 1.2 MB of UTF-8 back, 3.6 MB of escapes there
        results = yield gatherResults([pool.submit("echo", [big]), pool.submit("add", [1, 2])])
        self.assertEqual(results, [big, 3])

    @inlineCallbacks
    def test_callsSpreadOverWorkers(self) -> Any:
        """
        Concurrent calls run in every worker of the pool, and the results
        match their calls.
        """
        pool = yield self.startPool(workers=2)
        pids = yield gatherResults([pool.submit("pid"), pool.submit("pid")])
        self.assertEqual(set(pids), pool.pids())
        self.assertEqual(len(pool.pids()), 2)
        sums = yield gatherResults([pool.submit("add", [i, i]) for i in range(200)])
        self.assertEqual(sums, [2 * i for i in range(200)])

    @inlineCallbacks
    def test_progress(self) -> Any:
        """
        A task's L{taskd.progress} reports reach the caller's callback, in
        order, before the result.
        """
        pool = yield self.startPool(workers=1)
        seen: list[Any] = []
        result = yield pool.submit("steps", [3, 0.01], progress=seen.append)
        self.assertEqual((seen, result), ([{"done": i, "of": 3} for i in (1, 2, 3)], 3))

    @inlineCallbacks
    def test_progressOfAnEndedCall(self) -> Any:
        """
        A report from a thread that a task left running belongs to that
        task's call, which has ended: it never reaches the caller of the
        call the worker runs next.  A thread a call starts and waits for
        reports for that call.
        """
        pool = yield self.startPool(workers=1, tasks=["taskd.examples", "tests.tasks"])
        yield pool.submit("leaveReporter", [0.05])
        seen: list[Any] = []
        result = yield pool.submit("steps", [4, 0.05], progress=seen.append)
        self.assertEqual((seen, result), ([{"done": i, "of": 4} for i in (1, 2, 3, 4)], 4))
        seen = []
        result = yield pool.submit("reportFromThread", progress=seen.append)
        self.assertEqual((seen, result), (["from my thread"], "joined"))

    @inlineCallbacks
    def test_unknownTask(self) -> Any:
        """
        Names that are not registered tasks are refused, whatever they
        look like: nothing is imported or evaluated.
        """
        pool = yield self.startPool()
        for name in ("os.system", "builtins.eval", "taskd.examples.add", "__import__", ""):
            with self.assertRaises(errors.UnknownTask):
                yield pool.submit(name, ["true"])
        self.assertEqual((yield pool.submit("add", [2, 2])), 4)

    @inlineCallbacks
    def test_printNeverCorruptsFraming(self) -> Any:
        """
        What a task writes to stdout and stderr, even bytes shaped like
        frames, goes to the log tagged with the worker and stream; the
        task's result arrives intact.
        """
        events = self.captureLogs()
        pool = yield self.startPool(workers=1)
        (pid,) = pool.pids()
        self.assertEqual((yield pool.submit("chatty", [50])), "still framed")
        self.assertEqual((yield pool.submit("add", [1, 2])), 3)
        yield waitFor(
            lambda: any("line 49 to stderr" == e.get("line") for e in events),
            "the last stderr line in the log",
        )
        lines = {(e["pid"], e["stream"], e["line"]) for e in events if "stream" in e}
        self.assertIn((pid, "stdout", "line 0 to stdout"), lines)
        self.assertIn((pid, "stderr", "line 49 to stderr"), lines)
        self.assertIn((pid, "stdout", "no newline yet \x00\x00\x00\x05R1234"), lines)

    @inlineCallbacks
    def test_stdinIsClosed(self) -> Any:
        """
        A task that reads standard input gets end of file, not a hang.
        """
        pool = yield self.startPool(workers=1)
        self.assertEqual((yield pool.submit("readStdin")), "")


class FailureTests(RealPoolTestCase):
    @inlineCallbacks
    def test_taskRaises(self) -> Any:
        """
        A task that raises fails the call with L{errors.TaskFailed} carrying
        the remote type, message and traceback; the worker lives on.
        """
        pool = yield self.startPool(workers=1)
        before = pool.pids()
        e = yield self.assertFailure(pool.submit("fail", ["no luck"]), errors.TaskFailed)
        self.assertEqual((e.remoteType, e.message), ("ValueError", "no luck"))
        self.assertIn('examples.py", line', e.remoteTraceback)
        self.assertIn("ValueError: no luck", e.remoteTraceback)
        e = yield self.assertFailure(pool.submit("tests.custom"), errors.TaskFailed)
        self.assertEqual(e.remoteType, "tests.tasks.Custom")
        e = yield self.assertFailure(pool.submit("exitCleanly"), errors.TaskFailed)
        self.assertEqual(e.remoteType, "SystemExit")
        e = yield self.assertFailure(pool.submit("add", [1]), errors.TaskFailed)
        self.assertEqual(e.remoteType, "TypeError")
        self.assertEqual(pool.pids(), before)

    @inlineCallbacks
    def test_hugeErrorIsClipped(self) -> Any:
        """
        An exception with an enormous message is reported with the message
        clipped.
        """
        pool = yield self.startPool(workers=1)
        e = yield self.assertFailure(pool.submit("hugeError", [10**6]), errors.TaskFailed)
        self.assertLess(len(e.message), 70000)
        self.assertTrue(e.message.endswith("[... truncated]"))

    @inlineCallbacks
    def test_resultNotSerializable(self) -> Any:
        """
        A result JSON cannot hold (an object, NaN) fails with
        L{errors.ResultNotSerializable}; the worker lives on.
        """
        pool = yield self.startPool(workers=1)
        before = pool.pids()
        e = yield self.assertFailure(pool.submit("unserializable"), errors.ResultNotSerializable)
        self.assertIn("task 'unserializable' returned a value JSON cannot hold", e.message)
        yield self.assertFailure(pool.submit("nan"), errors.ResultNotSerializable)
        self.assertEqual(pool.pids(), before)
        self.assertEqual((yield pool.submit("add", [1, 1])), 2)

    @inlineCallbacks
    def test_resultTooLarge(self) -> Any:
        """
        A result over C{maxResult} fails with L{errors.ResultTooLarge}; one
        just under it arrives whole.
        """
        pool = yield self.startPool(workers=1, maxResult=3 * 1024 * 1024)
        e = yield self.assertFailure(pool.submit("big", [3 * 1024 * 1024]), errors.ResultTooLarge)
        self.assertIn("the limit is 3145728", e.message)
        text = yield pool.submit("big", [3 * 1024 * 1024 - 2])
        self.assertEqual(len(text), 3 * 1024 * 1024 - 2)

    @inlineCallbacks
    def test_timeout(self) -> Any:
        """
        A call over its timeout fails with L{errors.TaskTimeout}; its worker
        process is ended and a fresh one serves the next call.
        """
        pool = yield self.startPool(workers=1)
        (old,) = pool.pids()
        e = yield self.assertFailure(pool.submit("sleep", [30], timeout=0.3), errors.TaskTimeout)
        self.assertEqual(e.message, "task 'sleep' did not finish within 0.3 seconds")
        self.assertEqual((yield pool.submit("add", [1, 2])), 3)
        yield waitFor(lambda: not alive(old), "the timed-out worker to exit")
        self.assertNotIn(old, pool.pids())

    @inlineCallbacks
    def test_timeoutEscalatesToKill(self) -> Any:
        """
        A task that ignores SIGTERM is killed after the kill grace.
        """
        pool = yield self.startPool(workers=1, killGrace=0.3)
        (old,) = pool.pids()
        self.seenPids = {old}
        yield pool.submit("pid")  # the worker is warm
        d = pool.submit("stubborn", [30], timeout=0.5)
        yield self.assertFailure(d, errors.TaskTimeout)
        yield waitFor(lambda: old not in pool.pids(), "the stubborn worker to be killed")
        self.assertFalse(alive(old))

    @inlineCallbacks
    def test_crashes(self) -> Any:
        """
        A worker that dies mid-task (exit, SIGKILL, segfault) fails only
        that call, with L{errors.WorkerCrashed}; a replacement starts and a
        call running in the other worker finishes.
        """
        pool = yield self.startPool(workers=2)
        expected = {"exit": "exited with status 70", "kill": "was killed by SIGKILL", "segfault": "was killed by SIGSEGV"}
        for how, text in expected.items():
            other = pool.submit("sleep", [0.3])
            e = yield self.assertFailure(pool.submit("crash", [how]), errors.WorkerCrashed)
            self.assertIn(text, e.message)
            self.assertEqual((yield other), 0.3)
        yield waitFor(lambda: pool.stats()["idle"] == 2, "two idle workers again")
        self.assertEqual(len(pool.pids()), 2)


class PrefetchTests(RealPoolTestCase):
    @inlineCallbacks
    def test_prefetchWithCrashes(self) -> Any:
        """
        With calls sent ahead, a crash still costs only the call that was
        running: the ones behind it run on the replacement, once each.
        """
        pool = yield self.startPool(workers=1, prefetch=3)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        calls = []
        for i in range(12):
            if i % 4 == 1:
                calls.append(pool.submit("crash", ["kill"]))
            else:
                calls.append(pool.submit("touch", [directory, str(i)]))
        results = yield gatherResults([d.addErrback(lambda f: f.trap(errors.WorkerCrashed)) for d in calls])
        self.assertEqual([r for i, r in enumerate(results) if i % 4 == 1], [errors.WorkerCrashed] * 3)
        self.assertEqual([r for i, r in enumerate(results) if i % 4 != 1], [str(i) for i in range(12) if i % 4 != 1])
        self.assertEqual(sorted(os.listdir(directory), key=int), [str(i) for i in range(12) if i % 4 != 1])
        many = yield gatherResults([pool.submit("add", [i, 1]) for i in range(300)])
        self.assertEqual(many, [i + 1 for i in range(300)])


    @inlineCallbacks
    def test_longTaskNotSentAhead(self) -> Any:
        """
        Once a task's calls have been seen to take longer than
        C{prefetchTime}, a call of it goes only to an idle worker, and a
        call behind it waits in the queue rather than in the worker's
        pipe.  Without the time limit, the same call goes ahead behind the
        long one.
        """
        for prefetchTime, queued in [(0.005, 1), (None, 0)]:
            pool = yield self.startPool(workers=1, prefetch=8, prefetchTime=prefetchTime)
            yield pool.submit("sleep", [0.05])
            self.assertEqual((yield pool.submit("add", [1, 1])), 2)
            yield deferLater(reactor, 0, lambda: None)  # the worker is idle again
            long = pool.submit("sleep", [0.05])
            short = pool.submit("add", [2, 2])
            self.assertEqual(pool.stats()["queued"], queued, prefetchTime)
            self.assertEqual((yield gatherResults([long, short])), [0.05, 4])
            yield pool.stop()


class StartTests(RealPoolTestCase):
    @inlineCallbacks
    def test_importErrorInWorker(self) -> Any:
        """
        A task module that fails to import in the workers fails L{start}
        with L{errors.WorkerStartError} carrying the worker's traceback,
        and leaves no process behind.
        """
        env = dict(os.environ, TASKD_TEST_BREAK="always")
        pool = self.makePool(tasks=["tests.childbroken"], workers=2, env=env)
        e = yield self.assertFailure(pool.start(), errors.WorkerStartError)
        self.assertIn("ImportError: broken in the worker on purpose", e.message)
        self.assertIn("childbroken.py", e.remoteTraceback)
        self.assertEqual(pool.pids(), set())
        self.assertEqual(pool.state, PoolState.STOPPED)

    @inlineCallbacks
    def test_importErrorInParent(self) -> Any:
        """
        A task module that cannot be imported at all fails L{start} with the
        import error.
        """
        pool = self.makePool(tasks=["tests.brokentasks"])
        yield self.assertFailure(pool.start(), ImportError)
        self.assertEqual(pool.pids(), set())

    @inlineCallbacks
    def test_replacementFailsThenRecovers(self) -> Any:
        """
        When replacements cannot start, calls fail with
        L{errors.WorkerStartError} instead of waiting; once the module
        imports again, the pool recovers by itself.
        """
        flag = tempfile.mktemp()
        env = dict(os.environ, TASKD_TEST_BREAK=flag)
        pool = yield self.startPool(tasks=["taskd.examples", "tests.childbroken"], workers=1, env=env, minRestartDelay=0.05)
        open(flag, "w").close()
        self.addCleanup(lambda: os.path.exists(flag) and os.remove(flag))
        yield self.assertFailure(pool.submit("crash", ["exit"]), errors.WorkerCrashed)
        yield waitFor(lambda: pool._startError is not None, "a failed restart")
        e = yield self.assertFailure(pool.submit("fine"), errors.WorkerStartError)
        self.assertIn("broken in the worker on purpose", e.message)
        os.remove(flag)
        yield waitFor(lambda: pool.stats()["idle"] == 1, "a worker to start again")
        self.assertEqual((yield pool.submit("fine")), "fine")


class QueueTests(RealPoolTestCase):
    @inlineCallbacks
    def test_busy(self) -> Any:
        """
        With every worker busy and C{maxQueue} calls waiting, the next call
        fails at once with L{errors.PoolBusy}.
        """
        pool = yield self.startPool(workers=1, maxQueue=1)
        running = pool.submit("sleep", [0.2])
        queued = pool.submit("add", [1, 2])
        e = yield self.assertFailure(pool.submit("add", [3, 4]), errors.PoolBusy)
        self.assertIn("queue is full", e.message)
        self.assertEqual((yield running), 0.2)
        self.assertEqual((yield queued), 3)

    @inlineCallbacks
    def test_cancelQueued(self) -> Any:
        """
        Cancelling a queued call fails it with L{CancelledError}; it never
        runs, and the running call is unaffected.
        """
        pool = yield self.startPool(workers=1)
        (pid,) = pool.pids()
        running = pool.submit("sleep", [0.2])
        queued = pool.submit("crash", ["exit"])
        queued.cancel()
        yield self.assertFailure(queued, CancelledError)
        self.assertEqual((yield running), 0.2)
        self.assertEqual(pool.pids(), {pid})

    @inlineCallbacks
    def test_cancelRunning(self) -> Any:
        """
        Cancelling a running call ends its worker and a new one serves the
        next call.
        """
        pool = yield self.startPool(workers=1)
        (old,) = pool.pids()
        self.seenPids = {old}
        d = pool.submit("sleep", [30])
        yield deferLater(reactor, 0.1, lambda: None)
        d.cancel()
        yield self.assertFailure(d, CancelledError)
        self.assertEqual((yield pool.submit("add", [2, 3])), 5)
        yield waitFor(lambda: not alive(old), "the cancelled worker to exit")

    @inlineCallbacks
    def test_recycling(self) -> Any:
        """
        With C{maxTasksPerWorker=3}, each worker serves three calls and is
        replaced; no call fails.
        """
        pool = yield self.startPool(workers=1, maxTasksPerWorker=3)
        pids = []
        for _ in range(7):
            pids.append((yield pool.submit("pid")))
        self.assertEqual(len(set(pids[0:3])), 1)
        self.assertEqual(len(set(pids[3:6])), 1)
        self.assertEqual(len(set(pids)), 3)
        self.seenPids = set(pids)


class StopTests(RealPoolTestCase):
    @inlineCallbacks
    def test_stopDrains(self) -> Any:
        """
        L{ProcessPool.stop} lets running calls finish, fails queued ones
        with L{errors.PoolStopping} and fires once every worker process is
        gone.
        """
        pool = yield self.startPool(workers=2)
        pids = pool.pids()
        running = [pool.submit("sleep", [0.3]) for _ in range(2)]
        queued = pool.submit("add", [1, 2])
        yield pool.stop()
        self.assertEqual((yield gatherResults(running)), [0.3, 0.3])
        yield self.assertFailure(queued, errors.PoolStopping)
        self.assertEqual([p for p in pids if alive(p)], [])
        yield self.assertFailure(pool.submit("add", [1, 2]), errors.PoolStopping)

    @inlineCallbacks
    def test_graceExceeded(self) -> Any:
        """
        A call still running when the grace period is over fails with
        L{errors.PoolStopping}, and its worker is killed even if it ignores
        SIGTERM.
        """
        pool = yield self.startPool(workers=1, grace=0.2, killGrace=0.2)
        pids = pool.pids()
        d = pool.submit("stubborn", [30])
        yield deferLater(reactor, 0.1, lambda: None)
        yield pool.stop()
        e = yield self.assertFailure(d, errors.PoolStopping)
        self.assertIn("grace period", e.message)
        self.assertEqual([p for p in pids if alive(p)], [])

    @inlineCallbacks
    def test_service(self) -> Any:
        """
        L{PoolService} runs the pool within a service tree.
        """
        pool = self.makePool(workers=1)
        service = PoolService(pool)
        service.startService()
        yield waitFor(lambda: pool.state is PoolState.RUNNING, "the pool to run")
        self.assertEqual((yield pool.submit("add", [20, 22])), 42)
        pids = pool.pids()
        yield service.stopService()
        self.assertEqual([p for p in pids if alive(p)], [])
