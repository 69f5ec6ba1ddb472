"""
Background jobs through the client (L{taskd.client.TaskClient.submit},
L{taskd.client.JobHandle}) and the connection: against a real pool, a
real journal on its thread and a real server on 127.0.0.1; and the
client's protocol alone over a L{StringTransport}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from taskd import errors
from taskd.client import TaskClient, TaskClientProtocol, connect
from taskd.jobs import JobService
from taskd.journal import SQLiteJournal
from taskd.pool import ProcessPool
from taskd.server import TaskServerFactory
from taskd.wire import JobReply


class JobClientProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proto = TaskClientProtocol()
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.client = TaskClient(self.proto)

    def sent(self) -> list[Any]:
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(line) for line in data.splitlines()]

    def test_submitAndHandle(self) -> None:
        """
        C{submitWith} sends a submit with the job's options and gives a
        handle once accepted; the handle's C{status}, C{result} and
        C{cancel} send C{job}, C{wait} and C{cancel} for its id.
        """
        d = self.client.submitWith("add", [1, 2], delay=5, key="k")
        self.assertEqual(self.sent(), [{"type": "submit", "function": "add", "args": [1, 2], "id": 1, "delay": 5, "key": "k"}])
        self.proto.dataReceived(b'{"type":"accepted","id":1,"job":"J","existing":true}\n')
        handle = self.successResultOf(d)
        self.assertEqual((handle.id, handle.existing), ("J", True))
        status, result, cancel = handle.status(), handle.result(progress=print), handle.cancel()
        self.assertEqual(
            self.sent(),
            [{"type": "job", "job": "J", "id": 2}, {"type": "wait", "job": "J", "id": 3, "progress": True},
             {"type": "cancel", "job": "J", "id": 4}],
        )
        self.proto.dataReceived(
            b'{"type":"job","id":2,"job":"J","state":"queued","submitted":1.0}\n'
            b'{"type":"job","id":4,"job":"J","state":"cancelled","error":{"type":"cancelled","message":"m"}}\n'
            b'{"type":"error","id":3,"error":{"type":"cancelled","message":"m"}}\n'
        )
        self.assertEqual(self.successResultOf(status), JobReply(2, "J", "queued", {"submitted": 1.0}))
        self.assertEqual(self.successResultOf(cancel).state, "cancelled")
        self.failureResultOf(result, errors.TaskCancelled)

    def test_stopWaiting(self) -> None:
        """
        Cancelling a handle's C{result} only stops waiting: no cancel is
        sent, and the late answer is ignored.
        """
        d = self.client.job("J").result()
        self.sent()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.sent(), [])
        self.proto.dataReceived(b'{"type":"result","id":1,"result":3}\n')


class JobClientTests(TestCase):
    """
    Jobs end to end, in one process: client, server, jobs, journal, pool.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.pool = ProcessPool(reactor, tasks=["taskd.examples", "tests.tasks"], workers=2, killGrace=1.0)
        yield self.pool.start()
        self.jobs = JobService(self.pool, SQLiteJournal(self.mktemp(), reactor))
        yield self.jobs.start()
        # Stopped in this order: the pool, then the jobs (the journal).
        self.addCleanup(self.jobs.stop)
        self.addCleanup(self.pool.stop)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            TaskServerFactory(self.pool, jobs=self.jobs)
        )
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.endpoint = f"tcp:127.0.0.1:{self.port}"
        self.client = yield connect(reactor, self.endpoint)
        self.addCleanup(self.client.close)

    @inlineCallbacks
    def test_submitFromOneWaitFromAnother(self) -> Any:
        """
        A job submitted on one connection, which then closes, runs; a
        handle made from its id on another connection gets its progress,
        its result and its state.
        """
        handle = yield self.client.submit("steps", 3, 0.2)
        yield self.client.close()
        other = yield connect(reactor, self.endpoint)
        self.addCleanup(other.close)
        again = other.job(handle.id)
        seen: list[Any] = []
        result = yield again.result(progress=seen.append)
        self.assertEqual(result, 3)
        self.assertTrue(seen and seen[-1] == {"done": 3, "of": 3}, seen)
        status = yield again.status()
        self.assertEqual((status.job, status.state, status.fields["result"]), (handle.id, "done", 3))
        self.assertLessEqual(status.fields["submitted"], status.fields["started"])
        self.assertLessEqual(status.fields["started"], status.fields["finished"])

    @inlineCallbacks
    def test_errorsAsACallsErrors(self) -> Any:
        """
        A job's error is the one a call would get; an unknown job and an
        unknown task get theirs.
        """
        handle = yield self.client.submit("fail", "boom")
        failure = yield self.assertFailure(handle.result(), errors.TaskFailed)
        self.assertIn("boom", str(failure))
        status = yield handle.status()
        self.assertEqual((status.state, status.fields["error"]["type"]), ("failed", "task_failed"))
        yield self.assertFailure(self.client.job("nope").result(), errors.UnknownJob)
        yield self.assertFailure(self.client.submit("nope"), errors.UnknownTask)

    @inlineCallbacks
    def test_cancelAndKeys(self) -> Any:
        """
        A delayed job cancelled from another connection ends cancelled and
        never runs; a second submit with a key gets the first job's handle.
        """
        later = yield self.client.submitWith("add", [1, 1], delay=600, key="once")
        same = yield self.client.submitWith("add", [2, 2], key="once")
        self.assertEqual((same.id, same.existing, later.existing), (later.id, True, False))
        other = yield connect(reactor, self.endpoint)
        self.addCleanup(other.close)
        status = yield other.job(later.id).cancel()
        self.assertEqual(status.state, "cancelled")
        yield self.assertFailure(later.result(), errors.TaskCancelled)

    @inlineCallbacks
    def test_many(self) -> Any:
        """
        Many jobs at once: every one is accepted and ends with its result.
        """
        handles = yield gatherResults([self.client.submit("add", i, i) for i in range(300)])
        results = yield gatherResults([h.result() for h in handles])
        self.assertEqual(results, [2 * i for i in range(300)])

    @inlineCallbacks
    def converse(self, factory: TaskServerFactory | None = None) -> Any:
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.protocol import Factory

        from tests.test_reliability import Conversation

        port = self.port
        if factory is not None:
            listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
            self.addCleanup(listening.stopListening)
            port = listening.getHost().port
        conversation = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            Factory.forProtocol(Conversation)
        )
        self.addCleanup(conversation.transport.loseConnection)
        return conversation

    @inlineCallbacks
    def test_badJobRequests(self) -> Any:
        """
        On the wire: a request id still in flight gets C{duplicate_id}
        (the first request goes on); a daemon without jobs says so; each
        answer keeps the connection serving.
        """
        talk = yield self.converse()
        (accepted,) = yield talk.exchange(b'{"type":"submit","function":"add","args":[1,2],"delay":600,"id":1}\n')
        job = accepted["job"].encode()
        replies = yield talk.exchange(
            b'{"type":"wait","job":"%s","id":"w"}\n{"type":"wait","job":"%s","id":"w"}\n' % (job, job)
        )
        self.assertEqual(
            replies,
            [{"type": "error", "id": "w", "error": {"type": "duplicate_id", "message": "id 'w' belongs to a request still in flight; this one was not run", "started": False}}],
        )
        replies = yield talk.exchange(b'{"type":"cancel","job":"%s","id":2}\n' % (job,), replies=2)
        self.assertEqual(sorted(r["type"] for r in replies), ["error", "job"])
        self.assertEqual([r["error"]["type"] for r in replies if r["id"] == "w"], ["cancelled"])
        none = yield self.converse(TaskServerFactory(self.pool))
        replies = yield none.exchange(b'{"type":"job","job":"x","id":1}\n{"function":"add","args":[1,2],"id":2}\n', replies=2)
        self.assertEqual(
            replies,
            [{"type": "error", "id": 1, "error": {"type": "bad_request", "message": "this daemon runs no background jobs", "started": False}},
             {"type": "result", "id": 2, "result": 3}],
        )
