"""
Tests for L{taskd.testing}, the test kit users import: the fake client and
the fake pool, on a L{Clock}; the documentation's example tests, run by
trial; and a check that the daemon never imports the kit.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

import taskd
from taskd import errors
from taskd.client import TaskClient, TaskClientProtocol
from taskd.reconnecting import ReconnectingClient
from taskd.pool import PoolState, ProcessPool
from taskd.registry import Registry
from taskd.testing import CallState, FakeClient, FakePool
from taskd.worker import MAX_PROGRESS, runCall

from tests.test_docs import samples
from tests.test_tap import ROOT

EXAMPLES = os.path.join(ROOT, "docs", "examples")


class MailRefused(Exception):
    """
    An application's own exception, raised by a task.
    """


def double(x: int) -> list[int]:
    """
    A task returning a tuple, which JSON makes a list.
    """
    return [x, x]


def nan() -> float:
    return math.nan


def refuse(to: str) -> None:
    raise MailRefused(f"{to} is not taking mail")


def report(n: int) -> str:
    for i in range(n):
        taskd.progress({"done": i + 1, "of": n})
    return "reported"


def big() -> str:
    return "x" * 100


TASKS: dict[str, Callable[..., Any]] = {
    "double": double,
    "nan": nan,
    "refuse": refuse,
    "report": report,
    "big": big,
    "echo": lambda *args, **kwargs: [args, kwargs],
}


def realClient() -> tuple[TaskClient, TaskClientProtocol]:
    """
    @return: a real client on a L{StringTransport}, to compare with.
    """
    protocol = TaskClientProtocol()
    protocol.makeConnection(StringTransport())
    return TaskClient(protocol), protocol


def workerError(name: str, payload: bytes = b"{}", registry: Registry | None = None) -> errors.TaskdError:
    """
    @return: the error a real worker gives for this call (with no tasks
        but C{registry}'s).
    """
    reply = runCall(registry or Registry(), name.encode() + b"\n" + payload, 1000)
    return errors.errorFromDict(json.loads(reply[1:]))


class SignatureTests(SynchronousTestCase):
    def test_clientCallingAPI(self) -> None:
        """
        L{FakeClient.call} and L{FakeClient.callWith} have exactly the
        signatures of the real clients' (names, kinds, defaults,
        annotations), and L{FakeClient.close} has L{TaskClient.close}'s.
        """
        for name in ("call", "callWith"):
            fake = inspect.signature(getattr(FakeClient, name))
            self.assertEqual(fake, inspect.signature(getattr(TaskClient, name)))
            self.assertEqual(fake, inspect.signature(getattr(ReconnectingClient, name)))
        self.assertEqual(inspect.signature(FakeClient.close), inspect.signature(TaskClient.close))

    def test_poolAPI(self) -> None:
        """
        L{FakePool}'s public methods take the parameters of
        L{ProcessPool}'s, of the same kinds and annotations, with the same
        defaults (the pool's private "use the default" marker aside).
        """
        for name in ("start", "submit", "submitEncoded", "stop", "stats", "pids"):
            fake = inspect.signature(getattr(FakePool, name))
            real = inspect.signature(getattr(ProcessPool, name))
            self.assertEqual(fake.return_annotation, real.return_annotation)
            self.assertEqual(list(fake.parameters), list(real.parameters), name)
            for parameter in real.parameters.values():
                other = fake.parameters[parameter.name]
                self.assertEqual((other.kind, other.annotation), (parameter.kind, parameter.annotation))
                if type(parameter.default) is not object:
                    self.assertEqual(other.default, parameter.default)


class ByHandTests(SynchronousTestCase):
    """
    A L{FakeClient} without tasks: every call waits for the test.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeClient(self.clock)

    def test_pendingCalls(self) -> None:
        """
        Each call waits in C{pending}, showing its name, the arguments its
        task would receive (after the JSON round trip), its timeout and
        whether progress was asked for.
        """
        self.client.call("send", "a@example.com", (1, 2), subject="hi")
        self.client.callWith("send", ["b"], {"subject": "yo"}, timeout=5, progress=print)
        first, second = self.client.pending
        self.assertEqual(
            (first.name, first.args, first.kwargs, first.timeout, first.wantsProgress, first.state),
            ("send", ("a@example.com", [1, 2]), {"subject": "hi"}, None, False, CallState.RUNNING),
        )
        self.assertEqual((second.args, second.kwargs, second.timeout, second.wantsProgress), (("b",), {"subject": "yo"}, 5, True))
        self.assertEqual(self.client.calls, [first, second])

    def test_succeed(self) -> None:
        """
        A result answers the call after a JSON round trip.
        """
        d = self.client.call("send")
        [call] = self.client.pending
        call.succeed({"sent": ("a", "b")})
        self.assertEqual(self.successResultOf(d), {"sent": ["a", "b"]})
        self.assertEqual((call.state, call.result, self.client.pending), (CallState.SUCCEEDED, {"sent": ["a", "b"]}, []))

    def test_succeedNotJSON(self) -> None:
        """
        A result JSON cannot hold is the test's mistake: it raises, and
        the call goes on waiting.
        """
        d = self.client.call("send")
        [call] = self.client.pending
        self.assertRaises(TypeError, call.succeed, object())
        self.assertRaises(ValueError, call.succeed, math.inf)
        self.assertNoResult(d)
        self.assertEqual(call.state, CallState.RUNNING)

    def test_fail(self) -> None:
        """
        An error fails the call; only taskd's errors are accepted.
        """
        d = self.client.call("send")
        [call] = self.client.pending
        self.assertRaises(TypeError, call.fail, ValueError("no"))
        error = errors.WorkerCrashed("the worker was killed by SIGKILL")
        call.fail(error)
        self.assertIs(self.failureResultOf(d, errors.WorkerCrashed).value, error)
        self.assertEqual((call.state, call.error), (CallState.FAILED, error))

    def test_answerTwice(self) -> None:
        """
        An ended call cannot be answered again.
        """
        self.client.call("send")
        [call] = self.client.pending
        call.succeed(1)
        exc = self.assertRaises(RuntimeError, call.succeed, 2)
        self.assertEqual(str(exc), "the call to 'send' is succeeded, not running")
        self.assertRaises(RuntimeError, call.fail, errors.PoolBusy("x"))
        self.assertRaises(RuntimeError, call.report, 1)

    def test_progress(self) -> None:
        """
        Progress reports reach the caller's callback, in order, before
        the result; a call that did not ask for progress gets none, and
        every report is recorded on the call.
        """
        seen: list[Any] = []
        d = self.client.callWith("send", progress=seen.append)
        quiet = self.client.call("send")
        call, quietCall = self.client.pending
        call.report({"done": (1,)})
        call.report(2)
        quietCall.report(3)
        self.assertEqual(seen, [{"done": [1]}, 2])
        self.assertNoResult(d)
        call.succeed(None)
        quietCall.succeed(None)
        self.assertEqual((call.reports, quietCall.reports), ([{"done": [1]}, 2], [3]))
        self.successResultOf(quiet)

    def test_progressChecked(self) -> None:
        """
        A report must be JSON, and no larger than a task's may be.
        """
        self.client.callWith("send", progress=print)
        [call] = self.client.pending
        self.assertRaises(TypeError, call.report, {1, 2})
        self.assertRaises(ValueError, call.report, math.nan)
        self.assertRaises(ValueError, call.report, "x" * MAX_PROGRESS)
        self.assertEqual(call.reports, [])

    def test_progressCallbackFails(self) -> None:
        """
        A progress callback that raises is logged, as the real client
        does, and the call goes on.
        """

        def broken(value: Any) -> None:
            raise ZeroDivisionError()

        d = self.client.callWith("send", progress=broken)
        [call] = self.client.pending
        with capturedLogs() as events:
            call.report(1)
        self.assertEqual([e["log_format"] for e in events], ["a progress callback failed"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        call.succeed(2)
        self.assertEqual(self.successResultOf(d), 2)

    def test_timeout(self) -> None:
        """
        A call fails with L{errors.TaskTimeout} when the clock passes its
        timeout, worded as the pool words it, and not before.
        """
        d = self.client.callWith("send", timeout=5)
        [call] = self.client.pending
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.failureResultOf(d, errors.TaskTimeout).value
        self.assertEqual(error.message, "task 'send' did not finish within 5 seconds")
        self.assertEqual((call.state, call.error), (CallState.FAILED, error))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertRaises(RuntimeError, call.succeed, 1)

    def test_daemonTimeout(self) -> None:
        """
        The fake's own timeout, the daemon's limit, applies to calls
        without one; a call's timeout may shorten it but not lengthen it.
        """
        client = FakeClient(self.clock, timeout=10)
        calls = [client.call("a"), client.callWith("b", timeout=20), client.callWith("c", timeout=3)]
        self.assertEqual([call.timeout for call in client.pending], [10, 10, 3])
        self.clock.advance(3)
        self.assertEqual([call.name for call in client.pending], ["a", "b"])
        self.clock.advance(7)
        self.assertEqual(client.pending, [])
        for d in calls:
            self.failureResultOf(d, errors.TaskTimeout)

    def test_answeredInTime(self) -> None:
        """
        A call answered before its timeout leaves no timer behind.
        """
        d = self.client.callWith("send", timeout=5)
        self.client.pending[0].succeed(1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d), 1)

    def test_cancel(self) -> None:
        """
        Cancelling a call's C{Deferred} fails it with C{CancelledError},
        as the real client does; the fake records the cancel and forgets
        the call's timer.
        """
        d = self.client.callWith("send", timeout=5)
        [call] = self.client.pending
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(call.cancelled)
        self.assertEqual((call.state, self.client.pending), (CallState.CANCELLED, []))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertRaises(RuntimeError, call.succeed, 1)

    def test_cancelEnded(self) -> None:
        """
        Cancelling a call that has ended changes nothing.
        """
        d = self.client.call("send")
        [call] = self.client.pending
        call.succeed(1)
        d.cancel()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertFalse(call.cancelled)

    def test_busy(self) -> None:
        """
        While C{busy}, calls fail at once with L{errors.PoolBusy}.
        """
        self.client.busy = True
        error = self.failureResultOf(self.client.call("send"), errors.PoolBusy).value
        self.assertEqual(error.message, "the queue is full (0 calls waiting); try again later")
        self.assertEqual(self.client.calls, [])
        self.client.busy = False
        self.client.call("send")
        self.assertEqual(len(self.client.pending), 1)

    def test_maxInFlight(self) -> None:
        """
        Past C{maxInFlight} calls waiting, calls fail with
        L{errors.PoolBusy}; once one ends, another is taken.
        """
        client = FakeClient(self.clock, maxInFlight=2)
        client.call("a")
        client.call("b")
        self.failureResultOf(client.call("c"), errors.PoolBusy)
        client.pending[0].succeed(None)
        client.call("d")
        self.assertEqual([call.name for call in client.pending], ["b", "d"])

    def test_badArguments(self) -> None:
        """
        Arguments JSON cannot hold fail the call with
        L{errors.BadRequest}, worded as the real client words it.
        """
        real, _ = realClient()
        for args in [({1},), (math.nan,)]:
            fake = self.failureResultOf(self.client.call("send", *args), errors.BadRequest).value
            expected = self.failureResultOf(real.call("send", *args), errors.BadRequest).value
            self.assertEqual(fake.message, expected.message)
        self.assertEqual(self.client.calls, [])

    def test_close(self) -> None:
        """
        L{FakeClient.close} fails the pending calls with
        L{errors.ConnectionLost}, and later calls too, with the real
        client's words.
        """
        real, protocol = realClient()
        realPending = real.call("send")
        realClosing = real.close()
        protocol.connectionLost(connectionDone)
        self.successResultOf(realClosing)
        pending = self.client.callWith("send", timeout=5)
        [call] = self.client.pending
        self.successResultOf(self.client.close())
        self.assertTrue(self.client.closed)
        self.assertEqual(
            self.failureResultOf(pending, errors.ConnectionLost).value.message,
            self.failureResultOf(realPending, errors.ConnectionLost).value.message,
        )
        self.assertEqual(call.state, CallState.FAILED)
        self.assertEqual(
            self.failureResultOf(self.client.call("send"), errors.ConnectionLost).value.message,
            self.failureResultOf(real.call("send"), errors.ConnectionLost).value.message,
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noTasksToRun(self) -> None:
        """
        A call of a fake without tasks cannot be run.
        """
        self.client.call("send")
        exc = self.assertRaises(RuntimeError, self.client.pending[0].run)
        self.assertEqual(str(exc), "the fake has no tasks to run 'send' with")

    def test_repr(self) -> None:
        """
        A call shows its name, arguments and state.
        """
        self.client.call("send", 1, to="a")
        self.assertEqual(repr(self.client.pending[0]), "<FakeCall send(1,) {'to': 'a'} running>")


class InProcessTests(SynchronousTestCase):
    """
    A L{FakeClient} with tasks runs each call in this process, as a worker
    would.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeClient(self.clock, TASKS)

    def test_result(self) -> None:
        """
        The task receives its arguments and the caller its result after
        the JSON round trip.
        """
        self.assertEqual(self.successResultOf(self.client.call("double", 21)), [21, 21])
        self.assertEqual(
            self.successResultOf(self.client.callWith("echo", [(1, 2)], {"k": (3,)})),
            [[[1, 2]], {"k": [3]}],
        )
        [first, second] = self.client.calls
        self.assertEqual((first.state, first.result), (CallState.SUCCEEDED, [21, 21]))

    def test_registry(self) -> None:
        """
        The tasks may be a L{Registry}, as a task module fills it.
        """
        registry = Registry()

        @registry.task(name="mail.send")
        def send(to: str) -> str:
            return f"sent to {to}"

        client = FakeClient(self.clock, registry)
        self.assertEqual(self.successResultOf(client.call("mail.send", "a")), "sent to a")

    def test_taskFailed(self) -> None:
        """
        A task's exception fails the call with L{errors.TaskFailed},
        naming the exception's type as the daemon does, with the traceback.
        """
        error = self.failureResultOf(self.client.call("refuse", "a@example.com"), errors.TaskFailed).value
        self.assertEqual(
            (error.remoteType, error.message),
            ("tests.test_testing.MailRefused", "a@example.com is not taking mail"),
        )
        self.assertIn("in refuse\n", error.remoteTraceback)
        wrong = self.failureResultOf(self.client.call("double"), errors.TaskFailed).value
        self.assertEqual(wrong.remoteType, "TypeError")

    def test_badResult(self) -> None:
        """
        A result JSON cannot hold, NaN included, fails the call with
        L{errors.ResultNotSerializable} (C{bad_result}).
        """
        error = self.failureResultOf(self.client.call("nan"), errors.ResultNotSerializable).value
        self.assertEqual(error.type, "bad_result")
        self.assertTrue(error.message.startswith("task 'nan' returned a value JSON cannot hold: "), error.message)
        client = FakeClient(self.clock, {"set": lambda: {1}})
        self.failureResultOf(client.call("set"), errors.ResultNotSerializable)

    def test_resultTooLarge(self) -> None:
        """
        A result over C{maxResult} bytes of JSON fails with
        L{errors.ResultTooLarge}.
        """
        client = FakeClient(self.clock, TASKS, maxResult=100)
        error = self.failureResultOf(client.call("big"), errors.ResultTooLarge).value
        self.assertEqual(error.message, "task 'big' returned 102 bytes of JSON; the limit is 100")

    def test_unknownTask(self) -> None:
        """
        A name that is not a task fails with L{errors.UnknownTask}, worded
        as the daemon words it, and is not recorded as a call.
        """
        error = self.failureResultOf(self.client.call("nope"), errors.UnknownTask).value
        self.assertEqual(error.message, workerError("nope").message)
        self.assertEqual(self.client.calls, [])

    def test_progress(self) -> None:
        """
        L{taskd.progress} inside the task reaches the caller's callback,
        before the result; outside a call it does nothing again.
        """
        seen: list[Any] = []
        d = self.client.callWith("report", [2], progress=seen.append)
        self.assertEqual(seen, [{"done": 1, "of": 2}, {"done": 2, "of": 2}])
        self.assertEqual(self.successResultOf(d), "reported")
        self.assertEqual(self.client.calls[0].reports, seen)
        taskd.progress("nobody listens")
        self.assertEqual(len(seen), 2)

    def test_progressNotJSON(self) -> None:
        """
        A report JSON cannot hold raises in the task, as in a worker.
        """
        client = FakeClient(self.clock, {"t": lambda: taskd.progress(math.nan)})
        error = self.failureResultOf(client.callWith("t", progress=print), errors.TaskFailed).value
        self.assertEqual(error.remoteType, "ValueError")

    def test_hold(self) -> None:
        """
        With C{hold}, calls wait; the test may run one with its task, let
        the clock time another out, or cancel it.
        """
        client = FakeClient(self.clock, TASKS, timeout=30, hold=True)
        seen: list[Any] = []
        first = client.callWith("report", [1], progress=seen.append)
        second = client.call("double", 2)
        third = client.call("double", 3)
        self.assertNoResult(first)
        a, b, c = client.pending
        a.run()
        self.assertEqual((self.successResultOf(first), seen), ("reported", [{"done": 1, "of": 1}]))
        third.cancel()
        self.clock.advance(30)
        self.failureResultOf(second, errors.TaskTimeout)
        self.failureResultOf(third, CancelledError)
        self.assertEqual([call.state for call in (a, b, c)], [CallState.SUCCEEDED, CallState.FAILED, CallState.CANCELLED])
        self.assertRaises(RuntimeError, b.run)

    def test_heldCallAnsweredByHand(self) -> None:
        """
        A held call may be answered by hand instead of run.
        """
        client = FakeClient(self.clock, TASKS, hold=True)
        d = client.call("double", 2)
        client.pending[0].fail(errors.WorkerCrashed("gone"))
        self.failureResultOf(d, errors.WorkerCrashed)


class FakePoolTests(SynchronousTestCase):
    """
    L{FakePool} runs calls in this process with L{ProcessPool}'s API.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = Registry()
        for name, function in TASKS.items():
            self.registry.register(function, name)

    def pool(self, **kwargs: Any) -> FakePool:
        pool = FakePool(self.clock, [], registry=self.registry, **kwargs)
        self.successResultOf(pool.start())
        return pool

    def test_start(self) -> None:
        """
        L{FakePool.start} imports the task modules and runs the pool; a
        second start fails, as does a module that cannot be imported.
        """
        pool = FakePool(self.clock, ["tests.tasks"])
        self.assertEqual(pool.state, PoolState.NEW)
        self.successResultOf(pool.start())
        self.assertEqual(pool.state, PoolState.RUNNING)
        self.assertIn("chatty", pool.registry)
        self.assertEqual(str(self.failureResultOf(pool.start(), RuntimeError).value), "cannot start a pool that is running")
        broken = FakePool(self.clock, ["tests.no_such_module"])
        self.failureResultOf(broken.start(), ImportError)
        self.assertEqual(broken.state, PoolState.STOPPED)

    def test_notRunning(self) -> None:
        """
        Before L{FakePool.start} and after L{FakePool.stop}, calls fail
        with L{errors.PoolStopping}, as the real pool's do.
        """
        pool = FakePool(self.clock, [], registry=self.registry)
        real = ProcessPool(MemoryReactorClock(), [], 1, registry=self.registry)
        self.assertEqual(
            self.failureResultOf(pool.submit("double", [1]), errors.PoolStopping).value.message,
            self.failureResultOf(real.submit("double", [1]), errors.PoolStopping).value.message,
        )
        self.successResultOf(pool.stop())
        self.successResultOf(real.stop())
        self.assertEqual(pool.state, PoolState.STOPPED)
        self.assertEqual(
            self.failureResultOf(pool.submit("double", [1]), errors.PoolStopping).value.message,
            self.failureResultOf(real.submit("double", [1]), errors.PoolStopping).value.message,
        )

    def test_submit(self) -> None:
        """
        L{FakePool.submit} runs the task: result, progress, task errors and
        unknown names as from the real pool.
        """
        pool = self.pool()
        seen: list[Any] = []
        self.assertEqual(self.successResultOf(pool.submit("double", [4])), [4, 4])
        self.assertEqual(self.successResultOf(pool.submit("report", [1], progress=seen.append)), "reported")
        self.assertEqual(seen, [{"done": 1, "of": 1}])
        self.failureResultOf(pool.submit("refuse", ["a"]), errors.TaskFailed)
        self.failureResultOf(pool.submit("nope"), errors.UnknownTask)
        self.failureResultOf(pool.submit("double", [{1}]), errors.BadRequest)
        self.assertEqual(pool.stats(), {"workers": 1, "idle": 1, "busy": 0, "queued": 0, "processes": 1, "memoryRecycled": 0, "queuedByPriority": {}, "queuedByTask": {}, "retrying": 0})
        self.assertEqual(pool.pids(), set())

    def test_submitEncoded(self) -> None:
        """
        L{FakePool.submitEncoded} takes the arguments as JSON (an
        C{"args"} object is keyword arguments) and gives the result and
        progress reports as JSON; a payload a worker would refuse fails
        with the worker's L{errors.BadRequest}.
        """
        pool = self.pool()
        seen: list[bytes] = []
        self.assertEqual(self.successResultOf(pool.submitEncoded("echo", b'{"args":{"a":1}}')), b'[[],{"a":1}]')
        self.assertEqual(self.successResultOf(pool.submitEncoded("report", b'{"args":[1]}', progress=seen.append)), b'"reported"')
        self.assertEqual(seen, [b'{"done":1,"of":1}'])
        for payload in (b"[1]", b'{"args":3}', b"not json"):
            error = self.failureResultOf(pool.submitEncoded("echo", payload), errors.BadRequest).value
            self.assertEqual(error.message, workerError("echo", payload, self.registry).message)

    def test_held(self) -> None:
        """
        With C{hold}, each worker takes one call and the others queue, up
        to C{maxQueue}; a call's timeout starts when a worker takes it.
        """
        pool = self.pool(workers=1, maxQueue=1, timeout=10, hold=True)
        first = pool.submit("double", [1])
        self.clock.advance(5)
        second = pool.submit("double", [2], timeout=None)
        third = pool.submit("double", [3])
        self.failureResultOf(third, errors.PoolBusy)
        a, b = pool.pending
        self.assertEqual((a.state, b.state), (CallState.RUNNING, CallState.QUEUED))
        self.assertEqual(pool.stats(), {"workers": 1, "idle": 0, "busy": 1, "queued": 1, "processes": 1, "memoryRecycled": 0, "queuedByPriority": {"0": 1}, "queuedByTask": {"double": 1}, "retrying": 0})
        self.assertRaises(RuntimeError, b.succeed, 1)
        self.clock.advance(5)
        self.failureResultOf(first, errors.TaskTimeout)
        self.assertEqual(b.state, CallState.RUNNING)
        self.clock.advance(100)
        b.run()
        self.assertEqual(self.successResultOf(second), [2, 2])

    def test_heldFIFO(self) -> None:
        """
        A call submitted as a worker frees up does not overtake the queued
        ones.
        """
        pool = self.pool(workers=1, hold=True)
        pool.submit("double", [1]).addCallback(lambda _: pool.submit("double", [3]))
        pool.submit("double", [2])
        pool.pending[0].run()
        self.assertEqual([call.args for call in pool.pending], [(2,), (3,)])
        self.assertEqual([call.state for call in pool.pending], [CallState.RUNNING, CallState.QUEUED])

    def test_cancelQueued(self) -> None:
        """
        A queued call cancelled leaves the queue; a running one cancelled
        frees its worker for the next.
        """
        pool = self.pool(workers=1, hold=True)
        first = pool.submit("double", [1])
        second = pool.submit("double", [2])
        third = pool.submit("double", [3])
        second.cancel()
        self.failureResultOf(second, CancelledError)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual([(call.args, call.state) for call in pool.pending], [((3,), CallState.RUNNING)])
        self.assertNoResult(third)

    def test_stop(self) -> None:
        """
        L{FakePool.stop} fails queued calls with L{errors.PoolStopping},
        lets the running ones be answered, and fires once none runs.
        """
        pool = self.pool(workers=1, hold=True)
        running = pool.submit("double", [1])
        queued = pool.submit("double", [2])
        stopped = pool.stop()
        self.assertEqual(self.failureResultOf(queued, errors.PoolStopping).value.message, "the pool is stopping")
        self.assertNoResult(stopped)
        self.assertEqual(pool.state, PoolState.STOPPING)
        self.assertEqual(pool.stats(), {"workers": 1, "idle": 0, "busy": 1, "queued": 0, "processes": 1, "memoryRecycled": 0, "queuedByPriority": {}, "queuedByTask": {}, "retrying": 0})
        also = pool.stop()
        self.failureResultOf(pool.submit("double", [3]), errors.PoolStopping)
        pool.pending[0].run()
        self.assertEqual(self.successResultOf(running), [1, 1])
        self.successResultOf(stopped)
        self.successResultOf(also)
        self.assertEqual(pool.state, PoolState.STOPPED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(pool.stats(), {"workers": 0, "idle": 0, "busy": 0, "queued": 0, "processes": 0, "memoryRecycled": 0, "queuedByPriority": {}, "queuedByTask": {}, "retrying": 0})

    def test_stopGrace(self) -> None:
        """
        A running call not answered within the grace period fails with
        L{errors.PoolStopping}, as the real pool words it.
        """
        pool = self.pool(grace=2, hold=True)
        running = pool.submit("double", [1])
        stopped = pool.stop()
        self.clock.advance(1.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        error = self.failureResultOf(running, errors.PoolStopping).value
        self.assertEqual(error.message, "task 'double' did not finish within the 2-second shutdown grace period")
        self.successResultOf(stopped)

    def test_stopIdle(self) -> None:
        """
        Stopping a pool with nothing running fires at once.
        """
        pool = self.pool()
        self.successResultOf(pool.stop())
        self.assertEqual(pool.state, PoolState.STOPPED)
        self.successResultOf(pool.stop())
        self.successResultOf(FakePool(self.clock).stop())

    def test_badConfiguration(self) -> None:
        """
        No workers, or a negative queue, is refused as the real pool
        refuses it.
        """
        self.assertRaises(ValueError, FakePool, self.clock, workers=0)
        self.assertRaises(ValueError, FakePool, self.clock, maxQueue=-1)


class ExampleTests(SynchronousTestCase):
    """
    The application of docs/testing.md handles each error a taskd call can
    end with, shown through the fake client.
    """

    def setUp(self) -> None:
        if EXAMPLES not in sys.path:
            sys.path.insert(0, EXAMPLES)
            self.addCleanup(sys.path.remove, EXAMPLES)

    def test_eachErrorType(self) -> None:
        """
        For every error type in L{taskd.errors}, C{notify.mailUsers} puts
        the address where its policy says: retried later if nothing was
        sent, failed with the reason otherwise.
        """
        import notify

        def retry(address: str) -> Any:
            return notify.Report(retry=[address])

        def failed(why: str) -> Callable[[str], Any]:
            return lambda address: notify.Report(failed={address: why})

        maybe = "(it may have been sent)"
        cases: list[tuple[errors.TaskdError, Callable[[str], Any]]] = [
            (errors.TaskFailed("mailbox full", "smtplib.SMTPRecipientsRefused", "TB"),
             failed("refused (smtplib.SMTPRecipientsRefused): mailbox full")),
            (errors.TaskTimeout("task 'send_mail' did not finish within 30 seconds"), failed(f"timed out {maybe}")),
            (errors.WorkerCrashed("the worker was killed by SIGKILL"), failed(f"the mailer crashed {maybe}")),
            (errors.WorkerProtocolError("worker 7 broke the frame protocol"), failed(f"the mailer crashed {maybe}")),
            (errors.ConnectionLost("connection to taskd lost"), failed(f"taskd went away {maybe}")),
            (errors.PoolBusy("the queue is full"), retry),
            (errors.PoolStopping("the pool is stopping"), retry),
            (errors.Expired("waited too long"), retry),
            (errors.NotConnected("no daemon is connected"), retry),
            (errors.UnknownTask("no task named 'send_mail'"), failed("unknown_task: no task named 'send_mail'")),
            (errors.BadRequest("bad"), failed("bad_request: bad")),
            (errors.LineTooLong("long"), failed("line_too_long: long")),
            (errors.DuplicateId("dup"), failed("duplicate_id: dup")),
            (errors.LineTimeout("slow"), failed("line_timeout: slow")),
            (errors.IdleTimeout("idle"), failed("idle_timeout: idle")),
            (errors.Unauthenticated("no token"), failed("unauthenticated: no token")),
            (errors.Forbidden("admin only"), failed("forbidden: admin only")),
            (errors.ResultNotSerializable("nan"), failed("bad_result: nan")),
            (errors.ResultTooLarge("big"), failed("result_too_large: big")),
            (errors.TaskCancelled("c"), failed("cancelled: c")),
            (errors.WorkerStartError("cannot import"), failed("worker_start_failed: cannot import")),
            (errors.UnknownJob("no job 'x'"), failed("unknown_job: no job 'x'")),
            (errors.JobInterrupted("it may have run"), failed("interrupted: it may have run")),
            (errors.JournalUnavailable("down"), failed("journal_unavailable: down")),
        ]
        everyType = {
            value for value in vars(errors).values()
            if isinstance(value, type) and issubclass(value, errors.TaskdError) and value is not errors.TaskdError
        }
        self.assertEqual({type(error) for error, _ in cases}, everyType)
        for error, expected in cases:
            client = FakeClient(Clock())
            d = notify.mailUsers(client, ["ann@example.com"], "Hello")
            [call] = client.pending
            call.fail(error)
            self.assertEqual(self.successResultOf(d), expected("ann@example.com"), error)


class ExampleRunTests(TestCase):
    """
    The example tests of docs/testing.md pass when trial runs them.
    """

    @inlineCallbacks
    def test_exampleTestsPass(self) -> Any:
        """
        C{python -m twisted.trial} runs docs/examples/test_notify.py, and
        the test code as docs/testing.md shows it, against
        docs/examples/notify.py: every test passes.
        """
        [shown] = [code for path, code in samples("python") if path == os.path.join("docs", "testing.md") and "class MailUsersTests" in code]
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        with open(os.path.join(work, "test_notify_as_shown.py"), "w") as f:
            f.write(shown)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([work, EXAMPLES, ROOT] + sys.path))
        out, err, status = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "twisted.trial", "test_notify", "test_notify_as_shown"],
            env=env,
            path=work,
            reactor=reactor,
        )
        output = out.decode()
        self.assertEqual(status, 0, output + err.decode())
        self.assertIn("PASSED (successes=15)", output)


class DaemonImportTests(TestCase):
    """
    The daemon never imports the test kit.
    """

    @inlineCallbacks
    def test_daemonDoesNotImportTesting(self) -> Any:
        """
        Importing the daemon, its plugin, the pool, the worker, the client
        and the command line leaves C{taskd.testing} unimported.
        """
        code = (
            "import sys, taskd, taskd.tap, taskd.server, taskd.pool, taskd.worker, taskd.client, taskd.cli.main\n"
            "from twisted.plugin import IPlugin, getPlugins\n"
            "assert any(p.tapname == 'taskd' for p in getPlugins(IPlugin) if hasattr(p, 'tapname'))\n"
            "print(sorted(m for m in sys.modules if m.startswith('taskd')))\n"
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
        out, err, status = yield getProcessOutputAndValue(sys.executable, ["-c", code], env=env, reactor=reactor)
        self.assertEqual(status, 0, err.decode())
        modules = eval(out.decode())
        self.assertIn("taskd.server", modules)
        self.assertNotIn("taskd.testing", modules)


class FakeProcessReactorExampleTests(SynchronousTestCase):
    def test_docsExampleRuns(self) -> None:
        """
        docs/testing.md's example of the real pool on the fake process
        reactor runs as shown: its own asserts hold, and the calls it makes
        end as its comments say.
        """
        [shown] = [
            code
            for path, code in samples("python")
            if path == os.path.join("docs", "testing.md") and "FakeProcessReactor()" in code
        ]
        namespace: dict[str, Any] = {}
        exec(compile(shown, "docs/testing.md", "exec"), namespace)
        self.failureResultOf(namespace["d"], errors.TaskTimeout)
        self.assertEqual(len(namespace["reactor"].processes), 2)
