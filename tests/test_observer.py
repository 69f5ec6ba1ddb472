"""
Tests for L{taskd.observer}: what a L{taskd.pool.ProcessPool} tells its
observer, exactly, on the fake process reactor.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from taskd import errors
from taskd.observer import ObservedCall, PoolObserver, outcomeOf, workerEndReason

from tests.fakes import PoolTestsMixin


class Recorder:
    """
    An observer that records what it is told, with the task names of the
    calls.
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

        # Where, when and from whom the calls told of came.
        self.calls: list[tuple[Any, ...]] = []

    def callEnded(self, call: ObservedCall, outcome: str, ran: float | None) -> None:
        self.events.append(("ended", call.name, outcome, ran))
        waited = None if call.startedAt is None else call.startedAt - call.submittedAt
        self.calls.append((call.name, call.number, call.priority, call.origin, call.pid, waited))

    def workerStarted(self, pid: int | None) -> None:
        self.events.append(("worker", pid))

    def workerEnded(self, pid: int | None, reason: str) -> None:
        self.events.append(("workerEnded", pid, reason))


_check: type[PoolObserver] = Recorder


class PoolObserverTests(PoolTestsMixin, SynchronousTestCase):
    """
    The pool tells its observer of every call and worker.
    """

    def observed(self, workers: int = 1, **kw: Any) -> tuple[Any, Any, Recorder]:
        pool, reactor = self.makePool(workers, **kw)
        recorder = Recorder()
        pool.observer = recorder
        d = pool.start()
        for p in reactor.processes:
            p.ready()
        self.successResultOf(d)
        return pool, reactor, recorder

    def test_resultAndError(self) -> None:
        """
        A call's end is told with its outcome and run time: C{"result"}, or
        its error's type; the call carries its number, priority, origin,
        the worker it ran in and when it was accepted and started.
        """
        pool, reactor, recorder = self.observed()
        p = reactor.processes[0]
        first = pool.submitEncoded("add", b'{"args":[1,2]}', origin="127.0.0.1:4000")
        second = pool.submitEncoded("sleep", b'{"args":[1]}', priority=3)
        reactor.advance(2)
        p.send(b"R3")
        reactor.advance(0.5)
        p.send(b'E{"type":"task_failed","message":"boom","exception":"ValueError"}')
        self.assertEqual(self.successResultOf(first), b"3")
        self.failureResultOf(second, errors.TaskFailed)
        self.assertEqual(
            recorder.events,
            [
                ("worker", p.pid),
                ("ended", "add", "result", 2.0),
                ("ended", "sleep", "task_failed", 0.5),
            ],
        )
        self.assertEqual(
            recorder.calls,
            [("add", 1, 0, "127.0.0.1:4000", p.pid, 0.0), ("sleep", 2, 3, None, p.pid, 2.0)],
        )

    def test_timeout(self) -> None:
        """
        A call past its timeout ends with C{"timeout"}; its worker ends for
        the reason C{"timeout"} and its replacement is told of when ready.
        """
        pool, reactor, recorder = self.observed()
        old = reactor.processes[0]
        d = pool.submit("sleep", [10], timeout=1.5)
        reactor.advance(1.5)
        self.failureResultOf(d, errors.TaskTimeout)
        old.exit(None, signal.SIGKILL)
        reactor.processes[1].ready()
        self.assertEqual(
            recorder.events[1:],
            [
                ("ended", "sleep", "timeout", 1.5),
                ("workerEnded", old.pid, "timeout"),
                ("worker", reactor.processes[1].pid),
            ],
        )

    def test_cancelRunningAndQueued(self) -> None:
        """
        A running call that is cancelled ends with C{"cancelled"} and its
        worker for the reason C{"cancel"}; a queued one ends with
        C{"cancelled"} and no run time.
        """
        pool, reactor, recorder = self.observed()
        old = reactor.processes[0]
        running = pool.submit("sleep", [10])
        queued = pool.submit("add", [1, 2])
        reactor.advance(1)
        queued.cancel()
        running.cancel()
        old.exit(None, signal.SIGKILL)
        for d in (queued, running):
            self.failureResultOf(d, CancelledError)
        self.assertEqual(
            recorder.events[1:],
            [
                ("ended", "add", "cancelled", None),
                ("ended", "sleep", "cancelled", 1.0),
                ("workerEnded", old.pid, "cancel"),
            ],
        )

    def test_crash(self) -> None:
        """
        A worker that dies while it runs a call ends for the reason
        C{"crash"}; the call ends with C{"worker_crashed"}.
        """
        pool, reactor, recorder = self.observed()
        p = reactor.processes[0]
        d = pool.submit("sleep", [10])
        p.exit(None, signal.SIGSEGV)
        self.failureResultOf(d, errors.WorkerCrashed)
        self.assertEqual(
            recorder.events[1:],
            [("workerEnded", p.pid, "crash"), ("ended", "sleep", "worker_crashed", 0.0)],
        )

    def test_recycleAndMemory(self) -> None:
        """
        A worker let go after C{maxTasksPerWorker} calls ends for the
        reason C{"recycle"}; one that said it is over its memory limit for
        C{"memory"}.
        """
        pool, reactor, recorder = self.observed(maxTasksPerWorker=1)
        first = reactor.processes[0]
        pool.submit("add", [1, 2])
        first.send(b"R3")
        first.exit(0)
        second = reactor.processes[1]
        second.ready()
        pool.submit("add", [1, 2])
        second.send(b'G{"reason":"memory"}')
        second.send(b"R3")
        second.exit(0)
        ends = [e for e in recorder.events if e[0] == "workerEnded"]
        self.assertEqual(ends, [("workerEnded", first.pid, "recycle"), ("workerEnded", second.pid, "memory")])

    def test_stop(self) -> None:
        """
        Workers ended by a stop end for the reason C{"stop"}; a queued call
        ends with C{"stopping"}.
        """
        pool, reactor, recorder = self.observed(workers=2)
        busy = pool.submit("sleep", [1])
        pool.submit("sleep", [1])
        queued = pool.submit("add", [1, 2])
        d = pool.stop()
        self.failureResultOf(queued, errors.PoolStopping)
        for p in reactor.processes:
            p.send(b"R1")
            p.exit(0)
        self.successResultOf(d)
        self.successResultOf(busy)
        ends = sorted(e[2] for e in recorder.events if e[0] == "workerEnded")
        self.assertEqual(ends, ["stop", "stop"])
        self.assertIn(("ended", "add", "stopping", None), recorder.events)

    def test_retried(self) -> None:
        """
        A call of a task with retries whose worker crashes is started again
        and ends once, with its last attempt's outcome and run time; the
        worker ends for the reason C{"crash"}.
        """
        from taskd.registry import Registry

        registry = Registry()
        registry.register(lambda: None, "flaky", retries=1, backoff=1.0)
        pool, reactor, recorder = self.observed(registry=registry)
        pool.jitter = lambda: 1.0
        first = reactor.processes[0]
        d = pool.submit("flaky")
        first.exit(None, signal.SIGKILL)
        second = reactor.processes[1]
        second.ready()
        reactor.advance(1)
        reactor.advance(0.5)
        second.send(b"Rnull")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(
            recorder.events[1:],
            [
                ("workerEnded", first.pid, "crash"),
                ("worker", second.pid),
                ("ended", "flaky", "result", 0.5),
            ],
        )
        # Its wait: until its last start.
        self.assertEqual(recorder.calls, [("flaky", 1, 0, None, second.pid, 1.0)])

    def test_noObserver(self) -> None:
        """
        Without an observer the pool still numbers its calls and notes
        where they came from and where and when they started (for the
        admin list of running calls), but not when they were accepted or
        how they ended.
        """
        pool, reactor = self.startedPool()
        d = pool.submitEncoded("add", b'{"args":[1,2]}', origin="x")
        [call] = reactor.processes[0].proto.inFlight
        reactor.processes[0].send(b"R3")
        self.successResultOf(d)
        self.assertEqual(
            (call.origin, call.number, call.submittedAt, call.startedAt, call.pid, call.outcome),
            ("x", 1, 0.0, 0.0, reactor.processes[0].pid, None),
        )


class OutcomeTests(SynchronousTestCase):
    """
    L{outcomeOf} and L{workerEndReason}.
    """

    def test_outcomes(self) -> None:
        """
        A result is C{"result"}, a L{errors.TaskdError} its type, a
        cancellation C{"cancelled"}, anything else C{"error"}.
        """
        self.assertEqual(outcomeOf(b"3"), "result")
        self.assertEqual(outcomeOf(Failure(errors.TaskTimeout("t"))), "timeout")
        self.assertEqual(outcomeOf(Failure(CancelledError())), "cancelled")
        self.assertEqual(outcomeOf(Failure(ZeroDivisionError())), "error")

    def test_reasons(self) -> None:
        """
        Each way a worker ends has its reason.
        """
        cases = [
            ((None, None, False), "crash"),
            ((None, None, True), "stop"),
            (("timeout", None, False), "timeout"),
            (("cancelled", None, False), "cancel"),
            (("worker_protocol_error", None, False), "protocol"),
            (("result_too_large", None, False), "protocol"),
            (("stopping", None, False), "stop"),
            (("", None, True), "stop"),
            (("", None, False), "recycle"),
            ((None, "memory", False), "memory"),
            ((None, "signal", False), "signal"),
            ((None, "", False), "recycle"),
            ((None, "", True), "stop"),
        ]
        self.assertEqual([workerEndReason(*args) for args, _ in cases], [r for _, r in cases])
