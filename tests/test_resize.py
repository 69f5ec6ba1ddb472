"""
Tests for L{taskd.pool.ProcessPool.resize} and
L{taskd.pool.ProcessPool.restartWorkers}, exactly, on the fake process
reactor: no call fails.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from taskd import errors

from tests.fakes import PoolTestsMixin


class ResizeTests(PoolTestsMixin, SynchronousTestCase):
    """
    L{ProcessPool.resize}.
    """

    def test_up(self) -> None:
        """
        Growing starts the new workers at once; queued calls go to them as
        they are ready.
        """
        pool, reactor = self.startedPool(1)
        first = reactor.processes[0]
        running = pool.submit("sleep", [1])
        queued = pool.submit("add", [1, 2])
        pool.resize(3)
        self.assertEqual(len(reactor.processes), 3)
        self.assertEqual(pool.config.workers, 3)
        reactor.processes[1].ready()
        reactor.processes[2].ready()
        self.assertEqual([r[0] for r in reactor.processes[1].requests()], ["add"])
        reactor.processes[1].send(b"R3")
        first.send(b"R1")
        self.assertEqual((self.successResultOf(running), self.successResultOf(queued)), (1, 3))
        self.assertEqual(pool.stats()["workers"], 3)

    def test_down(self) -> None:
        """
        Shrinking lets idle workers go at once, and busy ones once their
        calls are answered: they take no new call, and no call fails.
        """
        pool, reactor = self.startedPool(3)
        a, b, c = reactor.processes
        running = [pool.submit("sleep", [1]) for _ in range(2)]
        pool.resize(1)
        self.assertEqual(pool.config.workers, 1)
        busy = [p for p in (a, b, c) if p.written]
        [idle] = [p for p in (a, b, c) if not p.written]
        self.assertIn(idle.proto.state.value, ("retiring",))
        self.assertEqual(pool.stats()["workers"], 1)
        # One busy worker is kept; the other is let go after its call.
        later = pool.submit("add", [1, 2])
        kept = [p for p in busy if p.proto in pool._live][0]
        gone = [p for p in busy if p is not kept][0]
        gone.send(b"R1")
        self.assertEqual(gone.proto.state.value, "retiring")
        self.assertEqual(gone.requests(), [("sleep", {"args": [1], "kwargs": {}})])
        kept.send(b"R1")
        kept.send(b"R3")
        self.assertEqual([self.successResultOf(d) for d in running], [1, 1])
        self.assertEqual(self.successResultOf(later), 3)
        for p in (idle, gone):
            p.exit(0)
        self.assertEqual(len(reactor.processes), 3)  # no replacement started
        self.assertEqual(pool.stats()["processes"], 1)

    def test_badSize(self) -> None:
        """
        A size out of range is refused with the config's error; nothing
        changes.
        """
        pool, reactor = self.startedPool(2)
        self.assertRaises(ValueError, pool.resize, 0)
        self.assertEqual((pool.config.workers, pool.stats()["workers"]), (2, 2))


class RollingRestartTests(PoolTestsMixin, SynchronousTestCase):
    """
    L{ProcessPool.restartWorkers}.
    """

    def test_replacesEachWorkerInTurn(self) -> None:
        """
        Each worker is replaced in turn: its fresh replacement starts, and
        once it is ready the old one takes no new call and leaves when its
        call is answered; the result is the number replaced.
        """
        pool, reactor = self.startedPool(2)
        old = list(reactor.processes)
        running = pool.submit("sleep", [1])
        d = pool.restartWorkers()
        self.assertEqual(len(reactor.processes), 3)
        self.assertNoResult(d)
        reactor.processes[2].ready()
        self.assertEqual(len(reactor.processes), 4)
        reactor.processes[3].ready()
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(pool.stats()["workers"], 2)
        # The busy old worker is still answering its call.
        busy = [p for p in old if p.written][0]
        self.assertEqual(busy.proto.state.value, "ready")
        later = pool.submit("add", [1, 2])
        self.assertEqual(busy.requests(), [("sleep", {"args": [1], "kwargs": {}})])
        busy.send(b"R1")
        self.assertEqual(self.successResultOf(running), 1)
        self.assertEqual(busy.proto.state.value, "retiring")
        fresh = [p for p in reactor.processes[2:] if p.written][0]
        fresh.send(b"R3")
        self.assertEqual(self.successResultOf(later), 3)
        self.assertEqual({p.proto.state.value for p in old}, {"retiring"})

    def test_freshWorkerCannotStart(self) -> None:
        """
        If a fresh worker cannot start (the new task code does not import),
        the restart fails with its error and the old workers keep serving.
        """
        pool, reactor = self.startedPool(2)
        d = pool.restartWorkers()
        reactor.processes[2].send(b'E{"type":"worker_start_failed","message":"SyntaxError: bad"}')
        reactor.processes[2].exit(1)
        f = self.failureResultOf(d, errors.WorkerStartError)
        self.assertEqual(f.value.message, "SyntaxError: bad")
        call = pool.submit("add", [1, 2])
        served = [p for p in reactor.processes[:2] if p.written][0]
        served.send(b"R3")
        self.assertEqual(self.successResultOf(call), 3)
        self.assertEqual(pool.stats()["workers"], 2)

    def test_notRunning(self) -> None:
        """
        A pool that is not running refuses with L{errors.PoolStopping}.
        """
        pool, reactor = self.makePool(1)
        self.failureResultOf(pool.restartWorkers(), errors.PoolStopping)
