"""
Unit tests for L{taskd.pool} with a fake process reactor and a L{Clock}:
exact control of timers, signals and process exits.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import CancelledError
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from taskd import errors
from taskd._frames import HEADER, REPLY_FD, REQUEST_FD, FrameDecoder
from taskd.pool import CallCancelled, PoolService, PoolState, ProcessPool

from tests.fakes import FakeProcessReactor, PoolTestsMixin, frame


class StartTests(PoolTestsMixin, SynchronousTestCase):
    def test_spawnsWorkersOnDedicatedFDs(self) -> None:
        """
        L{ProcessPool.start} spawns C{workers} children of C{taskd.worker}
        with the protocol on fds 3 and 4 and stdio as plain pipes, closes
        their stdin, and fires once every one is ready.
        """
        pool, reactor = self.makePool(workers=3, maxResult=1234)
        d = pool.start()
        self.assertEqual(len(reactor.processes), 3)
        p = reactor.processes[0]
        self.assertEqual(p.args[1:7], ["-P", "-u", "-m", "taskd.worker", "--max-result", "1234"])
        childFDs = dict(reactor.lastChildFDs)
        # Pipes the pool owns; it reads the replies itself.
        self.assertIsInstance(childFDs.pop(REQUEST_FD), int)
        self.assertIsInstance(childFDs.pop(REPLY_FD), int)
        self.assertEqual(childFDs, {0: "w", 1: "r", 2: "r"})
        self.assertIn(p.proto.replies, reactor.readers)
        self.assertIn("PYTHONPATH", p.env)
        self.assertTrue(p.stdinClosed)
        reactor.processes[0].ready()
        reactor.processes[1].ready()
        self.assertNoResult(d)
        reactor.processes[2].ready()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(pool.stats()["idle"], 3)

    def test_workerStartFailure(self) -> None:
        """
        A worker that reports an import error and exits makes L{start} fail
        with L{errors.WorkerStartError} carrying the worker's message and
        traceback, once the other workers are gone too; nothing respawns.
        """
        pool, reactor = self.makePool(workers=2)
        d = pool.start()
        bad, good = reactor.processes
        good.ready()
        bad.send(
            b"E"
            + json.dumps(
                {"type": "worker_start_failed", "message": "cannot load: boom", "traceback": "TB"}
            ).encode()
        )
        bad.exit(3)
        self.assertNoResult(d)
        self.assertEqual(good.closed, [REQUEST_FD])
        good.exit(0)
        f = self.failureResultOf(d, errors.WorkerStartError)
        self.assertEqual(f.value.message, "cannot load: boom")
        self.assertEqual(f.value.remoteTraceback, "TB")
        reactor.advance(100)
        self.assertEqual(len(reactor.processes), 2)
        self.assertEqual(pool.state, PoolState.STOPPED)

    def test_importErrorInParent(self) -> None:
        """
        A task module that cannot be imported in the parent fails L{start}
        with the import error before any worker is spawned.
        """
        reactor = FakeProcessReactor()
        pool = ProcessPool(reactor, tasks=["tests.brokentasks"], workers=1)
        f = self.failureResultOf(pool.start(), ImportError)
        self.assertIn("broken on purpose", str(f.value))
        self.assertEqual(reactor.processes, [])

    def test_restartBackoff(self) -> None:
        """
        When replacements fail to start, each next attempt waits twice as
        long as the last, up to C{maxRestartDelay}; a worker that starts
        resets the delay.  Calls queued meanwhile fail with the start error
        rather than wait forever.
        """
        pool, reactor = self.startedPool(minRestartDelay=1.0, maxRestartDelay=4.0)
        reactor.processes[0].exit(1)  # an idle worker dies: replaced at once
        self.assertEqual(len(reactor.processes), 2)
        delays = []
        for _ in range(5):
            spawned = len(reactor.processes)
            reactor.processes[-1].exit(3)  # dies before it is ready
            waited = 0.0
            while len(reactor.processes) == spawned:
                reactor.advance(0.5)
                waited += 0.5
            delays.append(waited)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 4.0, 4.0])
        f = self.failureResultOf(pool.submit("add", [1, 2]), errors.WorkerStartError)
        self.assertIn("before it was ready", f.value.message)
        reactor.processes[-1].ready()
        d = pool.submit("add", [1, 2])
        reactor.processes[-1].send(b"R3")
        self.assertEqual(self.successResultOf(d), 3)
        reactor.processes[-1].exit(1)
        reactor.processes[-1].exit(3)
        spawned = len(reactor.processes)
        reactor.advance(1.0)
        self.assertEqual(len(reactor.processes), spawned + 1)

    def test_stopWhileStarting(self) -> None:
        """
        Stopping a pool that is still starting fails L{start} with
        L{errors.PoolStopping} and ends the workers.
        """
        pool, reactor = self.makePool(workers=1)
        d = pool.start()
        stopped = pool.stop()
        self.failureResultOf(d, errors.PoolStopping)
        self.assertEqual(reactor.processes[0].signals, ["SIGKILL"])
        reactor.processes[0].exit(None, signal.SIGTERM)
        self.successResultOf(stopped)


class CallTests(PoolTestsMixin, SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        A call is written to the worker as its name and a JSON object of
        arguments; the worker's C{R} frame is the decoded result.
        """
        pool, reactor = self.startedPool()
        d = pool.submit("add", [1, 2], {"c": 3})
        self.assertEqual(reactor.processes[0].requests(), [("add", {"args": [1, 2], "kwargs": {"c": 3}})])
        self.assertNoResult(d)
        reactor.processes[0].send(b'R{"sum":6}')
        self.assertEqual(self.successResultOf(d), {"sum": 6})

    def test_submitEncodedPassesBytesThrough(self) -> None:
        """
        L{ProcessPool.submitEncoded} sends the payload unchanged and fires
        with the result's JSON bytes unchanged.
        """
        pool, reactor = self.startedPool()
        line = b'{"function":"add","args":[1,2],"id":7}'
        d = pool.submitEncoded("add", line)
        self.assertEqual(reactor.processes[0].written, [frame(b"add\n" + line)])
        reactor.processes[0].send(b"R3")
        self.assertEqual(self.successResultOf(d), b"3")

    def test_fifoQueue(self) -> None:
        """
        Calls wait in arrival order and each idle worker takes the next.
        """
        pool, reactor = self.startedPool()
        p = reactor.processes[0]
        ds = [pool.submit("add", [i, i]) for i in range(3)]
        self.assertEqual(len(p.written), 1)
        self.assertEqual(pool.stats()["queued"], 2)
        for i in range(3):
            p.send(b"R%d" % (2 * i,))
        self.assertEqual([self.successResultOf(d) for d in ds], [0, 2, 4])
        self.assertEqual([r[1]["args"] for r in p.requests()], [[0, 0], [1, 1], [2, 2]])

    def test_remoteError(self) -> None:
        """
        An C{E} frame fails the call with the matching L{errors} class,
        keeping the remote type and traceback, and the worker takes the
        next call.
        """
        pool, reactor = self.startedPool()
        d = pool.submit("add", [1])
        reactor.processes[0].send(
            b'E{"type":"task_failed","message":"boom","exception":"ValueError","traceback":"TB"}'
        )
        f = self.failureResultOf(d, errors.TaskFailed)
        self.assertEqual((f.value.message, f.value.remoteType, f.value.remoteTraceback), ("boom", "ValueError", "TB"))
        d = pool.submit("add", [1, 1])
        reactor.processes[0].send(b"R2")
        self.assertEqual(self.successResultOf(d), 2)

    def test_unknownTask(self) -> None:
        """
        A name not in the registry fails at once; no worker sees it.
        """
        pool, reactor = self.startedPool()
        f = self.failureResultOf(pool.submit("os.system", ["true"]), errors.UnknownTask)
        self.assertEqual(f.value.message, "no task named 'os.system'")
        self.assertEqual(reactor.processes[0].written, [])

    def test_unencodableArguments(self) -> None:
        """
        Arguments JSON cannot hold fail the call with L{errors.BadRequest}.
        """
        pool, reactor = self.startedPool()
        self.failureResultOf(pool.submit("add", [object()]), errors.BadRequest)
        self.failureResultOf(pool.submit("add", [float("nan")]), errors.BadRequest)

    def test_busy(self) -> None:
        """
        Past C{maxQueue} waiting calls, submitting fails with
        L{errors.PoolBusy}; the calls already accepted are unaffected.
        """
        pool, reactor = self.startedPool(maxQueue=2)
        ds = [pool.submit("add", [i, 0]) for i in range(3)]
        f = self.failureResultOf(pool.submit("add", [9, 0]), errors.PoolBusy)
        self.assertIn("2 calls waiting", f.value.message)
        for i in range(3):
            reactor.processes[0].send(b"R%d" % (i,))
        self.assertEqual([self.successResultOf(d) for d in ds], [0, 1, 2])

    def test_notStarted(self) -> None:
        """
        A pool that was not started refuses calls with
        L{errors.PoolStopping}.
        """
        pool, reactor = self.makePool()
        f = self.failureResultOf(pool.submit("add", [1, 2]), errors.PoolStopping)
        self.assertEqual(f.value.message, "the pool is not running (it is new)")


class TimeoutTests(PoolTestsMixin, SynchronousTestCase):
    def test_timeoutTerminatesAndReplaces(self) -> None:
        """
        A call that outlives its timeout fails with L{errors.TaskTimeout}
        at once; its worker is killed (SIGKILL) and the rest of its process
        group gets SIGTERM, then SIGKILL after C{killGrace} if anything is
        left once the worker has ended; a replacement is spawned straight
        away.
        """
        pool, reactor = self.startedPool(killGrace=2.0)
        d = pool.submit("sleep", [10], timeout=1.5)
        reactor.advance(1.4)
        self.assertNoResult(d)
        reactor.advance(0.1)
        f = self.failureResultOf(d, errors.TaskTimeout)
        self.assertEqual(f.value.message, "task 'sleep' did not finish within 1.5 seconds")
        old = reactor.processes[0]
        self.assertEqual((old.signals, old.groupSignals), (["SIGKILL"], ["SIGTERM"]))
        self.assertEqual(len(reactor.processes), 2)
        old.leftBehind = True  # a child the task started
        old.exit(None, signal.SIGKILL)
        self.assertEqual(old.groupSignals, ["SIGTERM", "SIGTERM"])
        self.assertEqual(pool.stats()["processes"], 2)
        reactor.advance(1.9)
        self.assertEqual(old.groupSignals, ["SIGTERM", "SIGTERM"])
        reactor.advance(0.1)
        self.assertEqual(old.groupSignals, ["SIGTERM", "SIGTERM", "SIGKILL"])
        old.leftBehind = False  # it died
        reactor.advance(0.1)
        self.assertEqual(pool.stats()["processes"], 1)
        reactor.processes[1].ready()
        d = pool.submit("add", [1, 2])
        reactor.processes[1].send(b"R3")
        self.assertEqual(self.successResultOf(d), 3)

    def test_defaultTimeout(self) -> None:
        """
        The pool's C{timeout} applies when a call gives none; C{None}
        given per call means no limit.
        """
        pool, reactor = self.startedPool(workers=2, timeout=5.0)
        limited = pool.submit("sleep", [10])
        unlimited = pool.submit("sleep", [10], timeout=None)
        reactor.advance(5.0)
        self.failureResultOf(limited, errors.TaskTimeout)
        self.assertNoResult(unlimited)
        reactor.advance(1000)
        self.assertNoResult(unlimited)

    def test_replyCancelsTimer(self) -> None:
        """
        A call answered in time leaves no timer behind.
        """
        pool, reactor = self.startedPool()
        d = pool.submit("add", [1, 2], timeout=3)
        reactor.processes[0].send(b"R3")
        self.successResultOf(d)
        self.assertEqual(reactor.getDelayedCalls(), [])


class CancelTests(PoolTestsMixin, SynchronousTestCase):
    def test_cancelQueued(self) -> None:
        """
        Cancelling a queued call removes it from the queue; the worker
        never sees it.
        """
        pool, reactor = self.startedPool()
        first = pool.submit("sleep", [1])
        queued = pool.submit("add", [1, 2], timeout=10)
        queued.cancel()
        self.failureResultOf(queued, CancelledError)
        self.assertEqual(pool.stats()["queued"], 0)
        reactor.processes[0].send(b"R1")
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual(len(reactor.processes[0].written), 1)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_cancelRunning(self) -> None:
        """
        Cancelling a running call terminates its worker and starts a
        replacement, which takes the next queued call.
        """
        pool, reactor = self.startedPool()
        running = pool.submit("sleep", [100])
        queued = pool.submit("add", [1, 2])
        running.cancel()
        self.failureResultOf(running, CancelledError)
        old, new = reactor.processes
        self.assertEqual(old.signals, ["SIGKILL"])
        new.ready()
        self.assertEqual(new.requests(), [("add", {"args": [1, 2], "kwargs": {}})])
        new.send(b"R3")
        self.assertEqual(self.successResultOf(queued), 3)
        old.exit(None, signal.SIGTERM)
        self.assertEqual(pool.stats()["processes"], 1)

    def test_cancelAfterResult(self) -> None:
        """
        Cancelling a call that has ended does nothing.
        """
        pool, reactor = self.startedPool()
        d = pool.submit("add", [1, 2])
        reactor.processes[0].send(b"R3")
        d.cancel()
        self.assertEqual(self.successResultOf(d), 3)
        self.assertEqual(reactor.processes[0].signals, [])


class CrashTests(PoolTestsMixin, SynchronousTestCase):
    def test_crashFailsOnlyItsCall(self) -> None:
        """
        A worker that dies mid-call fails that call with
        L{errors.WorkerCrashed}, naming the signal; it is replaced at once
        and the other worker's call is unaffected.
        """
        pool, reactor = self.startedPool(workers=2)
        a = pool.submit("add", [1, 1])
        b = pool.submit("add", [2, 2])
        victim = next(p for p in reactor.processes if p.requests()[0][1]["args"] == [1, 1])
        other = next(p for p in reactor.processes if p is not victim)
        victim.exit(None, signal.SIGSEGV)
        f = self.failureResultOf(a, errors.WorkerCrashed)
        self.assertEqual(
            f.value.message,
            f"the worker running task 'add' (pid {victim.pid}) was killed by SIGSEGV",
        )
        self.assertEqual(len(reactor.processes), 3)
        self.assertNoResult(b)
        other.send(b"R4")
        self.assertEqual(self.successResultOf(b), 4)

    def test_exitStatus(self) -> None:
        """
        A worker that exits mid-call names its exit status.
        """
        pool, reactor = self.startedPool()
        d = pool.submit("add", [1, 1])
        reactor.processes[0].exit(70)
        f = self.failureResultOf(d, errors.WorkerCrashed)
        self.assertIn("exited with status 70", f.value.message)

    def test_oversizedFrame(self) -> None:
        """
        A frame longer than the pool allows fails the call with
        L{errors.ResultTooLarge} and stops the worker, without buffering it.
        """
        pool, reactor = self.startedPool(maxResult=10)
        d = pool.submit("add", [1, 1])
        reactor.processes[0].sendRaw(HEADER.pack(10**9) + b"R")
        self.failureResultOf(d, errors.ResultTooLarge)
        self.assertEqual(reactor.processes[0].signals, ["SIGKILL"])


class ProgressTests(PoolTestsMixin, SynchronousTestCase):
    def test_reportsGoToTheRunningCall(self) -> None:
        """
        A worker's C{P} frames go to the progress callback of the call it
        runs (the head of its pipe), decoded by L{ProcessPool.submit};
        calls without a callback, and reports with no call running, are
        ignored; a callback that raises is logged and changes nothing.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=3)
        seen: list[Any] = []
        first = pool.submit("sleep", [1], progress=seen.append)
        second = pool.submit("sleep", [2])
        third = pool.submitEncoded("sleep", b'{"args":[3]}', progress=lambda report: 1 / 0)
        worker = reactor.processes[0]
        worker.send(b'P{"done":1}')
        worker.send(b"R1")
        worker.send(b'P{"done":2}')  # the second call's: it asked for nothing
        worker.send(b"R2")
        worker.send(b'P{"done":3}')
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        worker.send(b"R3")
        worker.send(b'P"late"')
        self.assertEqual(seen, [{"done": 1}])
        self.assertEqual(
            (self.successResultOf(first), self.successResultOf(second), self.successResultOf(third)),
            (1, 2, b"3"),
        )
        self.assertEqual(worker.signals, [])
        self.assertEqual(pool.stats()["idle"], 1)


class RecycleTests(PoolTestsMixin, SynchronousTestCase):
    def test_recycleAfterMaxTasks(self) -> None:
        """
        After C{maxTasksPerWorker} calls a worker is asked to exit (its
        request pipe is closed) and a fresh one takes the next calls; no
        call fails.
        """
        pool, reactor = self.startedPool(maxTasksPerWorker=2)
        ds = [pool.submit("pid") for _ in range(3)]
        first = reactor.processes[0]
        first.send(b"R1")
        self.assertEqual(first.closed, [])
        first.send(b"R1")
        self.assertEqual(first.closed, [REQUEST_FD])
        second = reactor.processes[1]
        second.ready()
        second.send(b"R2")
        self.assertEqual([self.successResultOf(d) for d in ds], [1, 1, 2])
        first.exit(0)
        self.assertEqual(
            pool.stats(),
            {"workers": 1, "idle": 1, "busy": 0, "queued": 0, "processes": 1, "memoryRecycled": 0, "queuedByPriority": {}, "queuedByTask": {}, "retrying": 0},
        )

    def test_retiredWorkerThatHangsIsKilled(self) -> None:
        """
        A retired worker that does not exit within C{killGrace} is
        terminated: SIGKILL, and SIGTERM to the rest of its group.
        """
        pool, reactor = self.startedPool(maxTasksPerWorker=1, killGrace=1.0)
        d = pool.submit("pid")
        reactor.processes[0].send(b"R1")
        self.successResultOf(d)
        reactor.advance(0.9)
        self.assertEqual(reactor.processes[0].signals, [])
        reactor.advance(0.1)
        self.assertEqual(reactor.processes[0].signals, ["SIGKILL"])
        self.assertEqual(reactor.processes[0].groupSignals, ["SIGTERM"])


class StopTests(PoolTestsMixin, SynchronousTestCase):
    def test_stop(self) -> None:
        """
        L{ProcessPool.stop} fails queued calls with L{errors.PoolStopping},
        lets the running call finish, closes idle workers' pipes, refuses
        new calls and fires when every worker has exited.
        """
        pool, reactor = self.startedPool(workers=2)
        slow = pool.submit("sleep", [1])
        quick = pool.submit("add", [1, 1])
        queued = pool.submit("add", [2, 2])
        a = next(p for p in reactor.processes if p.requests()[0][0] == "sleep")
        b = next(p for p in reactor.processes if p is not a)
        d = pool.stop()
        f = self.failureResultOf(queued, errors.PoolStopping)
        self.assertEqual(f.value.message, "the pool is stopping")
        self.failureResultOf(pool.submit("add", [1, 1]), errors.PoolStopping)
        b.send(b"R2")
        self.assertEqual(self.successResultOf(quick), 2)
        self.assertEqual((a.closed, b.closed), ([], [REQUEST_FD]))
        b.exit(0)
        self.assertNoResult(d)
        a.send(b"R1")
        self.assertEqual(self.successResultOf(slow), 1)
        self.assertEqual(a.closed, [REQUEST_FD])
        self.assertNoResult(d)
        a.exit(0)
        self.successResultOf(d)
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(len(reactor.processes), 2)

    def test_graceOver(self) -> None:
        """
        A call still running when the grace period ends fails with
        L{errors.PoolStopping}; its worker is killed, and the stop is done
        when it has exited.
        """
        pool, reactor = self.startedPool(grace=3.0, killGrace=1.0)
        running = pool.submit("sleep", [100])
        d = pool.stop()
        reactor.advance(2.9)
        self.assertNoResult(running)
        reactor.advance(0.1)
        f = self.failureResultOf(running, errors.PoolStopping)
        self.assertIn("3.0-second shutdown grace period", f.value.message)
        p = reactor.processes[0]
        self.assertEqual((p.signals, p.groupSignals), (["SIGKILL"], ["SIGTERM"]))
        self.assertNoResult(d)
        p.exit(None, signal.SIGKILL)
        self.successResultOf(d)
        self.assertEqual(len(reactor.processes), 1)

    def test_stopTwiceAndUnstarted(self) -> None:
        """
        Stopping twice gives two Deferreds that fire together; stopping a
        pool never started succeeds at once.
        """
        pool, reactor = self.startedPool()
        d1, d2 = pool.stop(), pool.stop()
        self.assertEqual(reactor.processes[0].closed, [REQUEST_FD])
        self.assertNoResult(d1)
        reactor.processes[0].exit(0)
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.successResultOf(pool.stop())
        fresh, _ = self.makePool()
        self.successResultOf(fresh.stop())

    def test_service(self) -> None:
        """
        L{PoolService} starts the pool with the service and its
        C{stopService} waits for the pool to stop.
        """
        pool, reactor = self.makePool()
        service = PoolService(pool)
        service.startService()
        reactor.processes[0].ready()
        self.assertEqual(pool.state, PoolState.RUNNING)
        d = service.stopService()
        self.assertNoResult(d)
        reactor.processes[0].exit(0)
        self.successResultOf(d)


class FrameDecoderTests(SynchronousTestCase):
    def test_anySplit(self) -> None:
        """
        Frames come out whole however the stream is cut.
        """
        frames = [b"", b"a", b"R" + b"x" * 70000, b"E{}"]
        stream = b"".join(frame(f) for f in frames)
        for size in (1, 3, 4, 5, 4096, len(stream)):
            got: list[bytes] = []
            decoder = FrameDecoder(lambda kind, body: got.append(kind + body), self.fail, 100000)
            for i in range(0, len(stream), size):
                decoder.feed(stream[i : i + size])
            self.assertEqual(got, frames)

    def cut(self, stream: bytes, cuts: list[int]) -> list[bytes]:
        """
        @return: C{stream} cut at the offsets C{cuts} (any order, any
            value: taken modulo its length).
        """
        points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
        return [stream[a:b] for a, b in zip(points, points[1:])]

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.binary(max_size=40) | st.sampled_from([b"R" + b"x" * 3000, b"", b"E"]), max_size=8),
        st.lists(st.integers(0, 10**6), max_size=12),
    )
    def test_anyFramesAnyCuts(self, frames: list[bytes], cuts: list[int]) -> None:
        """
        Any frames, the stream cut anywhere (inside a header, right after
        it, after a frame's kind, in its body): each frame comes out once,
        whole, in order, as its kind (its first byte, C{b""} if empty) and
        the rest.
        """
        stream = b"".join(frame(f) for f in frames)
        got: list[tuple[bytes, bytes]] = []
        decoder = FrameDecoder(lambda kind, body: got.append((kind, body)), self.fail, 100000)
        for chunk in self.cut(stream, cuts):
            decoder.feed(chunk)
        self.assertEqual(got, [(f[:1], f[1:]) for f in frames])
        self.assertTrue(all(type(kind) is bytes and type(body) is bytes for kind, body in got))

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.binary(max_size=20), max_size=4),
        st.integers(101, 2**32 - 1),
        st.binary(max_size=200),
        st.lists(st.integers(0, 10**6), max_size=8),
    )
    def test_tooLongAnyCuts(self, frames: list[bytes], length: int, after: bytes, cuts: list[int]) -> None:
        """
        However the stream is cut, the frames before one announced over the
        limit come out, then its length once, and nothing after it.
        """
        stream = b"".join(frame(f) for f in frames) + HEADER.pack(length) + after
        got: list[bytes] = []
        tooLong: list[int] = []
        decoder = FrameDecoder(lambda kind, body: got.append(kind + body), tooLong.append, 100)
        for chunk in self.cut(stream, cuts):
            decoder.feed(chunk)
        self.assertEqual((got, tooLong), (frames, [length]))


class OutputTests(PoolTestsMixin, SynchronousTestCase):
    def test_outputLoggedByLine(self) -> None:
        """
        Worker stdout and stderr are logged a whole line at a time, tagged
        with the worker's pid and the stream; a partial line is logged when
        the worker ends.
        """
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        pool, reactor = self.startedPool()
        p = reactor.processes[0]
        p.proto.childDataReceived(1, b"hel")
        p.proto.childDataReceived(1, b"lo\r\nwor")
        p.proto.childDataReceived(2, b"oops\n")
        p.exit(0)
        lines = [(e["pid"], e["stream"], e["line"]) for e in events if "stream" in e]
        self.assertEqual(
            lines, [(p.pid, "stdout", "hello"), (p.pid, "stderr", "oops"), (p.pid, "stdout", "wor")]
        )


class SpawnFailureTests(PoolTestsMixin, SynchronousTestCase):
    def test_spawnRaises(self) -> None:
        """
        If C{spawnProcess} itself fails (no such executable, out of file
        descriptors), L{ProcessPool.start} fails with
        L{errors.WorkerStartError} and spawns nothing more.
        """
        pool, reactor = self.makePool(workers=3)
        calls = []

        def spawnProcess(*a: object, **kw: object) -> None:
            calls.append(a)
            raise OSError(24, "Too many open files")

        reactor.spawnProcess = spawnProcess  # type: ignore[method-assign]
        fds = len(os.listdir("/proc/self/fd"))
        f = self.failureResultOf(pool.start(), errors.WorkerStartError)
        self.assertEqual(f.value.message, "cannot spawn a worker: [Errno 24] Too many open files")
        self.assertEqual(len(calls), 1)
        self.assertEqual(pool.state, PoolState.STOPPED)
        # Both ends of both protocol pipes are closed again.
        self.assertEqual(len(os.listdir("/proc/self/fd")), fds)
        self.assertEqual(reactor.readers, set())


class RequestPipeTests(SynchronousTestCase):
    def test_bigWriteWaitsForTheReactor(self) -> None:
        """
        What the pipe cannot take at once is kept, in order, and written
        when the reactor says the pipe is writable; closing waits for it;
        the reader then sees everything, then end of file.
        """
        from taskd._pipes import RequestPipe

        reactor = FakeProcessReactor()
        readEnd, writeEnd = os.pipe()
        os.set_blocking(readEnd, False)
        self.addCleanup(os.close, readEnd)
        pipe = RequestPipe(reactor, writeEnd)
        pipe.write(b"small")
        self.assertEqual(reactor.writers, set())
        data = bytes(range(256)) * 2000  # 512,000 bytes: more than a pipe holds
        pipe.write(data)
        pipe.write(b"after")
        self.assertIn(pipe, reactor.writers)
        pipe.close()
        received = b""
        while True:
            try:
                chunk = os.read(readEnd, 1 << 20)
            except BlockingIOError:
                pipe.doWrite()
                continue
            if not chunk:
                break
            received += chunk
        self.assertEqual(received, b"small" + data + b"after")
        self.assertEqual(reactor.writers, set())

    def test_readerGone(self) -> None:
        """
        Writing to a pipe whose worker is gone closes it quietly.
        """
        from taskd._pipes import RequestPipe

        readEnd, writeEnd = os.pipe()
        os.close(readEnd)
        pipe = RequestPipe(FakeProcessReactor(), writeEnd)
        pipe.write(b"x")
        self.assertEqual(pipe.fileno(), -1)
        pipe.write(b"y")
        pipe.close()


class PrefetchTests(PoolTestsMixin, SynchronousTestCase):
    """
    With C{prefetch} above 1 a busy worker is sent its next calls ahead.
    """

    def test_sendAheadAndTimers(self) -> None:
        """
        Calls go to idle workers first, then ahead into busy workers' pipes
        up to C{prefetch}, then to the queue; a call's timeout starts only
        when the call reaches the head of its worker.  (No C{prefetchTime}:
        the clock moves while the calls run.)
        """
        pool, reactor = self.startedPool(workers=1, prefetch=2, timeout=5.0, prefetchTime=None)
        p = reactor.processes[0]
        ds = [pool.submit("add", [i, 0]) for i in range(3)]
        self.assertEqual(len(p.written), 2)
        self.assertEqual(pool.stats()["queued"], 1)
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        reactor.advance(4)
        p.send(b"R0")
        self.assertEqual(len(p.written), 3)
        reactor.advance(4)  # 8 s since the second call was sent, 4 s since it started
        self.assertNoResult(ds[1])
        p.send(b"R1")
        p.send(b"R2")
        self.assertEqual([self.successResultOf(d) for d in ds], [0, 1, 2])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_crashRequeuesTheCallsBehind(self) -> None:
        """
        A worker that dies costs only the call it ran; the calls waiting in
        its pipe never started and go to the next worker, in order.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=3)
        ds = [pool.submit("add", [i, 0]) for i in range(3)]
        old = reactor.processes[0]
        old.exit(None, signal.SIGKILL)
        self.failureResultOf(ds[0], errors.WorkerCrashed)
        new = reactor.processes[1]
        new.ready()
        self.assertEqual([r[1]["args"] for r in new.requests()], [[1, 0], [2, 0]])
        new.send(b"R1")
        new.send(b"R2")
        self.assertEqual([self.successResultOf(d) for d in ds[1:]], [1, 2])

    def test_repliesReadBeforeTheEnd(self) -> None:
        """
        When the worker's exit is reported before its last replies are
        read, they are read first: the call it answered succeeds and only
        the one it did not answer is lost.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=3)
        ds = [pool.submit("add", [i, 0]) for i in range(3)]
        old = reactor.processes[0]
        old.sendRaw(frame(b"R0"), deliver=False)
        old.exit(None, signal.SIGKILL)
        self.assertEqual(self.successResultOf(ds[0]), 0)
        self.failureResultOf(ds[1], errors.WorkerCrashed)
        self.assertFalse(old.proto.replies.open)
        self.assertNotIn(old.proto.replies, reactor.readers)
        new = reactor.processes[1]
        new.ready()
        self.assertEqual([r[1]["args"] for r in new.requests()], [[2, 0]])

    def test_endNotWaitingForCopiesOfThePipes(self) -> None:
        """
        A worker's end is handled when it has exited, even though its reply
        pipe (and its stdout) stay open: a process its task forked holds
        copies.  Its replies are read first, and what is left of its
        process group gets SIGTERM.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=2)
        ds = [pool.submit("add", [i, 0]) for i in range(2)]
        old = reactor.processes[0]
        old.sendRaw(frame(b"R0"), deliver=False)
        old.leftBehind = True
        old.exit(1, replies=False)
        self.assertEqual(self.successResultOf(ds[0]), 0)
        f = self.failureResultOf(ds[1], errors.WorkerCrashed)
        self.assertIn("exited with status 1", f.value.message)
        self.assertEqual(old.groupSignals, ["SIGTERM"])
        self.assertFalse(old.proto.replies.open)
        self.assertEqual(len(reactor.processes), 2)

    def test_timeoutRequeuesUnstarted(self) -> None:
        """
        When the running call times out, the call behind it, which never
        started, runs on the replacement.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=2)
        slow = pool.submit("sleep", [99], timeout=1)
        behind = pool.submit("add", [1, 1])
        reactor.advance(1)
        self.failureResultOf(slow, errors.TaskTimeout)
        old, new = reactor.processes
        self.assertEqual(old.signals, ["SIGKILL"])
        self.assertNoResult(behind)
        old.exit(None, signal.SIGTERM)
        new.ready()
        new.send(b"R2")
        self.assertEqual(self.successResultOf(behind), 2)

    def test_replyAfterTimeoutMeansTheNextStarted(self) -> None:
        """
        If the timed-out call's reply still arrives before its worker ends,
        the worker had moved on to the next call, which may have run: it
        fails with L{errors.WorkerCrashed} rather than run twice.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=2)
        slow = pool.submit("sleep", [99], timeout=1)
        behind = pool.submit("add", [1, 1])
        reactor.advance(1)
        self.failureResultOf(slow, errors.TaskTimeout)
        old = reactor.processes[0]
        old.send(b"R99")  # the reply was already on its way
        old.exit(None, signal.SIGTERM)
        self.failureResultOf(behind, errors.WorkerCrashed)
        self.assertEqual(len(reactor.processes), 2)
        self.assertEqual(reactor.processes[1].written, [])

    def test_cancelWaitingCall(self) -> None:
        """
        Cancelling a call waiting in a worker's pipe fails it at once; when
        the worker reaches it, the worker is stopped instead of running it,
        and the calls behind it go to the replacement.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=3)
        first = pool.submit("add", [1, 0])
        waiting = pool.submit("sleep", [99])
        last = pool.submit("add", [3, 0])
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        old = reactor.processes[0]
        self.assertEqual(old.signals, [])
        old.send(b"R1")
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual(old.signals, ["SIGKILL"])
        old.exit(None, signal.SIGTERM)
        new = reactor.processes[1]
        new.ready()
        self.assertEqual([r[0] for r in new.requests()], ["add"])
        new.send(b"R3")
        self.assertEqual(self.successResultOf(last), 3)

    def test_stopFailsWaitingCalls(self) -> None:
        """
        On stop, calls waiting in workers' pipes fail with
        L{errors.PoolStopping} like queued ones; the running call finishes.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=2)
        running = pool.submit("add", [1, 0])
        waiting = pool.submit("add", [2, 0])
        d = pool.stop()
        self.failureResultOf(waiting, errors.PoolStopping)
        p = reactor.processes[0]
        p.send(b"R1")
        self.assertEqual(self.successResultOf(running), 1)
        self.assertEqual(p.signals, ["SIGKILL"])
        p.exit(None, signal.SIGTERM)
        self.successResultOf(d)

    def test_recyclingLimitsPrefetch(self) -> None:
        """
        A worker is never sent more calls than it has left before it is
        recycled.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=4, maxTasksPerWorker=2)
        ds = [pool.submit("add", [i, 0]) for i in range(3)]
        first = reactor.processes[0]
        self.assertEqual(len(first.written), 2)
        first.send(b"R0")
        first.send(b"R1")
        self.assertEqual(first.closed, [REQUEST_FD])
        second = reactor.processes[1]
        second.ready()
        second.send(b"R2")
        self.assertEqual([self.successResultOf(d) for d in ds], [0, 1, 2])


class PrefetchTimeTests(PoolTestsMixin, SynchronousTestCase):
    """
    With C{prefetch} above 1, calls go ahead into a busy worker's pipe only
    while the calls it holds are expected to run within C{prefetchTime}:
    each as long as its task's calls have been taking.
    """

    def ran(self, pool: ProcessPool, reactor: FakeProcessReactor, name: str, seconds: float) -> None:
        """
        Run one call of C{name} on an idle worker, taking C{seconds}.
        """
        before = [len(p.written) for p in reactor.processes]
        d = pool.submit(name, [1, 1])
        [p] = [p for p, n in zip(reactor.processes, before) if len(p.written) > n]
        reactor.advance(seconds)
        p.send(b"R2")
        self.assertEqual(self.successResultOf(d), 2)

    def test_quickTaskGoesAhead(self) -> None:
        """
        Calls of a task whose calls have been quick fill the worker's pipe
        up to C{prefetch}; so do calls of a task none of whose calls has
        ended yet.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=4, prefetchTime=0.005)
        p = reactor.processes[0]
        for i in range(5):
            pool.submit("pid", [i])
        self.assertEqual(len(p.written), 4)
        self.assertEqual(pool.stats()["queued"], 1)
        for i in range(5):
            p.send(b"R%d" % i)
        self.ran(pool, reactor, "add", 0.001)
        for i in range(5):
            pool.submit("add", [i, 0])
        self.assertEqual([r[0] for r in p.requests()[-4:]], ["add"] * 4)
        self.assertEqual(pool.stats()["queued"], 1)

    def test_longTaskWaitsForAnIdleWorker(self) -> None:
        """
        A task seen to take longer than C{prefetchTime} is not sent ahead,
        and nothing is sent ahead behind one of its calls: the calls wait
        in the queue until the worker is idle.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=4, prefetchTime=0.005)
        self.ran(pool, reactor, "sleep", 1.0)
        self.ran(pool, reactor, "add", 0.0)
        p = reactor.processes[0]
        before = len(p.written)
        pool.submit("sleep", [1])
        pool.submit("add", [1, 1])
        self.assertEqual(len(p.written), before + 1)
        self.assertEqual(pool.stats()["queued"], 1)
        reactor.advance(1)
        p.send(b"Rnull")
        # The add runs now, and the next add may wait behind it.
        self.assertEqual(p.requests()[-1], ("add", {"args": [1, 1], "kwargs": {}}))
        pool.submit("add", [2, 2])
        self.assertEqual(p.requests()[-1], ("add", {"args": [2, 2], "kwargs": {}}))

    def test_shortCallsGoToTheQuickWorker(self) -> None:
        """
        With one worker running a long call and another short ones, calls
        sent ahead go to the one whose pipe is expected to empty soon.
        """
        pool, reactor = self.startedPool(workers=2, prefetch=4, prefetchTime=0.005)
        self.ran(pool, reactor, "sleep", 1.0)
        self.ran(pool, reactor, "add", 0.0)
        before = [len(p.written) for p in reactor.processes]
        pool.submit("sleep", [1])
        [sleeper] = [p for p, n in zip(reactor.processes, before) if len(p.written) > n]
        [adder] = [p for p in reactor.processes if p is not sleeper]
        for i in range(6):
            pool.submit("add", [i, 0])
        self.assertEqual([r[0] for r in sleeper.requests()[-1:]], ["sleep"])
        self.assertEqual([r[1]["args"] for r in adder.requests()[-4:]], [[i, 0] for i in range(4)])
        self.assertEqual(pool.stats()["queued"], 2)

    def test_heldCallsCount(self) -> None:
        """
        What a worker holds counts, the call it runs included: with calls
        expected to take 2 ms and C{prefetchTime} 5 ms, a worker holds two.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=10, prefetchTime=0.005)
        self.ran(pool, reactor, "add", 0.002)
        p = reactor.processes[0]
        before = len(p.written)
        for i in range(5):
            pool.submit("add", [i, 0])
        self.assertEqual(len(p.written), before + 2)
        self.assertEqual(pool.stats()["queued"], 3)
        reactor.advance(0.002)
        p.send(b"R0")
        self.assertEqual(pool._runTimes, {"add": 0.002})
        self.assertEqual(len(p.written), before + 3)
        self.assertEqual(p.requests()[-1][1]["args"], [2, 0])

    def test_quickerRunsCountAQuarter(self) -> None:
        """
        A longer run counts at once; a quicker one moves the expected time
        a quarter of the way to it: a task seen at 1 s once is sent ahead
        again after a few quick calls.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=2, prefetchTime=0.5)
        self.ran(pool, reactor, "add", 1.0)
        self.assertEqual(pool._runTimes, {"add": 1.0})
        for expected in [0.75, 0.5625, 0.421875]:
            self.ran(pool, reactor, "add", 0.0)
            self.assertEqual(pool._runTimes, {"add": expected})
        self.ran(pool, reactor, "add", 2.0)
        self.assertEqual(pool._runTimes, {"add": 2.0})

    def test_sentAheadOnceQuickAgain(self) -> None:
        """
        A task's calls go ahead again once the expected time of the calls
        a worker holds is within C{prefetchTime}.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=3, prefetchTime=0.5)
        self.ran(pool, reactor, "add", 0.2)
        p = reactor.processes[0]
        before = len(p.written)
        for i in range(3):
            pool.submit("add", [i, 0])
        # 0.2 + 0.2 fits in 0.5; a third would not.
        self.assertEqual(len(p.written), before + 2)
        p.send(b"R0")
        p.send(b"R1")
        p.send(b"R2")
        self.assertEqual(pool._runTimes, {"add": 0.2 * 0.75 ** 3})
        for i in range(3):
            pool.submit("add", [i, 0])
        self.assertEqual(len(p.written), before + 6)

    def test_timeoutCountsAsARun(self) -> None:
        """
        A call that timed out counts as a run of its timeout's length: its
        task is not sent ahead afterwards.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=4, prefetchTime=0.005)
        d = pool.submit("sleep", [9], timeout=1.0)
        reactor.advance(1.0)
        self.failureResultOf(d, errors.TaskTimeout)
        self.assertEqual(pool._runTimes, {"sleep": 1.0})

    def test_noPrefetchTime(self) -> None:
        """
        With C{prefetchTime} C{None}, only C{prefetch} counts.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=3, prefetchTime=None)
        self.ran(pool, reactor, "sleep", 10.0)
        p = reactor.processes[0]
        before = len(p.written)
        for i in range(4):
            pool.submit("sleep", [i])
        self.assertEqual(len(p.written), before + 3)

    def test_noPrefetch(self) -> None:
        """
        With C{prefetch} 1 nothing goes ahead and no run time is kept.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=1)
        self.ran(pool, reactor, "add", 0.1)
        self.assertEqual(pool._runTimes, {})

    def test_expectedTimeGoesWithTheCalls(self) -> None:
        """
        A worker's expected time is what its calls add up to, and is 0
        again once it holds none.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=4, prefetchTime=0.005)
        self.ran(pool, reactor, "add", 0.001)
        [worker] = pool._live
        self.assertEqual(worker.expected, 0.0)
        for i in range(3):
            pool.submit("add", [i, 0])
        self.assertAlmostEqual(worker.expected, 0.003)
        p = reactor.processes[0]
        p.send(b"R0")
        self.assertAlmostEqual(worker.expected, 0.002)
        p.send(b"R1")
        p.send(b"R2")
        self.assertEqual(worker.expected, 0.0)


class WriteBatchTests(PoolTestsMixin, SynchronousTestCase):
    """
    L{taskd._pipes.WriteBatch}: what request pipes are given while it is
    held goes out in one write per pipe at the outermost release.
    """

    def setUp(self) -> None:
        self.writes: list[int] = []
        realWrite = os.write

        def write(fd: int, data: Any) -> int:
            self.writes.append(fd)
            return realWrite(fd, data)

        self.patch(os, "write", write)

    def pipe(self, batch: Any) -> tuple[Any, int]:
        from taskd._pipes import RequestPipe

        readEnd, writeEnd = os.pipe()
        os.set_blocking(readEnd, False)
        self.addCleanup(os.close, readEnd)
        return RequestPipe(FakeProcessReactor(), writeEnd, batch), readEnd

    def test_oneFailingFlushStopsNoOther(self) -> None:
        """
        If flushing one held pipe raises (a bug), the others held in the
        same batch are still flushed, and the error is logged.
        """
        from taskd._pipes import WriteBatch

        class Broken:
            def flush(self) -> None:
                raise RuntimeError("broken on purpose")

        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        batch = WriteBatch()
        first, firstEnd = self.pipe(batch)
        second, secondEnd = self.pipe(batch)
        batch.hold()
        first.write(b"a")
        batch.held(Broken())
        second.write(b"x")
        batch.release()
        self.assertEqual((os.read(firstEnd, 10), os.read(secondEnd, 10)), (b"a", b"x"))
        [failure] = [e["log_failure"] for e in events if "log_failure" in e]
        self.assertEqual(str(failure.value), "broken on purpose")
        self.flushLoggedErrors(RuntimeError)
        # The batch is whole again: the next hold and release write.
        batch.hold()
        first.write(b"b")
        batch.release()
        self.assertEqual(os.read(firstEnd, 10), b"b")

    def test_heldUntilTheOutermostRelease(self) -> None:
        """
        Writes to held pipes wait, in order, until the outermost release,
        then go out as one write per pipe; with nothing held, a write goes
        out at once.
        """
        from taskd._pipes import WriteBatch

        batch = WriteBatch()
        first, firstEnd = self.pipe(batch)
        second, secondEnd = self.pipe(batch)
        batch.hold()
        first.write(b"a")
        second.write(b"x")
        batch.hold()
        first.write(b"b")
        batch.release()
        first.write(b"c")
        self.assertEqual(self.writes, [])
        self.assertRaises(BlockingIOError, os.read, firstEnd, 100)
        batch.release()
        self.assertEqual(len(self.writes), 2)
        self.assertEqual(os.read(firstEnd, 100), b"abc")
        self.assertEqual(os.read(secondEnd, 100), b"x")
        first.write(b"d")
        self.assertEqual(len(self.writes), 3)
        self.assertEqual(os.read(firstEnd, 100), b"d")

    def test_closeWritesWhatIsHeld(self) -> None:
        """
        Closing a pipe writes what a batch holds for it first; aborting
        drops it, and the batch's release then writes nothing to it.
        """
        from taskd._pipes import WriteBatch

        batch = WriteBatch()
        closed, closedEnd = self.pipe(batch)
        aborted, abortedEnd = self.pipe(batch)
        batch.hold()
        closed.write(b"last")
        aborted.write(b"lost")
        closed.close()
        aborted.abort()
        batch.release()
        self.assertEqual(os.read(closedEnd, 100), b"last")
        self.assertEqual(os.read(closedEnd, 100), b"")
        self.assertEqual(os.read(abortedEnd, 100), b"")

    def test_repliesLetTheNextCallsGoInOneWrite(self) -> None:
        """
        When one chunk read from a worker answers several calls, the calls
        that take their places in its pipe are written to it together.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=2)
        p = reactor.processes[0]
        ds = [pool.submit("add", [i, 0]) for i in range(4)]
        self.assertEqual(len(p.written), 2)
        p.sendRaw(frame(b"R0") + frame(b"R1"), deliver=False)
        del self.writes[:]
        p.proto.replies.doRead()
        self.assertEqual(self.writes, [p.proto.requests.fileno()])
        self.assertEqual([name for name, _ in p.requests()], ["add"] * 4)
        self.assertEqual([self.successResultOf(d) for d in ds[:2]], [0, 1])


class HoldEachTurnTests(SynchronousTestCase):
    """
    L{taskd._pipes.holdEachTurn}: the batch is held over each whole turn
    of the reactor, so what the turn's events write goes out at its end.
    """

    def test_heldOverTheTurn(self) -> None:
        """
        While the reactor's C{doIteration} runs (the poll and every event it
        reports), the batch is held; it is released when the turn ends, even
        if the turn raises; the function returned puts C{doIteration} back.
        """
        from taskd._pipes import WriteBatch, holdEachTurn

        batch = WriteBatch()
        depths: list[int] = []

        class Reactor:
            def doIteration(self, delay: float | None) -> None:
                depths.append(batch.depth)
                if delay == 1:
                    raise RuntimeError("a turn that fails")

        reactor = Reactor()
        undo = holdEachTurn(reactor, batch)
        reactor.doIteration(0)
        self.assertEqual((depths, batch.depth), ([1], 0))
        self.assertRaises(RuntimeError, reactor.doIteration, 1)
        self.assertEqual((depths, batch.depth), ([1, 1], 0))
        undo()
        reactor.doIteration(0)
        self.assertEqual(depths, [1, 1, 0])
        self.assertNotIn("doIteration", vars(reactor))

    def test_reactorWithoutTurns(self) -> None:
        """
        A reactor that has no C{doIteration} (a test's) is left as it is.
        """
        from taskd._pipes import WriteBatch, holdEachTurn

        reactor = FakeProcessReactor()
        holdEachTurn(reactor, WriteBatch())()
        self.assertFalse(hasattr(reactor, "doIteration"))


class RelayTests(PoolTestsMixin, SynchronousTestCase):
    """
    L{ProcessPool.relay}: calls answered through a callable, without a
    C{Deferred} each.
    """

    def test_answeredOnceWithTheKey(self) -> None:
        """
        An accepted call is answered later, once, with its key and the
        result's JSON bytes; a refused one is answered before C{relay}
        returns, which returns C{None}.
        """
        pool, reactor = self.startedPool()
        answers: list[tuple[Any, Any]] = []
        call = pool.relay("add", b'{"args":[1,2]}', lambda k, o: answers.append((k, o)), "k1")
        self.assertIsNotNone(call)
        self.assertEqual(answers, [])
        reactor.processes[0].send(b"R3")
        self.assertEqual(answers, [("k1", b"3")])
        refused = pool.relay("nope", b'{"args":[]}', lambda k, o: answers.append((k, o)), "k2")
        self.assertIsNone(refused)
        key, outcome = answers[1]
        self.assertEqual(key, "k2")
        self.assertIsInstance(outcome.value, errors.UnknownTask)

    def test_cancel(self) -> None:
        """
        C{cancel()} on the call a relay returned answers it with
        L{CallCancelled}, saying whether it had started.
        """
        pool, reactor = self.startedPool(workers=1)
        answers: list[tuple[Any, Any]] = []
        running = pool.relay("sleep", b'{"args":[5]}', lambda k, o: answers.append((k, o)), 1)
        queued = pool.relay("sleep", b'{"args":[5]}', lambda k, o: answers.append((k, o)), 2)
        assert running is not None and queued is not None
        queued.cancel()
        running.cancel()
        self.assertEqual([(k, type(o.value), o.value.started) for k, o in answers], [
            (2, CallCancelled, False), (1, CallCancelled, True),
        ])
