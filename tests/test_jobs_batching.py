"""
Tests for what L{taskd.jobs.JobService} does per group rather than per
job: a reactor turn's submits journaled in one write and answered a
slice a turn, a feeding's running writes in one write, jobs written
running ahead of the window; and its job ids.  Above a real pool of fake
worker processes and a real SQLite journal run synchronously, turned one
reactor turn at a time: exact about what is written and told in which
turn.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from taskd import errors
from taskd._connectionjobs import SUBMITS_PER_TURN
from taskd.connection import TaskServerProtocol
from taskd.jobs import ANSWERS_PER_TURN, TAKE_BACK_RETRY, JobService, RandomIds
from taskd.journal import QUEUED, RUNNING, JobRecord, SQLiteJournal
from taskd.server import TaskServerFactory
from tests.fakes import PoolTestsMixin
from tests.test_handback import turn
from tests.test_jobs import START, registry


class JobsMixin(PoolTestsMixin):
    """
    A L{JobService} on a real SQLite journal run synchronously, above a
    pool of fake workers.
    """

    def setUp(self) -> None:
        self.ids = iter(f"j{n}" for n in range(1, 100000))

    def service(self, workers: int = 1, **kw: Any) -> JobService:
        pool, reactor = self.startedPool(workers, registry=registry(), **kw.pop("pool", {}))
        reactor.advance(START - reactor.seconds())
        self.reactor = reactor
        self.pool = pool
        self.journal = SQLiteJournal(self.mktemp(), reactor, threaded=False)
        jobs = JobService(pool, self.journal, newId=lambda: next(self.ids), **kw)
        self.successResultOf(jobs.start())
        self.addCleanup(lambda: jobs.journal.close())
        turn(reactor)
        return jobs

    def noteWrites(self) -> list[tuple[str, list[str]]]:
        """
        @return: a list the journal's writes of jobs are noted in, as they
            are asked for: the method, and each job's id and state.
        """
        noted: list[tuple[str, list[str]]] = []
        journal = self.journal
        for name in ("add", "update", "addMany", "updateMany"):
            original = getattr(journal, name)

            def noting(records: Any, _name: str = name, _original: Any = original) -> Any:
                group = records if isinstance(records, list) else [records]
                noted.append((_name, [f"{r.id} {r.state}" for r in group]))
                return _original(records)

            setattr(journal, name, noting)
        return noted

    def stored(self, jobId: str) -> JobRecord:
        record = self.successResultOf(self.journal.get(jobId))
        assert record is not None
        return record


class BatchingTests(JobsMixin, SynchronousTestCase):
    def test_submitsOfATurnInOneWrite(self) -> None:
        """
        The submits taken in one reactor turn are journaled in one write
        (L{taskd.journal.Journal.addMany}), after it; their callers are
        told once it is durable, L{ANSWERS_PER_TURN} a turn, in order.
        """
        jobs = self.service(window=0)
        noted = self.noteWrites()
        told: list[Any] = []
        n = ANSWERS_PER_TURN + 3
        for i in range(n):
            jobs.take("add", b'{"args":[%d,1]}' % (i,), told.append, runAt=START + 60)
        self.assertEqual((noted, told), ([], []))
        turn(self.reactor)  # the group goes to the journal
        self.assertEqual(noted, [("addMany", [f"j{i + 1} scheduled" for i in range(n)])])
        self.assertEqual(told, [])
        commits = self.journal.commits
        turn(self.reactor)  # committed: the first slice is told
        self.assertEqual(told, [(f"j{i + 1}", False) for i in range(ANSWERS_PER_TURN)])
        self.assertEqual(self.journal.commits, commits + 1)
        turn(self.reactor)
        self.assertEqual(told, [(f"j{i + 1}", False) for i in range(n)])
        self.assertEqual(self.stored(f"j{n}").runAt, START + 60)

    def test_takeRefusedAtOnce(self) -> None:
        """
        A submit that cannot be taken (an unknown task) is told so at once,
        with a C{Failure}, and nothing is written.
        """
        jobs = self.service()
        noted = self.noteWrites()
        told: list[Any] = []
        jobs.take("nope", b"{}", told.append)
        (failure,) = told
        self.assertIsInstance(failure, Failure)
        self.assertIsInstance(failure.value, errors.UnknownTask)
        turn(self.reactor)
        self.assertEqual(noted, [])

    def test_stopJournalsTakenSubmits(self) -> None:
        """
        Submits taken in the turn the service is stopped in are journaled
        before the journal closes, answered, and left queued for the next
        start.
        """
        jobs = self.service(window=0)
        told: list[Any] = []
        jobs.take("add", b'{"args":[1,2]}', told.append)
        stopped = jobs.stop()
        self.reactor.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(told, [("j1", False)])
        again = SQLiteJournal(self.journal.path, self.reactor, threaded=False)
        self.addCleanup(again.close)
        (record,) = self.successResultOf(again.open())
        self.assertEqual((record.id, record.state), ("j1", QUEUED))

    def test_runningWritesOfAFeedingInOneWrite(self) -> None:
        """
        The jobs one feeding of the pool starts are written running in one
        write; each is sent to a worker once it is durable, together (in
        one write to each worker).
        """
        jobs = self.service(workers=2, pool={"prefetch": 2})
        for i in range(5):
            jobs.take("add", b'{"args":[%d,1]}' % (i,), lambda _: None)
        noted = self.noteWrites()
        self.reactor.advance(0)
        self.assertEqual(noted, [
            ("addMany", [f"j{i} queued" for i in range(1, 6)]),
            ("updateMany", [f"j{i} running" for i in range(1, 5)]),
        ])
        self.assertEqual(sorted(len(p.requests()) for p in self.reactor.processes), [2, 2])
        self.assertEqual([self.stored(f"j{i}").state for i in range(1, 6)], [RUNNING] * 4 + [QUEUED])

    def test_writtenAhead(self) -> None:
        """
        When jobs end in the pool while the next jobs' running writes are
        synced, and jobs wait in line, one more job is written running
        ahead of the window from then on (up to a window more); a job
        written ahead that cannot be sent at once when its write is durable
        is taken back quietly (written queued again, no log of busy
        workers), and halves how many are written ahead.
        """
        jobs = self.service(workers=1, pool={"prefetch": 2})
        (worker,) = self.reactor.processes
        for i in range(6):
            jobs.take("add", b'{"args":[%d,1]}' % (i,), lambda _: None)
        self.reactor.advance(0)
        self.assertEqual(len(worker.requests()), 2)  # j1, j2: the window
        noted = self.noteWrites()
        worker.send(b"R1")  # j1 ends: j3 is written running
        worker.send(b"R2")  # j2 ends while it is synced: j4 is written
        self.assertEqual(noted, [
            ("update", ["j1 done"]), ("updateMany", ["j3 running"]),
            ("update", ["j2 done"]), ("updateMany", ["j4 running"]),
        ])
        del noted[:]
        turn(self.reactor)  # durable: j3 and j4 sent; j5 written ahead
        self.assertEqual([r[1]["args"][0] for r in worker.requests()], [0, 1, 2, 3])
        self.assertEqual(noted, [("updateMany", ["j5 running"])])
        del noted[:]
        worker.send(b"R3")  # j3 ends while j5 is synced: j6 written ahead too
        self.assertEqual(noted, [("update", ["j3 done"]), ("updateMany", ["j6 running"])])
        del noted[:]
        turn(self.reactor)  # j5 is durable: sent, in j3's place
        self.assertEqual([r[1]["args"][0] for r in worker.requests()], [0, 1, 2, 3, 4])
        turn(self.reactor)  # j6 is durable: it cannot be sent, and is taken back, quietly
        self.assertEqual([r[1]["args"][0] for r in worker.requests()], [0, 1, 2, 3, 4])
        self.assertEqual(noted, [("update", ["j6 queued"])])
        self.assertEqual(self.pool.stats()["queued"], 0)
        self.assertEqual(jobs.stats(), {"jobsQueued": 1, "jobsScheduled": 0, "jobsRunning": 2})
        self.assertFalse(jobs._poolFull)
        # It runs once a place is free.
        worker.send(b"R4")
        self.reactor.advance(0)
        self.assertEqual([r[1]["args"][0] for r in worker.requests()], [0, 1, 2, 3, 4, 5])
        self.assertEqual(self.stored("j6").state, RUNNING)
        self.assertIn(START + TAKE_BACK_RETRY, [c.getTime() for c in self.reactor.getDelayedCalls()])

    def test_nothingWrittenAheadForLongTasks(self) -> None:
        """
        Jobs that end one at a time, none while a running write is synced,
        are written running one by one as places free: nothing ahead.
        """
        jobs = self.service(workers=1, pool={"prefetch": 2})
        (worker,) = self.reactor.processes
        for i in range(5):
            jobs.take("add", b'{"args":[%d,1]}' % (i,), lambda _: None)
        self.reactor.advance(0)
        noted = self.noteWrites()
        for n in range(1, 4):
            worker.send(b"R%d" % (n,))
            self.reactor.advance(0)
        self.assertEqual([names for method, names in noted if method == "updateMany"], [
            ["j3 running"], ["j4 running"], ["j5 running"],
        ])
        self.assertNotIn("queued", json.dumps(noted))


class Writes(StringTransport):
    """
    A transport that keeps each write apart.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class ConnectionSubmitTests(JobsMixin, SynchronousTestCase):
    """
    Submits on a connection (L{taskd._connectionjobs.JobRequests}).
    """

    def connect(self, maxInFlight: int = 100) -> tuple[TaskServerProtocol, Writes]:
        jobs = self.service(window=0)
        factory = TaskServerFactory(self.pool, jobs=jobs, maxInFlight=maxInFlight)
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        assert isinstance(proto, TaskServerProtocol)
        transport = Writes()
        proto.makeConnection(transport)
        return proto, transport

    def lines(self, n: int, first: int = 0) -> bytes:
        return b"".join(
            b'{"type":"submit","function":"add","args":[%d,1],"id":%d}\n' % (i, i)
            for i in range(first, first + n)
        )

    def accepted(self, transport: Writes) -> list[Any]:
        return [json.loads(line)["id"] for w in transport.writes for line in w.splitlines()]

    def test_readInSlices(self) -> None:
        """
        A connection handles L{SUBMITS_PER_TURN} submits of a read, then
        leaves the lines after them in its buffer until the next reactor
        turn (an answer that resumes reading meanwhile lets one more line
        in); their answers come a slice a turn, each slice in one write.
        """
        proto, transport = self.connect()
        noted = self.noteWrites()
        proto.dataReceived(self.lines(2 * SUBMITS_PER_TURN + 3))
        self.assertTrue(proto.paused)
        # The socket is still read: the lines wait in the buffer.
        self.assertEqual(transport.producerState, "producing")
        turn(self.reactor)  # the first slice journaled; reading resumed: the next slice
        self.assertEqual(noted, [("addMany", [f"j{i} queued" for i in range(1, SUBMITS_PER_TURN + 1)])])
        self.assertTrue(proto.paused)
        turn(self.reactor)  # the first slice answered (one write), the next journaled, the last read
        self.assertEqual(transport.writes, [b"".join(
            b'{"type":"accepted","job":"j%d","id":%d}\n' % (i + 1, i) for i in range(SUBMITS_PER_TURN)
        )])
        # Each answer resumed reading (the connection's own rule, below
        # maxInFlight), and each resume read one line more.
        self.assertEqual([len(group) for _, group in noted], [SUBMITS_PER_TURN, SUBMITS_PER_TURN + 3])
        for _ in range(4):
            turn(self.reactor)
        self.assertEqual(self.accepted(transport), list(range(2 * SUBMITS_PER_TURN + 3)))
        self.assertEqual([len(w.splitlines()) for w in transport.writes], [8, 8, 3])
        self.assertFalse(proto.paused)
        self.assertEqual(transport.producerState, "producing")

    def test_maxInFlightStillHolds(self) -> None:
        """
        The turn after a slice, reading stays paused while the connection
        is at its C{maxInFlight} unanswered requests; its answers resume
        it as before.
        """
        proto, transport = self.connect(maxInFlight=SUBMITS_PER_TURN)
        proto.dataReceived(self.lines(SUBMITS_PER_TURN + 2))
        turn(self.reactor)
        # At maxInFlight: not resumed by the slice's turn, and the socket
        # is not read either.
        self.assertTrue(proto.paused)
        self.assertEqual(transport.producerState, "paused")
        turn(self.reactor)  # the slice is answered: reading resumes
        self.assertEqual(len(self.accepted(transport)), SUBMITS_PER_TURN)
        self.reactor.advance(0)
        self.assertEqual(self.accepted(transport), list(range(SUBMITS_PER_TURN + 2)))

    def test_cancelOfASubmit(self) -> None:
        """
        A C{cancel} naming a submit not yet answered changes nothing: the
        job is journaled and the submit answered C{accepted}.
        """
        proto, transport = self.connect()
        proto.dataReceived(self.lines(1) + b'{"type":"cancel","id":0}\n')
        self.reactor.advance(0)
        self.assertEqual(transport.writes, [b'{"type":"accepted","job":"j1","id":0}\n'])
        self.assertEqual(self.stored("j1").state, QUEUED)

    def test_connectionLost(self) -> None:
        """
        Submits whose connection is lost before they are answered are
        journaled all the same, and nothing is written.
        """
        proto, transport = self.connect()
        proto.dataReceived(self.lines(3))
        proto.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(0)
        self.assertEqual(transport.writes, [])
        self.assertEqual([self.stored(f"j{i}").state for i in (1, 2, 3)], [QUEUED] * 3)


class RandomIdsTests(SynchronousTestCase):
    def test_ids(self) -> None:
        """
        L{RandomIds} gives ids of 32 hexadecimal digits, all different,
        across the reads of randomness behind them.
        """
        newId = RandomIds(perRead=4)
        ids = [newId() for _ in range(1000)]
        self.assertEqual(len(set(ids)), 1000)
        self.assertEqual({len(i) for i in ids}, {32})
        self.assertEqual(set("".join(ids)) <= set("0123456789abcdef"), True)
