"""
Workers that run several calls at once, unit-tested: the pool and its
worker processes on the fake process reactor (Clock-exact), and the
worker's side (L{taskd._multicall}) on in-memory streams.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from taskd import errors, worker
from taskd._frames import CALL, CANCEL, HEADER, TAG, frame, tagged
from taskd._multicall import MultiCallServer
from taskd._slots import CallBook, Slots
from taskd.registry import ASYNC, PROCESS, THREAD, Registry

from tests.fakes import FakeProcess, PoolTestsMixin


def ioRegistry() -> Registry:
    reg = Registry()
    for name in ("add", "wait"):
        reg.register(lambda *a, **k: None, name)
    reg.register(lambda *a, **k: None, "crunch", mode="process")

    async def aw(*a: Any) -> None:
        pass

    reg.register(aw, "await")
    return reg


def calls(process: FakeProcess) -> list[tuple[int, str, Any]]:
    """
    @return: the tagged calls written to C{process} (tag, name, arguments),
        and cancels as (tag, "CANCEL", None).
    """
    out = []
    for data in process.written:
        body = data[4:]
        (tag,) = TAG.unpack_from(body, 1)
        if body[:1] == CANCEL:
            out.append((tag, "CANCEL", None))
            continue
        assert body[:1] == CALL
        name, _, payload = body[5:].partition(b"\n")
        out.append((tag, name.decode(), json.loads(payload)["args"]))
    return out


class CallBookTests(SynchronousTestCase):
    def test_fits(self) -> None:
        """
        A thread call takes a thread, an async call an async slot, a
        process call the whole worker (and only an empty one).
        """
        book: CallBook[str] = CallBook(Slots(2, 1))
        self.assertTrue(book.fits(PROCESS))
        a = book.add("a", THREAD)
        self.assertFalse(book.fits(PROCESS))
        book.add("b", THREAD)
        self.assertFalse(book.fits(THREAD))
        self.assertTrue(book.fits(ASYNC))
        book.add("c", ASYNC)
        self.assertFalse(book.fits(ASYNC))
        self.assertEqual(book.remove(a), "a")
        self.assertTrue(book.fits(THREAD))
        self.assertEqual(book.tagOf("a"), None)
        self.assertEqual(book.get(a), None)

    def test_processAlone(self) -> None:
        """
        While a process call is booked, nothing else fits.
        """
        book: CallBook[str] = CallBook(Slots(4, 4))
        tag = book.add("p", PROCESS)
        self.assertEqual([book.fits(m) for m in (THREAD, ASYNC, PROCESS)], [False] * 3)
        book.remove(tag)
        self.assertTrue(book.fits(PROCESS))


class MultiCallPoolTests(PoolTestsMixin, SynchronousTestCase):
    def pool(self, workers: int = 1, threads: int = 3, **kw: Any) -> Any:
        kw.setdefault("registry", ioRegistry())
        return self.startedPool(workers, threads=threads, asyncConcurrency=2, **kw)

    def test_workerArguments(self) -> None:
        """
        Workers are told to run several calls at once; a pool of one
        thread with no C{async def} task starts them as it always has.
        """
        pool, reactor = self.pool(threads=3)
        args = reactor.processes[0].args
        self.assertEqual(args[args.index("--threads") + 1 :][:3], ["3", "--async-concurrency", "2"])
        plain, reactor = self.startedPool(1)
        self.assertNotIn("--threads", reactor.processes[0].args)

    def test_capacityIsWorkersTimesThreads(self) -> None:
        """
        2 workers of 3 threads run 6 calls at once; the 7th waits for a
        reply, which may come in any order, and goes to the worker that
        freed a thread.
        """
        pool, reactor = self.pool(workers=2, threads=3)
        ds = [pool.submit("wait", [i]) for i in range(7)]
        first, second = reactor.processes
        self.assertEqual(len(calls(first)) + len(calls(second)), 6)
        self.assertEqual(pool.stats()["queued"], 1)
        tag, _, args = calls(first)[-1]
        first.send(tagged(b"r", tag, b'"late"'))
        self.assertEqual(self.successResultOf(ds[args[0]]), "late")
        self.assertEqual(calls(first)[-1][2], [6])
        for d in ds:
            if d is not ds[args[0]]:
                self.assertNoResult(d)

    def test_progressToItsCall(self) -> None:
        """
        A tagged progress report goes to its own call.
        """
        pool, reactor = self.pool()
        seen: dict[int, list[Any]] = {0: [], 1: []}
        pool.submit("wait", [0], progress=seen[0].append)
        pool.submit("wait", [1], progress=seen[1].append)
        (a, _, _), (b, _, _) = calls(reactor.processes[0])
        reactor.processes[0].send(tagged(b"p", b, b'"half"'))
        self.assertEqual(seen, {0: [], 1: ["half"]})

    def test_timeoutAsksTheWorker(self) -> None:
        """
        A call that times out is answered at once and its worker is sent a
        cancel frame, not killed; its late answer is dropped, and frees
        the thread it held for the next call.
        """
        pool, reactor = self.pool(threads=2)
        worker = reactor.processes[0]
        d = pool.submit("wait", [0], timeout=2.0)
        other = pool.submit("wait", [1], timeout=None)
        asynchronous = pool.submit("await", [2], timeout=None)
        waiting = pool.submit("wait", [3], timeout=None)
        self.assertEqual(pool.stats()["queued"], 1)
        reactor.advance(2.0)
        self.assertIsInstance(self.failureResultOf(d).value, errors.TaskTimeout)
        self.assertEqual(worker.signals, [])
        self.assertEqual(calls(worker)[-1], (1, "CANCEL", None))
        self.assertEqual(pool.stats()["queued"], 1)
        worker.send(tagged(b"e", 1, b'{"type":"cancelled","message":"stopped"}'))
        self.assertEqual(calls(worker)[-1], (4, "wait", [3]))
        for pending in (other, asynchronous, waiting):
            self.assertNoResult(pending)

    def test_retryAfterTimeout(self) -> None:
        """
        A task with retries that times out in a threaded worker runs again;
        the first attempt's late answer (the worker confirming it stopped
        it) is dropped and does not answer the retried call.
        """
        reg = ioRegistry()
        reg.register(lambda *a: None, "flaky", retries=1, backoff=0.0)
        pool, reactor = self.pool(threads=2, registry=reg)
        worker = reactor.processes[0]
        d = pool.submit("flaky", [0], timeout=2.0)
        other = pool.submit("add", [1], timeout=None)
        reactor.advance(2.0)
        self.assertNoResult(d)
        # The retry waits: its first attempt still holds a thread here.
        self.assertEqual(calls(worker)[-1], (1, "CANCEL", None))
        self.assertEqual(pool.stats()["queued"], 1)
        worker.send(tagged(b"e", 1, b'{"type":"cancelled","message":"stopped"}'))
        self.assertNoResult(d)
        self.assertEqual(calls(worker)[-1], (3, "flaky", [0]))
        worker.send(tagged(b"r", 3, b'"second"'))
        self.assertEqual(self.successResultOf(d), "second")
        worker.send(tagged(b"r", 2, b"2"))
        self.assertEqual(self.successResultOf(other), 2)

    def test_cancelAsksTheWorker(self) -> None:
        """
        A cancelled call is answered at once; the worker is asked to stop
        it; the worker's other call is untouched.
        """
        pool, reactor = self.pool()
        worker = reactor.processes[0]
        d = pool.submit("wait", [0])
        other = pool.submit("wait", [1])
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(calls(worker)[-1], (1, "CANCEL", None))
        worker.send(tagged(b"r", 2, b"5"))
        self.assertEqual(self.successResultOf(other), 5)
        self.assertEqual(worker.signals, [])

    def test_stuckCallDrainsTheWorker(self) -> None:
        """
        A call that does not stop within the kill grace: its worker takes
        no more calls (its request pipe is closed), a new one starts at
        once, the old one's other call is still answered, and after the
        drain bound (the grace) what it still runs fails with
        C{worker_crashed}.
        """
        pool, reactor = self.pool(killGrace=1.0, grace=5.0, timeout=None)
        old = reactor.processes[0]
        stuck = pool.submit("wait", [0])
        other = pool.submit("wait", [1])
        last = pool.submit("wait", [2])
        stuck.cancel()
        reactor.advance(1.0)
        self.assertEqual(old.closed, [3])
        self.assertEqual(len(reactor.processes), 2)
        reactor.processes[1].ready()
        new = pool.submit("wait", [3])
        self.assertEqual(calls(reactor.processes[1]), [(1, "wait", [3])])
        old.send(tagged(b"r", 2, b'"other"'))
        self.assertEqual(self.successResultOf(other), "other")
        reactor.advance(5.0)
        self.assertEqual(old.signals, ["SIGKILL"])
        old.exit(None, 9)
        self.assertIsInstance(self.failureResultOf(last).value, errors.WorkerCrashed)
        self.failureResultOf(stuck, CancelledError)
        self.assertNoResult(new)

    def test_crashFailsEveryRunningCall(self) -> None:
        """
        A worker that dies fails every call it was running with
        C{worker_crashed}, once; queued calls are not touched, and go to
        its replacement.
        """
        pool, reactor = self.pool(threads=2)
        running = [pool.submit("wait", [i]) for i in range(2)]
        queued = pool.submit("wait", [2])
        reactor.processes[0].exit(None, 9)
        for d in running:
            self.assertIsInstance(self.failureResultOf(d).value, errors.WorkerCrashed)
        self.assertNoResult(queued)
        reactor.processes[1].ready()
        self.assertEqual(calls(reactor.processes[1]), [(1, "wait", [2])])

    def test_processModeAlone(self) -> None:
        """
        A call of mode C{process} waits for a worker with nothing else to
        do, blocks it meanwhile, and its timeout kills the worker.
        """
        pool, reactor = self.pool(threads=2, timeout=3.0)
        worker = reactor.processes[0]
        a = pool.submit("wait", [0])
        crunch = pool.submit("crunch", [1])
        after = pool.submit("wait", [2])
        self.assertEqual([c[1] for c in calls(worker)], ["wait"])
        worker.send(tagged(b"r", 1, b"0"))
        self.assertEqual(self.successResultOf(a), 0)
        self.assertEqual([c[1] for c in calls(worker)], ["wait", "crunch"])
        reactor.advance(3.0)
        self.assertIsInstance(self.failureResultOf(crunch).value, errors.TaskTimeout)
        self.assertEqual(worker.signals, ["SIGKILL"])
        self.assertNoResult(after)

    def test_untaggedReply(self) -> None:
        """
        An untagged reply from a worker that runs several calls is a
        protocol error.
        """
        pool, reactor = self.pool()
        d = pool.submit("wait", [0])
        reactor.processes[0].send(b"R1")
        self.assertIsInstance(self.failureResultOf(d).value, errors.WorkerProtocolError)

    def test_unknownTag(self) -> None:
        """
        A reply for a tag the worker does not hold is a protocol error.
        """
        pool, reactor = self.pool()
        d = pool.submit("wait", [0])
        reactor.processes[0].send(tagged(b"r", 99, b"1"))
        failure = self.failureResultOf(d)
        self.assertIn("for call 99, which it does not hold", failure.value.message)

    def test_stopGivesRunningCallsTheGrace(self) -> None:
        """
        On stop, every call a worker runs has the grace period (none counts
        as queued in its pipe); past it they all fail with
        C{PoolStopping}.
        """
        pool, reactor = self.pool(grace=2.0)
        ds = [pool.submit("wait", [i]) for i in range(3)]
        stopped = pool.stop()
        for d in ds:
            self.assertNoResult(d)
        reactor.advance(2.0)
        for d in ds:
            self.assertIsInstance(self.failureResultOf(d).value, errors.PoolStopping)
        reactor.processes[0].exit(None, 9)
        self.successResultOf(stopped)


def request(tag: int, body: bytes, kind: bytes = CALL) -> bytes:
    return frame(kind + TAG.pack(tag) + body)


def replies(data: bytes) -> dict[int, tuple[bytes, Any]]:
    out = {}
    while data:
        (length,) = HEADER.unpack(data[:4])
        body, data = data[4 : 4 + length], data[4 + length :]
        (tag,) = TAG.unpack_from(body, 1)
        out[tag] = (body[:1], json.loads(body[5:]))
    return out


class MultiCallServerTests(SynchronousTestCase):
    """
    The worker's side: calls read from a stream run on threads and on an
    event loop, and are answered by tag.
    """

    def serve(self, reg: Registry, stream: bytes, threads: int = 2) -> dict[int, tuple[bytes, Any]]:
        out = io.BytesIO()
        out.flush = lambda: None  # type: ignore[method-assign]
        server = MultiCallServer(reg, out, 1000, threads, 10, worker.StopSignal())
        server.start()
        self.assertIsNone(server.serve(io.BytesIO(stream)))
        return replies(out.getvalue())

    def test_outOfOrder(self) -> None:
        """
        A call that ends first is answered first, with its tag; an async
        call runs beside them.
        """
        reg = Registry()
        release = threading.Event()
        reg.register(lambda: release.wait(10) and "slow", "slow")
        reg.register(lambda: release.set() or "fast", "fast")

        async def sleepy() -> str:
            await asyncio.sleep(0)
            return "async"

        reg.register(sleepy, "sleepy")
        got = self.serve(reg, request(7, b"slow\n{}") + request(8, b"fast\n{}") + request(9, b"sleepy\n{}"))
        self.assertEqual(got, {7: (b"r", "slow"), 8: (b"r", "fast"), 9: (b"r", "async")})

    def test_errors(self) -> None:
        """
        An unknown task and a failing task are answered by tag.
        """
        reg = Registry()
        reg.register(lambda: 1 / 0, "boom")
        got = self.serve(reg, request(1, b"nope\n{}") + request(2, b"boom\n{}"))
        self.assertEqual(got[1], (b"e", {"type": "unknown_task", "message": "no task named 'nope'", "started": False}))
        self.assertEqual((got[2][0], got[2][1]["exception"]), (b"e", "ZeroDivisionError"))

    def test_cancelBeforeStart(self) -> None:
        """
        A call cancelled while it waits for a thread does not run; it is
        answered as stopped.
        """
        reg = Registry()
        ran = []
        release = threading.Event()
        reg.register(lambda: release.wait(60), "hold")
        reg.register(lambda: ran.append(1), "never")

        class Releasing(MultiCallServer):
            def cancel(self, tag: int) -> None:
                super().cancel(tag)
                release.set()

        out = io.BytesIO()
        out.flush = lambda: None  # type: ignore[method-assign]
        server = Releasing(reg, out, 1000, 1, 10, worker.StopSignal())
        server.start()
        server.serve(io.BytesIO(request(1, b"hold\n{}") + request(2, b"never\n{}") + request(2, b"", CANCEL)))
        # The main thread waited for "hold" only; "never" is answered by
        # the thread when it gets to it.
        for _ in range(1000):
            if len(replies(out.getvalue())) == 2:
                break
            threading.Event().wait(0.01)
        got = replies(out.getvalue())
        self.assertEqual(ran, [])
        self.assertEqual(got[1], (b"r", True))
        self.assertEqual(got[2][1]["type"], "cancelled")
