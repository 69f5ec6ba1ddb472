"""
Unit tests for L{taskd._workerprocess} through the pool, on the fake
process reactor: frames checked at the border, workers that say goodbye,
and the bound on how fast killed workers are replaced.
"""

from __future__ import annotations

import signal

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from taskd import errors
from taskd._frames import HEADER
from taskd._workerprocess import WorkerState

from tests.fakes import PoolTestsMixin, frame


class FrameCheckTests(PoolTestsMixin, SynchronousTestCase):
    """
    Whatever a worker (or a task writing to its pipes) sends, the call is
    answered once and the client never sees a malformed reply.
    """

    def assertProtocolError(self, data: bytes, what: str) -> None:
        pool, reactor = self.startedPool()
        d = pool.submit("add", [1, 2])
        old = reactor.processes[0]
        old.sendRaw(data)
        f = self.failureResultOf(d, errors.WorkerProtocolError)
        self.assertEqual(
            f.value.message,
            f"worker {old.pid} broke the frame protocol: {what}; it was replaced",
        )
        self.assertEqual(old.signals, ["SIGKILL"])
        self.assertIs(old.proto.state, WorkerState.TERMINATING)
        self.assertEqual(len(reactor.processes), 2)
        self.flushLoggedErrors()

    def test_resultNotJSON(self) -> None:
        """
        A result frame that is not JSON fails the call with
        C{worker_protocol_error}; the worker is killed and replaced.
        """
        self.assertProtocolError(frame(b"Rnot json"), "a b'R' frame that is not one JSON value")

    def test_resultWithALineBreak(self) -> None:
        """
        A result holding a raw line break (valid JSON, but it would split
        the client's reply line) is refused the same way.
        """
        self.assertProtocolError(frame(b"R[1,\n2]"), "a b'R' frame that is not one JSON value")

    def test_twoValues(self) -> None:
        """
        A frame holding more than one JSON value is refused.
        """
        self.assertProtocolError(frame(b"R1 2"), "a b'R' frame that is not one JSON value")

    def test_errorNotJSON(self) -> None:
        """
        An error frame that is not JSON (it used to leave the call
        unanswered) is refused the same way.
        """
        self.assertProtocolError(frame(b"E{nope"), "a b'E' frame that is not one JSON value")

    def test_errorNotAnObject(self) -> None:
        """
        An error frame whose JSON is not an object is refused.
        """
        self.assertProtocolError(frame(b'E"boom"'), "an error that is not a JSON object")

    def test_unknownKind(self) -> None:
        """
        A frame of a kind the pool does not know is refused.
        """
        self.assertProtocolError(frame(b"X1"), "an unexpected frame b'X1'")

    def test_garbageLength(self) -> None:
        """
        Bytes that read as an absurd length fail the running call with
        C{result_too_large}, as before.
        """
        pool, reactor = self.startedPool()
        d = pool.submit("add", [1, 2])
        reactor.processes[0].sendRaw(b"garbage!")
        f = self.failureResultOf(d, errors.ResultTooLarge)
        self.assertIn(f"sent a {HEADER.unpack(b'garb')[0]}-byte reply", f.value.message)

    def test_progressNotJSON(self) -> None:
        """
        A progress frame that is not JSON never reaches the caller: it is a
        protocol error too.
        """
        pool, reactor = self.startedPool()
        seen: list[object] = []
        d = pool.submit("add", [1, 2], progress=seen.append)
        reactor.processes[0].sendRaw(frame(b"P{"))
        self.failureResultOf(d, errors.WorkerProtocolError)
        self.assertEqual(seen, [])
        self.flushLoggedErrors()

    def test_servingGoesOn(self) -> None:
        """
        After a protocol error the replacement serves calls.
        """
        pool, reactor = self.startedPool()
        d = pool.submit("add", [1, 2])
        reactor.processes[0].sendRaw(frame(b"R{"))
        self.failureResultOf(d, errors.WorkerProtocolError)
        reactor.processes[0].exit(None, signal.SIGKILL)
        reactor.processes[1].ready()
        d = pool.submit("add", [2, 2])
        reactor.processes[1].send(b"R4")
        self.assertEqual(self.successResultOf(d), 4)
        self.flushLoggedErrors()


class GoodbyeTests(PoolTestsMixin, SynchronousTestCase):
    """
    A worker that leaves of its own accord (SIGTERM, memory) is not a crash.
    """

    def test_signal(self) -> None:
        """
        A worker that received SIGTERM answers its call, says goodbye and
        exits: the calls sent ahead to it never started and run elsewhere;
        it is replaced after C{minRestartDelay}.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=3, minRestartDelay=0.5)
        ds = [pool.submit("add", [i, 0]) for i in range(3)]
        old = reactor.processes[0]
        old.send(b"R0")
        old.send(b'G{"reason":"signal"}')
        self.assertIs(old.proto.state, WorkerState.RETIRING)
        old.exit(0)
        self.assertEqual(self.successResultOf(ds[0]), 0)
        self.assertNoResult(ds[1])
        self.assertEqual(len(reactor.processes), 1)
        reactor.advance(0.5)
        new = reactor.processes[1]
        new.ready()
        self.assertEqual([r[1]["args"] for r in new.requests()], [[1, 0], [2, 0]])

    def test_memory(self) -> None:
        """
        A worker over its memory limit after a call is replaced at once and
        counted in C{stats}; its call succeeded.
        """
        pool, reactor = self.startedPool(workers=1, maxWorkerRSS=10 * 2**20)
        self.assertEqual(reactor.processes[0].args[-4:-2], ["--max-rss", str(10 * 2**20)])
        d = pool.submit("add", [1, 1])
        reactor.processes[0].send(b"R2")
        reactor.processes[0].send(b'G{"reason":"memory"}')
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(len(reactor.processes), 2)
        self.assertEqual(pool.stats()["memoryRecycled"], 1)
        reactor.processes[0].exit(0)
        self.assertEqual(pool.stats()["processes"], 1)


class RespawnRateTests(PoolTestsMixin, SynchronousTestCase):
    def test_cancelLoop(self) -> None:
        """
        A caller that starts and cancels calls in a loop gets C{workers}
        replacement workers at once, then one every C{minRestartDelay}
        seconds, not one per cancel.
        """
        pool, reactor = self.startedPool(workers=2, minRestartDelay=0.5)

        def callThenCancel() -> None:
            d = pool.submit("sleep", [9])
            d.addErrback(lambda f: f.trap(CancelledError))
            d.cancel()

        for _ in range(6):
            callThenCancel()
        # The first two cancels killed the two first workers, replaced at
        # once; their replacements are not ready, so the rest were queued.
        self.assertEqual(len(reactor.processes), 4)
        spawned = []
        for step in range(8):
            for p in reactor.processes:
                if p.proto.state is WorkerState.STARTING:
                    p.ready()
                if p.proto.state is WorkerState.TERMINATING and not p.ended:
                    p.exit(None, signal.SIGKILL)
            for _ in range(2):
                callThenCancel()
            spawned.append(len(reactor.processes))
            reactor.advance(0.25)
        # After the burst, one more process per 0.5 s, however many cancels.
        self.assertEqual(spawned, [4, 4, 5, 5, 6, 6, 7, 7])


class ReviewFindingsTests(PoolTestsMixin, SynchronousTestCase):
    """
    Corner cases found by review, each shown to go wrong before its fix.
    """

    def test_requeuedCallKeepsNoRunTimer(self) -> None:
        """
        A call handed to a worker that then says goodbye goes back to the
        queue without its run timer: time queued again is not run time.
        """
        pool, reactor = self.startedPool(workers=1, maxWorkerRSS=1)
        first = pool.submit("add", [1, 1])
        second = pool.submit("add", [2, 2], timeout=1.0)
        old = reactor.processes[0]
        old.send(b"R2")  # the second call is now old's first: its clock runs
        old.send(b'G{"reason":"memory"}')
        old.exit(0)
        self.assertEqual(self.successResultOf(first), 2)
        reactor.advance(5)
        self.assertNoResult(second)
        new = reactor.processes[1]
        new.ready()
        new.send(b"R4")
        self.assertEqual(self.successResultOf(second), 4)
        self.assertEqual(new.signals, [])

    def test_exitedWorkerTakesNothingMore(self) -> None:
        """
        A reply read while a worker that has exited is drained does not
        make the pool hand that worker the next queued call: the call waits
        for a live worker and runs there, not failing as a crash.
        """
        pool, reactor = self.startedPool(workers=1)
        first = pool.submit("add", [1, 1])
        second = pool.submit("add", [2, 2])
        old = reactor.processes[0]
        old.sendRaw(frame(b"R2"), deliver=False)
        old.exit(None, signal.SIGKILL)
        self.assertEqual(self.successResultOf(first), 2)
        self.assertNoResult(second)
        self.assertEqual([r[1]["args"] for r in old.requests()], [[1, 1]])
        new = reactor.processes[1]
        new.ready()
        new.send(b"R4")
        self.assertEqual(self.successResultOf(second), 4)

    def test_goodbyeBeforeReady(self) -> None:
        """
        A goodbye frame from a worker still starting (a task module writing
        to fd 4 at import) is a protocol error, not an illegal transition:
        the worker is stopped and replaced, and the pool starts.
        """
        pool, reactor = self.makePool(workers=1)
        started = pool.start()
        old = reactor.processes[0]
        old.send(b'G{"reason":"signal"}')
        self.assertIs(old.proto.state, WorkerState.TERMINATING)
        old.exit(None, signal.SIGKILL)
        self.flushLoggedErrors()
        new = reactor.processes[1]
        self.assertNoResult(started)
        new.ready()
        self.assertIsNone(self.successResultOf(started))

    def test_timedOutWorkerTakesNoNewCall(self) -> None:
        """
        A call made while a timed-out call is being answered (a caller's
        retry, say) never goes to the worker that is being killed.
        """
        pool, reactor = self.startedPool(workers=1, prefetch=2)
        retried: list[object] = []
        first = pool.submit("sleep", [9], timeout=1.0)
        first.addErrback(lambda f: retried.append(pool.submit("add", [3, 3])))
        old = reactor.processes[0]
        reactor.advance(1.0)
        self.assertEqual([r[0] for r in old.requests()], ["sleep"])
        old.exit(None, signal.SIGKILL)
        new = reactor.processes[1]
        new.ready()
        self.assertEqual([r[0] for r in new.requests()], ["add"])
        new.send(b"R6")
        self.assertEqual(self.successResultOf(retried[0]), 6)  # type: ignore[arg-type]

    def test_stopWhileStartingIsNoFailure(self) -> None:
        """
        Stopping the daemon while its workers start is a stop, not a start
        failure: the service does not report one.
        """
        from taskd.pool import PoolService

        pool, reactor = self.makePool(workers=1)
        failures: list[None] = []
        service = PoolService(pool, onStartFailure=lambda: failures.append(None))
        service.startService()
        stopping = service.stopService()
        reactor.processes[0].exit(None, signal.SIGKILL)
        self.successResultOf(stopping)
        self.assertEqual(failures, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_nothingDecodedPastATooLongFrame(self) -> None:
        """
        After a frame announced too long, the decoder reads nothing more as
        frames (its bytes cannot be told apart): one error, not one per
        chunk.
        """
        from taskd._frames import FrameDecoder

        frames: list[bytes] = []
        tooLong: list[int] = []
        decoder = FrameDecoder(lambda kind, body: frames.append(kind + body), tooLong.append, 10)
        decoder.feed(HEADER.pack(1000) + b"x" * 10)
        decoder.feed(frame(b"R1") * 3)
        self.assertEqual((frames, tooLong), ([], [1000]))
