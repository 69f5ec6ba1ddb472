# -*- test-case-name: tests.test_retries -*-
"""
Whether a call started, on every way it can fail, and the retries of tasks
that opt into them: Clock-exact, on the fake process reactor.
"""

from __future__ import annotations

import json
import signal
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from taskd import errors
from taskd.pool import CallCancelled, ProcessPool
from taskd.registry import Registry

from tests.fakes import FakeProcess, FakeProcessReactor, PoolTestsMixin


def retryRegistry() -> Registry:
    reg = Registry()
    reg.register(lambda *a: None, "add")
    reg.register(lambda *a: None, "sleep")
    reg.register(lambda *a: None, "flaky", retries=2, backoff=1.0, retryOn=("ValueError",))
    reg.register(lambda *a: None, "capped", retries=1, backoff=0.0, concurrency=1)
    return reg


def failure(process: FakeProcess, exception: str) -> None:
    """
    C{process} answers its call with a task failure of type C{exception}.
    """
    process.send(b"E" + json.dumps({"type": "task_failed", "message": "no", "exception": exception}).encode())


class StartedTests(PoolTestsMixin, SynchronousTestCase):
    """
    Every error a pool call can end with says whether the task started:
    C{False} only when it certainly did not run.
    """

    def pool(self, workers: int = 1, **kw: Any) -> tuple[ProcessPool, FakeProcessReactor]:
        kw.setdefault("registry", retryRegistry())
        return self.startedPool(workers, **kw)

    def error(self, d: Deferred[Any], kind: type[Exception]) -> Any:
        return self.failureResultOf(d, kind).value

    def test_notStarted(self) -> None:
        """
        Calls refused at the door, expired in the queue, cancelled while
        queued or failed by a stop while queued never started.
        """
        pool, reactor = self.pool(maxQueue=2)
        running = pool.submit("sleep", [9])
        expiring = pool.submit("add", [1], deadline=3)
        cancelled = pool.submit("add", [2])
        busy = pool.submit("add", [3])
        unknown = pool.submit("nope")
        bad = pool.submit("add", priority=1000)
        self.assertFalse(self.error(busy, errors.PoolBusy).started)
        self.assertFalse(self.error(unknown, errors.UnknownTask).started)
        self.assertFalse(self.error(bad, errors.BadRequest).started)
        cancelled.cancel()
        self.assertFalse(self.error(cancelled, CallCancelled).started)
        reactor.advance(3)
        self.assertFalse(self.error(expiring, errors.Expired).started)
        queued = pool.submit("add", [4])
        pool.stop()
        self.assertFalse(self.error(queued, errors.PoolStopping).started)
        self.assertFalse(self.error(pool.submit("add", [5]), errors.PoolStopping).started)
        reactor.processes[0].send(b"R0")
        self.successResultOf(running)

    def test_started(self) -> None:
        """
        A timeout, a crash, a task's exception, a bad reply and a cancel of
        a running call all say the task started.
        """
        pool, reactor = self.pool(workers=1)
        timedOut = pool.submit("sleep", [9], timeout=2)
        reactor.advance(2)
        self.assertTrue(self.error(timedOut, errors.TaskTimeout).started)
        reactor.processes[-1].ready()
        crashed = pool.submit("sleep", [9])
        reactor.processes[-1].exit(None, signal.SIGKILL)
        self.assertTrue(self.error(crashed, errors.WorkerCrashed).started)
        reactor.advance(pool.config.minRestartDelay)
        reactor.processes[-1].ready()
        raised = pool.submit("add", [1])
        failure(reactor.processes[-1], "KeyError")
        self.assertTrue(self.error(raised, errors.TaskFailed).started)
        garbled = pool.submit("add", [1])
        reactor.processes[-1].send(b"Rnot json")
        self.assertTrue(self.error(garbled, errors.WorkerProtocolError).started)
        reactor.advance(pool.config.minRestartDelay)
        reactor.processes[-1].ready()
        running = pool.submit("sleep", [9])
        running.cancel()
        self.assertTrue(self.error(running, CallCancelled).started)

    def test_workerRefusal(self) -> None:
        """
        An error the worker sends before running the task (it does not
        know the name) says it did not start.
        """
        pool, reactor = self.pool()
        d = pool.submit("add", [1])
        reactor.processes[0].send(b'E{"type":"unknown_task","message":"no task named \'add\'","started":false}')
        self.assertFalse(self.error(d, errors.UnknownTask).started)

    def test_sentAhead(self) -> None:
        """
        A call sent ahead into a worker's pipe may have begun by the time
        it is cancelled or failed by a stop: it says it started.  Calls
        sent ahead to a worker that crashes before reaching them are not
        failed: they run on the next worker.
        """
        pool, reactor = self.pool(workers=1, prefetch=3)
        first = pool.submit("sleep", [9])
        ahead = pool.submit("add", [1])
        behind = pool.submit("add", [2])
        ahead.cancel()
        self.assertTrue(self.error(ahead, CallCancelled).started)
        reactor.processes[0].exit(None, signal.SIGKILL)
        self.assertTrue(self.error(first, errors.WorkerCrashed).started)
        self.assertNoResult(behind)
        new = reactor.processes[-1]
        new.ready()
        self.assertEqual([r["args"] for _, r in new.requests()], [[2]])
        new.send(b"R3")
        self.assertEqual(self.successResultOf(behind), 3)
        running = pool.submit("sleep", [9])
        piped = pool.submit("add", [3])
        pool.stop()
        self.assertTrue(self.error(piped, errors.PoolStopping).started)
        reactor.advance(pool.config.grace)
        error = self.error(running, errors.PoolStopping)
        self.assertTrue(error.started)
        self.assertIn("shutdown grace period", error.message)


class RetryTests(PoolTestsMixin, SynchronousTestCase):
    """
    A task with C{retries} is run again after a crash, a timeout or an
    exception it lists, after its backoff; never a task without.
    """

    def pool(self, workers: int = 1, jitter: float = 0.5, **kw: Any) -> tuple[ProcessPool, FakeProcessReactor]:
        kw.setdefault("registry", retryRegistry())
        pool, reactor = self.startedPool(workers, **kw)
        pool.jitter = lambda: jitter
        return pool, reactor

    def test_crashBackoff(self) -> None:
        """
        After each crash the call waits its backoff, doubled per attempt
        and spread by the jitter over its upper half (here 0.75 of it),
        then runs on a fresh worker; after the last attempt its error
        says how many ran.
        """
        pool, reactor = self.pool()
        d = pool.submit("flaky", [1])
        for attempt, delay in [(1, 0.75), (2, 1.5)]:
            reactor.processes[-1].exit(None, signal.SIGKILL)
            self.assertNoResult(d)
            new = reactor.processes[-1]
            new.ready()
            reactor.advance(delay - 0.001)
            self.assertEqual(new.requests(), [])
            reactor.advance(0.001)
            self.assertEqual([r["args"] for _, r in new.requests()], [[1]])
        reactor.processes[-1].exit(None, signal.SIGKILL)
        error = self.failureResultOf(d, errors.WorkerCrashed).value
        self.assertEqual((error.attempts, error.started), (3, True))
        self.assertEqual(error.toDict()["attempts"], 3)

    def test_jitterBounds(self) -> None:
        """
        The jitter spreads a delay from half of it to all of it.
        """
        for jitter, delay in [(0.0, 0.5), (1.0, 1.0)]:
            pool, reactor = self.pool(jitter=jitter)
            d = pool.submit("flaky", [1])
            reactor.processes[-1].exit(None, signal.SIGKILL)
            new = reactor.processes[-1]
            new.ready()
            reactor.advance(delay - 0.001)
            self.assertEqual(new.requests(), [])
            reactor.advance(0.001)
            self.assertEqual(len(new.requests()), 1)
            new.send(b"R1")
            self.assertEqual(self.successResultOf(d), 1)

    def test_timeoutThenResult(self) -> None:
        """
        A timed-out attempt is retried, and a result after a retry is the
        call's one answer.
        """
        pool, reactor = self.pool()
        d = pool.submit("flaky", [1], timeout=5)
        reactor.advance(5)
        self.assertNoResult(d)
        new = reactor.processes[-1]
        new.ready()
        reactor.advance(0.75)
        self.assertEqual(len(new.requests()), 1)
        new.send(b"R7")
        self.assertEqual(self.successResultOf(d), 7)

    def test_timedOutWorkerEndsDuringBackoff(self) -> None:
        """
        The worker killed for a timeout ends while its call waits for the
        retry: that is not the call's crash; the retry runs, and its result
        is the answer.
        """
        pool, reactor = self.pool()
        d = pool.submit("flaky", [1], timeout=2)
        old = reactor.processes[0]
        reactor.advance(2)
        self.assertEqual(old.signals, ["SIGKILL"])
        old.exit(None, signal.SIGKILL)
        self.assertNoResult(d)
        self.assertEqual(pool.stats()["retrying"], 1)
        new = reactor.processes[-1]
        new.ready()
        reactor.advance(0.75)
        self.assertEqual([r["args"] for _, r in new.requests()], [[1]])
        new.send(b"R2")
        self.assertEqual(self.successResultOf(d), 2)

    def test_listedExceptions(self) -> None:
        """
        An exception the task lists in C{retryOn} is retried on the same
        worker; one it does not list is the call's answer at once.
        """
        pool, reactor = self.pool()
        p = reactor.processes[0]
        d = pool.submit("flaky", [1])
        failure(p, "ValueError")
        self.assertNoResult(d)
        reactor.advance(0.75)
        self.assertEqual(len(p.requests()), 2)
        failure(p, "KeyError")
        error = self.failureResultOf(d, errors.TaskFailed).value
        self.assertEqual((error.remoteType, error.attempts, error.started), ("KeyError", 2, True))

    def test_noOptIn(self) -> None:
        """
        A task without retries is never run again: a crash, a timeout and
        an exception are its answer at once.
        """
        pool, reactor = self.pool()
        d = pool.submit("add", [1])
        reactor.processes[0].exit(None, signal.SIGKILL)
        self.assertEqual(self.failureResultOf(d, errors.WorkerCrashed).value.attempts, 1)
        reactor.processes[-1].ready()
        d = pool.submit("add", [1], timeout=1)
        reactor.advance(1)
        self.failureResultOf(d, errors.TaskTimeout)
        reactor.processes[-1].ready()
        d = pool.submit("add", [1])
        failure(reactor.processes[-1], "ValueError")
        self.failureResultOf(d, errors.TaskFailed)
        reactor.advance(100)
        self.assertEqual([len(p.requests()) for p in reactor.processes], [1, 1, 1])

    def test_cancelDuringBackoff(self) -> None:
        """
        A call cancelled while it waits for its retry is answered at once
        (it started: an attempt ran) and never runs again.
        """
        pool, reactor = self.pool()
        d = pool.submit("flaky", [1])
        reactor.processes[0].exit(None, signal.SIGKILL)
        reactor.processes[-1].ready()
        d.cancel()
        self.assertTrue(self.failureResultOf(d, CallCancelled).value.started)
        reactor.advance(100)
        self.assertEqual(reactor.processes[-1].requests(), [])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_stopDuringBackoff(self) -> None:
        """
        Stopping the pool fails a call waiting for its retry with
        C{stopping}, saying it started, and the pool stops.
        """
        pool, reactor = self.pool()
        d = pool.submit("flaky", [1])
        reactor.processes[0].exit(None, signal.SIGKILL)
        reactor.processes[-1].ready()
        stopped = pool.stop()
        error = self.failureResultOf(d, errors.PoolStopping).value
        self.assertEqual((error.started, error.attempts), (True, 1))
        reactor.processes[-1].exit(0)
        self.successResultOf(stopped)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_capFreedDuringBackoff(self) -> None:
        """
        A capped call waiting for its retry does not hold its place under
        the cap: the next call of the task runs meanwhile.
        """
        pool, reactor = self.pool(workers=2)
        first = pool.submit("capped", [1], timeout=1)
        second = pool.submit("capped", [2])
        a, b = reactor.processes[:2]
        if a.requests():
            a, b = b, a
        self.assertEqual(b.requests()[0][1]["args"], [1])
        reactor.advance(1)
        self.assertEqual(b.signals, ["SIGKILL"])
        live = a
        self.assertEqual([r["args"] for _, r in live.requests()], [[2]])
        live.send(b"R2")
        self.assertEqual(self.successResultOf(second), 2)
        self.assertEqual([r["args"] for _, r in live.requests()], [[2], [1]])
        live.send(b"R1")
        self.assertEqual(self.successResultOf(first), 1)
