"""
Background jobs through L{taskd.reconnecting.ReconnectingClient}: against
in-process daemons on 127.0.0.1, each with its own pool, journal (SQLite,
on its thread) and listener, stopped and restarted by the test.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from taskd import errors
from taskd.jobs import JobService
from taskd.journal import SQLiteJournal
from taskd.reconnecting import ReconnectingClient
from taskd.server import TaskServerFactory

from tests.test_pool import waitFor
from tests.test_reconnecting import Daemon


class JobDaemon(Daemon):
    """
    A L{Daemon} that takes background jobs; its job ids start with its
    C{name}, so a test can tell where a job lives.
    """

    def __init__(self, name: str, journal: str, maxJobs: int = 1000) -> None:
        super().__init__()
        self.name = name
        self.jobs = JobService(
            self.pool,
            SQLiteJournal(journal, reactor),
            maxJobs=maxJobs,
            newId=lambda: f"{name}-{uuid.uuid4().hex}",
        )
        self.factory = TaskServerFactory(self.pool, jobs=self.jobs)
        self.jobsStarted = False

    @inlineCallbacks
    def start(self) -> Any:
        if not self.jobsStarted:
            self.jobsStarted = True
            yield self.jobs.start()
        yield super().start()

    @inlineCallbacks
    def stop(self) -> Any:
        yield super().stop()
        yield self.jobs.stop()


class ReconnectingJobsTests(TestCase):
    @inlineCallbacks
    def daemons(self, *names: str, **kw: Any) -> Any:
        result = []
        for name in names:
            daemon = JobDaemon(name, self.mktemp(), **kw)
            yield daemon.start()
            self.addCleanup(daemon.stop)
            result.append(daemon)
        return result

    def client(self, daemons: list[JobDaemon], **kw: Any) -> ReconnectingClient:
        kw.setdefault("retryPolicy", backoffPolicy(initialDelay=0.05, maxDelay=0.2, jitter=lambda: 0))
        client = ReconnectingClient(reactor, [f"tcp:127.0.0.1:{d.number}" for d in daemons], **kw)
        client.startService()
        self.addCleanup(client.stopService)
        return client

    @inlineCallbacks
    def test_submitsSpreadAndHandlesWork(self) -> Any:
        """
        Submits go to the connected daemons in turn (the least busy first);
        each handle's C{result} and C{status} reach the daemon that
        accepted its job.
        """
        a, b = yield self.daemons("a", "b")
        client = self.client([a, b])
        yield waitFor(lambda: client.connectedCount() == 2, "both connections")
        handles = []
        for i in range(6):
            handles.append((yield client.submit("add", i, 1)))
        self.assertEqual(sorted(h.id[0] for h in handles), ["a"] * 3 + ["b"] * 3)
        results = yield gatherResults([h.result() for h in handles])
        self.assertEqual(results, [i + 1 for i in range(6)])
        statuses = yield gatherResults([h.status() for h in handles])
        self.assertEqual([(s.job, s.state) for s in statuses], [(h.id, "done") for h in handles])

    @inlineCallbacks
    def test_handleWaitsForItsDaemon(self) -> Any:
        """
        A handle asks the daemon that holds its job, not the other one;
        while that daemon is down its requests wait, and are answered once
        the client has reconnected to it.
        """
        a, b = yield self.daemons("a", "b")
        client = self.client([a, b])
        yield waitFor(lambda: client.connectedCount() == 2, "both connections")
        handles = []
        for _ in range(2):
            handles.append((yield client.submitWith("add", [1, 2], delay=1.0)))
        [handle] = [h for h in handles if h.id.startswith("a-")]
        yield a.kill()
        yield waitFor(lambda: client.connectedCount() == 1, "the connection to a to go")
        status = handle.status()
        result = handle.result()
        self.assertFalse(status.called)
        yield a.start()
        self.assertEqual((yield status).state, "scheduled")
        self.assertEqual((yield result), 3)

    @inlineCallbacks
    def test_handleNotConnected(self) -> Any:
        """
        With C{failFast}, a handle whose daemon is down fails at once with
        L{errors.NotConnected} naming that daemon, though another is
        connected; without it, it fails so after C{waitTimeout}.
        """
        a, b = yield self.daemons("a", "b")
        client = self.client([a, b], failFast=True)
        patient = self.client([a, b], waitTimeout=0.2)
        yield waitFor(lambda: client.connectedCount() == patient.connectedCount() == 2, "the connections")
        handles = []
        for _ in range(2):
            handles.append((yield client.submitWith("add", [1, 2], delay=600)))
        [handle] = [h for h in handles if h.id.startswith("a-")]
        patientHandles = []
        for _ in range(2):
            patientHandles.append((yield patient.submitWith("add", [1, 2], delay=600)))
        [patientHandle] = [h for h in patientHandles if h.id.startswith("a-")]
        yield a.kill()
        yield waitFor(lambda: client.connectedCount() == patient.connectedCount() == 1, "the connections to a to go")
        e = yield self.assertFailure(handle.status(), errors.NotConnected)
        self.assertEqual(
            str(e.message),
            f"the daemon at tcp:127.0.0.1:{a.number} that holds the job is not connected; "
            "the request was not sent",
        )
        e = yield self.assertFailure(patientHandle.cancel(), errors.NotConnected)
        self.assertIn("could not be reached within 0.2 seconds", e.message)
        self.assertEqual((yield client.submit("add", 2, 2)).id[0], "b")

    @inlineCallbacks
    def test_busySubmitFailsOver(self) -> Any:
        """
        A submit a daemon refuses as C{busy} (its journal holds its
        C{maxJobs}) goes to another daemon; with none left, the caller gets
        C{busy}, not started.
        """
        a, b = yield self.daemons("a", "b", maxJobs=1)
        client = self.client([a, b])
        yield waitFor(lambda: client.connectedCount() == 2, "both connections")
        handles = []
        for _ in range(2):
            handles.append((yield client.submitWith("add", [1, 2], delay=600)))
        self.assertEqual(sorted(h.id[0] for h in handles), ["a", "b"])
        e = yield self.assertFailure(client.submitWith("add", [1, 2], delay=600), errors.PoolBusy)
        self.assertFalse(e.started)
        with capturedLogs() as events:
            yield self.assertFailure(client.submit("add", 1, 2), errors.PoolBusy)
        self.assertIn(
            "taskd: busy from a daemon; sending 'add' to another",
            [ev["log_format"].format(**ev) for ev in events if ev.get("log_namespace", "").startswith("taskd.reconnecting")],
        )

    @inlineCallbacks
    def test_jobByIdFindsItsDaemon(self) -> Any:
        """
        A handle made from a job's id alone asks the connected daemons in
        turn until one knows the job; an id that none knows fails with
        L{errors.UnknownJob}.
        """
        a, b = yield self.daemons("a", "b")
        client = self.client([a, b])
        yield waitFor(lambda: client.connectedCount() == 2, "both connections")
        handles = []
        for _ in range(2):
            handles.append((yield client.submit("add", 2, 3)))
        for handle in handles:
            again = client.job(handle.id)
            self.assertEqual((yield again.result()), 5)
            self.assertEqual((yield again.status()).state, "done")
        yield self.assertFailure(client.job("c-nothing").status(), errors.UnknownJob)
