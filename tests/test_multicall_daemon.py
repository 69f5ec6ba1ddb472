"""
Workers that run several calls at once (C{--threads}, C{async def}
tasks), against real C{twistd taskd} daemons and real workers on
127.0.0.1.  Bounded in count and time; each scenario prints its figures as
a C{RELIABILITY ...} line.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.task import deferLater

from taskd import errors
from taskd.client import connect

from tests.test_pool import alive
from tests import test_reliability
from tests.test_reliability import DaemonTestCase, report


class MultiCallDaemonTestCase(DaemonTestCase):
    """
    A daemon serving C{tests.iotasks} (which holds C{async def} tasks)
    besides the usual test tasks.
    """

    @inlineCallbacks
    def startIODaemon(self, *options: str, workers: int = 2) -> Any:
        yield self.startDaemon("--tasks", "tests.iotasks", "--max-in-flight", "1000", *options, workers=workers)
        self.client = yield connect(reactor, f"tcp:127.0.0.1:{self.port}")
        self.addCleanup(self.client.close)

    @inlineCallbacks
    def timed(self, name: str, n: int, *args: Any) -> Any:
        """
        Run C{n} calls of task C{name} at once.

        @return: (seconds, replies by outcome, the pids that answered)
        """
        lines = [
            b'{"function":"%s","args":[%s],"id":%d}' % (name.encode(), ",".join(map(str, args)).encode(), i)
            for i in range(n)
        ]
        start = time.monotonic()
        proto = yield self.pipeline(lines, inFlight=n)
        took = time.monotonic() - start
        outcomes: Counter[str] = Counter()
        pids = set()
        for i in range(n):
            self.assertEqual(len(proto.replies[i]), 1, f"call {i} answered {len(proto.replies[i])} times")
            reply = proto.replies[i][0]
            if reply["type"] == "result":
                outcomes["result"] += 1
                pids.add(reply["result"])
            else:
                outcomes[reply["error"]["type"]] += 1
        return took, outcomes, pids


class ThroughputTests(MultiCallDaemonTestCase):
    @inlineCallbacks
    def test_threads(self) -> Any:
        """
        4 workers of 25 threads run 1,000 calls that each wait 100 ms in at
        most 1.5 s (they would take 25 s one at a time in 4 workers).
        """
        yield self.startIODaemon("--threads", "25", workers=4)
        took, outcomes, pids = yield self.timed("wait", 1000, 0.1)
        self.assertEqual(outcomes, Counter(result=1000))
        self.assertEqual(len(pids), 4)
        report("threads 4x25, 1000 x 100 ms", seconds=round(took, 2))
        self.assertLessEqual(took, 1.5)
        self.assertNothingUnhandled()

    @inlineCallbacks
    def test_async(self) -> Any:
        """
        2 workers run 1,000 C{async def} calls that each wait 100 ms in at
        most 1.5 s.
        """
        yield self.startIODaemon(workers=2)
        took, outcomes, pids = yield self.timed("await", 1000, 0.1)
        self.assertEqual(outcomes, Counter(result=1000))
        self.assertEqual(len(pids), 2)
        report("async 2 workers, 1000 x 100 ms", seconds=round(took, 2))
        self.assertLessEqual(took, 1.5)
        self.assertNothingUnhandled()


class StopOneCallTests(MultiCallDaemonTestCase):
    """
    Timeout and cancel of one call of a worker that runs several.
    """

    def path(self) -> str:
        return os.path.abspath(self.mktemp())

    @inlineCallbacks
    def stopOne(self, task: str, how: str) -> Any:
        """
        One worker of 4 threads runs three calls that wait 1 s and one of
        C{task} (which would run 30 s) that is stopped after 0.3 s
        (C{how}: by its timeout, or cancelled by its caller).

        @return: what the stopped task wrote in its C{finally} block.
        """
        yield self.startIODaemon("--threads", "4", workers=1)
        pid = yield self.client.call("pid")
        path = self.path()
        others = [self.client.call("wait", 1.0) for _ in range(3)]
        start = time.monotonic()
        if how == "timeout":
            stopped = self.client.callWith(task, [path, 30], timeout=0.3)
        else:
            stopped = self.client.call(task, path, 30)
            reactor.callLater(0.3, stopped.cancel)
        (failure,) = yield stopped.addBoth(lambda r: [r])
        took = time.monotonic() - start
        self.assertTrue(failure.check(errors.TaskTimeout if how == "timeout" else CancelledError), failure)
        self.assertLess(took, 0.9)
        for d in others:
            self.assertEqual((yield d), pid)
        for _ in range(100):
            if os.path.exists(path):
                break
            yield deferLater(reactor, 0.02, lambda: None)
        with open(path) as f:
            ended = f.read()
        # The worker was not replaced: it answers the next call.
        self.assertEqual((yield self.client.call("pid")), pid)
        report(f"{how} of a {task} call beside 3 others", answered_after=round(took, 2), task_saw=ended)
        self.assertNothingUnhandled()
        return ended

    @inlineCallbacks
    def test_timeoutThread(self) -> Any:
        """
        A threaded call that times out is answered at once; its thread gets
        L{taskd._multicall.CallCancelled} (its C{finally} blocks run); the
        worker's other calls finish and it goes on serving.
        """
        ended = yield self.stopOne("busy", "timeout")
        self.assertEqual(ended, "CallCancelled")

    @inlineCallbacks
    def test_cancelThread(self) -> Any:
        """
        The same for a threaded call its caller cancels.
        """
        ended = yield self.stopOne("busy", "cancel")
        self.assertEqual(ended, "CallCancelled")

    @inlineCallbacks
    def test_timeoutAsync(self) -> Any:
        """
        An C{async def} call that times out is answered at once; its
        coroutine gets C{CancelledError} and its C{finally} blocks run.
        """
        ended = yield self.stopOne("guarded", "timeout")
        self.assertEqual(ended, "cancelled")

    @inlineCallbacks
    def test_cancelAsync(self) -> Any:
        """
        The same for an C{async def} call its caller cancels.
        """
        ended = yield self.stopOne("guarded", "cancel")
        self.assertEqual(ended, "cancelled")

    @inlineCallbacks
    def test_threadThatWillNotStop(self) -> Any:
        """
        A threaded call blocked in C does not stop: it is answered at once;
        after the kill grace (1 s here) its worker takes no more calls, a
        new one is started, and the old one's other call finishes before
        it exits.
        """
        yield self.startIODaemon("--threads", "4", workers=1)
        old = yield self.client.call("pid")
        other = self.client.call("wait", 2.0)
        start = time.monotonic()
        (failure,) = yield self.client.callWith("blocked", [30], timeout=0.3).addBoth(lambda r: [r])
        self.assertTrue(failure.check(errors.TaskTimeout), failure)
        self.assertLess(time.monotonic() - start, 0.9)
        self.assertEqual((yield other), old)
        for _ in range(100):
            if not alive(old):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(alive(old))
        new = yield self.client.call("pid")
        self.assertNotEqual(new, old)
        self.assertIn(b"did not stop within 1.0 seconds", self.daemon.output)
        self.assertNothingUnhandled()


class CrashTests(MultiCallDaemonTestCase):
    @inlineCallbacks
    def test_crashFailsOnlyItsCalls(self) -> Any:
        """
        2 workers of 4 threads hold 3 waiting calls each; a task kills one
        worker: its 3 calls fail with C{worker_crashed}, the other
        worker's 3 are answered.
        """
        yield self.startIODaemon("--threads", "4", workers=2)
        calls = [self.client.call("wait", 1.5) for _ in range(6)]
        yield deferLater(reactor, 0.3, lambda: None)
        (died,) = yield self.client.call("die").addBoth(lambda r: [r])
        self.assertTrue(died.check(errors.WorkerCrashed), died)
        outcomes = []
        for d in calls:
            outcomes.append((yield d.addErrback(lambda f: f.value)))
        crashed = [o for o in outcomes if isinstance(o, errors.WorkerCrashed)]
        answered = [o for o in outcomes if isinstance(o, int)]
        self.assertEqual((len(crashed), len(answered)), (3, 3))
        self.assertEqual(len(set(answered)), 1)
        self.assertNothingUnhandled()


class ThreadedChaosTests(DaemonTestCase):
    def test_randomKills(self) -> Any:
        """
        The chaos scenario of L{WorkerChaosTests} (5,000 calls, a worker
        SIGKILLed every 50 ms) with 2 workers of 8 threads: every call gets
        exactly one reply, a result or C{worker_crashed}; crashes are at
        most 8 per kill; the pool is back to full strength afterwards.
        """
        return test_reliability.WorkerChaosTests.chaos(self, 1, "--threads", "8", perKill=8)  # type: ignore[arg-type]
