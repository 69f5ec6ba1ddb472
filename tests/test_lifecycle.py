"""
Every lifecycle state and transition of a worker process and of the pool,
driven on the fake process reactor with a L{Clock}: the tables in
L{taskd._workerprocess.WORKER_TRANSITIONS} and L{taskd.pool.POOL_TRANSITIONS}
are the one place they are named, and each entry is taken here.
"""

from __future__ import annotations

import enum

from twisted.trial.unittest import SynchronousTestCase

from taskd import errors
from taskd._frames import REQUEST_FD
from taskd._lifecycle import IllegalTransition, Lifecycle
from taskd._workerprocess import WORKER_TRANSITIONS, WorkerState
from taskd.pool import POOL_TRANSITIONS, PoolState

from tests.fakes import PoolTestsMixin


class Light(enum.Enum):
    OFF = 1
    ON = 2


class Lamp(Lifecycle[Light]):
    transitions = {"on": (frozenset({Light.OFF}), Light.ON), "off": (frozenset({Light.ON}), Light.OFF)}

    def __init__(self) -> None:
        self.state = Light.OFF


class LifecycleTests(SynchronousTestCase):
    def test_goAndCan(self) -> None:
        """
        L{Lifecycle._go} takes a transition allowed in the current state and
        returns the state it left; L{Lifecycle._can} says which are allowed.
        """
        lamp = Lamp()
        self.assertEqual((lamp._can("on"), lamp._can("off")), (True, False))
        self.assertIs(lamp._go("on"), Light.OFF)
        self.assertIs(lamp.state, Light.ON)

    def test_illegalTransition(self) -> None:
        """
        A transition the current state does not allow raises
        L{IllegalTransition} naming both, and changes nothing.
        """
        lamp = Lamp()
        e = self.assertRaises(IllegalTransition, lamp._go, "off")
        self.assertEqual(str(e), "'off' is not allowed in state OFF")
        self.assertIs(lamp.state, Light.OFF)

    def test_tablesCoverEveryState(self) -> None:
        """
        Every worker and pool state is reached by some transition or is the
        initial one, and every state but the last can be left.
        """
        for table, initial, final in [
            (WORKER_TRANSITIONS, WorkerState.STARTING, WorkerState.ENDED),
            (POOL_TRANSITIONS, PoolState.NEW, PoolState.STOPPED),
        ]:
            targets = {target for _, target in table.values()} | {initial}
            sources = set().union(*(sources for sources, _ in table.values()))
            states = set(type(initial))
            self.assertEqual(targets, states)
            self.assertEqual(sources, states - {final})


class WorkerLifecycleTests(PoolTestsMixin, SynchronousTestCase):
    """
    A worker's transitions: ready, retire, terminate, end.
    """

    def test_ready(self) -> None:
        """
        C{ready}: STARTING -> READY when the worker's H frame arrives.
        """
        pool, reactor = self.makePool()
        pool.start()
        worker = reactor.processes[0].proto
        self.assertIs(worker.state, WorkerState.STARTING)
        reactor.processes[0].ready()
        self.assertIs(worker.state, WorkerState.READY)

    def test_readyTwice(self) -> None:
        """
        A second H frame is not a transition a READY worker allows: it is a
        protocol error, and the worker is terminated and replaced.
        """
        pool, reactor = self.startedPool()
        process = reactor.processes[0]
        process.ready()
        self.assertIs(process.proto.state, WorkerState.TERMINATING)
        self.assertEqual(process.signals, ["SIGKILL"])
        self.assertEqual(len(reactor.processes), 2)

    def test_retireThenEnd(self) -> None:
        """
        C{retire}: READY -> RETIRING closes the request pipe (an idle worker
        at stop); C{end}: RETIRING -> ENDED when it exits.
        """
        pool, reactor = self.startedPool(killGrace=2.0)
        process = reactor.processes[0]
        pool.stop()
        self.assertIs(process.proto.state, WorkerState.RETIRING)
        self.assertEqual((process.closed, process.signals), ([REQUEST_FD], []))
        process.exit(0)
        self.assertIs(process.proto.state, WorkerState.ENDED)

    def test_retiredWorkerThatStaysIsTerminated(self) -> None:
        """
        C{terminate}: RETIRING -> TERMINATING when a retired worker has not
        exited after the kill grace: SIGKILL, SIGTERM to the rest of its
        group; C{end} from TERMINATING.
        """
        pool, reactor = self.startedPool(killGrace=2.0)
        process = reactor.processes[0]
        pool.stop()
        reactor.advance(1.9)
        self.assertIs(process.proto.state, WorkerState.RETIRING)
        reactor.advance(0.1)
        self.assertIs(process.proto.state, WorkerState.TERMINATING)
        self.assertEqual((process.signals, process.groupSignals), (["SIGKILL"], ["SIGTERM"]))
        process.exit(None, 9)
        self.assertIs(process.proto.state, WorkerState.ENDED)

    def test_terminateWhileStarting(self) -> None:
        """
        C{terminate}: STARTING -> TERMINATING when the pool stops before the
        worker is ready; C{end} follows its exit.
        """
        pool, reactor = self.makePool()
        started = pool.start()
        process = reactor.processes[0]
        pool.stop()
        self.failureResultOf(started, errors.PoolStopping)
        self.assertIs(process.proto.state, WorkerState.TERMINATING)
        self.assertEqual(process.signals, ["SIGKILL"])
        process.exit(None, 9)
        self.assertIs(process.proto.state, WorkerState.ENDED)

    def test_terminateWhileReady(self) -> None:
        """
        C{terminate}: READY -> TERMINATING when its call times out.
        """
        pool, reactor = self.startedPool()
        process = reactor.processes[0]
        d = pool.submit("sleep", [9], timeout=3.0)
        reactor.advance(3.0)
        self.failureResultOf(d, errors.TaskTimeout)
        self.assertIs(process.proto.state, WorkerState.TERMINATING)

    def test_endWhileStartingOrReady(self) -> None:
        """
        C{end} from STARTING (a worker that dies before it is ready) and
        from READY (a crash).
        """
        pool, reactor = self.makePool(workers=2)
        d = pool.start()
        early, late = reactor.processes
        late.ready()
        early.exit(1)
        self.assertIs(early.proto.state, WorkerState.ENDED)
        late.exit(0)  # let go by the failed start
        self.failureResultOf(d, errors.WorkerStartError)
        pool, reactor = self.startedPool()
        reactor.processes[0].exit(None, 9)
        self.assertIs(reactor.processes[0].proto.state, WorkerState.ENDED)

    def test_illegalWorkerTransition(self) -> None:
        """
        A transition out of ENDED fails loudly instead of being ignored.
        """
        pool, reactor = self.startedPool()
        worker = reactor.processes[0].proto
        reactor.processes[0].exit(0)
        self.assertRaises(IllegalTransition, worker.retire)
        self.assertRaises(IllegalTransition, worker.terminate)


class PoolLifecycleTests(PoolTestsMixin, SynchronousTestCase):
    """
    The pool's transitions: start, abandon, started, stop, stopped.
    """

    def test_startStartedStopStopped(self) -> None:
        """
        C{start}: NEW -> STARTING; C{started}: STARTING -> RUNNING once every
        worker is ready; C{stop}: RUNNING -> STOPPING; C{stopped}: STOPPING
        -> STOPPED once every worker has exited.
        """
        pool, reactor = self.makePool()
        self.assertIs(pool.state, PoolState.NEW)
        d = pool.start()
        self.assertIs(pool.state, PoolState.STARTING)
        reactor.processes[0].ready()
        self.successResultOf(d)
        self.assertIs(pool.state, PoolState.RUNNING)
        stopped = pool.stop()
        self.assertIs(pool.state, PoolState.STOPPING)
        self.assertNoResult(stopped)
        reactor.processes[0].exit(0)
        self.successResultOf(stopped)
        self.assertIs(pool.state, PoolState.STOPPED)

    def test_stopWhileStarting(self) -> None:
        """
        C{stop}: STARTING -> STOPPING; the start fails with
        L{errors.PoolStopping}.
        """
        pool, reactor = self.makePool()
        started = pool.start()
        pool.stop()
        self.assertIs(pool.state, PoolState.STOPPING)
        self.failureResultOf(started, errors.PoolStopping)
        reactor.processes[0].exit(None, 15)
        self.assertIs(pool.state, PoolState.STOPPED)

    def test_abandon(self) -> None:
        """
        C{abandon}: NEW -> STOPPED, by a stop before any start (nothing was
        spawned) or by task modules that cannot be imported.
        """
        pool, reactor = self.makePool()
        self.successResultOf(pool.stop())
        self.assertIs(pool.state, PoolState.STOPPED)
        self.assertEqual(reactor.processes, [])
        pool, reactor = self.makePool()
        pool.config = pool.config.__class__(tasks=["no.such.module"], workers=1)
        self.failureResultOf(pool.start(), ModuleNotFoundError)
        self.assertIs(pool.state, PoolState.STOPPED)

    def test_noStartAfterStop(self) -> None:
        """
        A stopped pool cannot start again, and refuses calls.
        """
        pool, reactor = self.startedPool()
        reactor.processes[0].exit(0)  # replaced
        pool.stop()
        reactor.processes[1].exit(0)
        self.assertIs(pool.state, PoolState.STOPPED)
        f = self.failureResultOf(pool.start(), RuntimeError)
        self.assertEqual(str(f.value), "cannot start a pool that is stopped")
        f = self.failureResultOf(pool.submit("add", [1, 2]), errors.PoolStopping)
        self.assertEqual(f.value.message, "the pool is not running (it is stopped)")
