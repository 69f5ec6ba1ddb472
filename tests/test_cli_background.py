"""
C{python -m taskd map --background}: one background job per input line,
the job ids written in input order, against an in-process daemon with a
real pool and a real journal, the CLI a real child process (the helpers
of L{tests.test_cli}).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from taskd import errors
from taskd.client import connect
from taskd.jobs import JobService
from taskd.journal import SQLiteJournal
from taskd.pool import ProcessPool
from taskd.server import TaskServerFactory

from tests.test_cli import runCLI, spawnCLI
from tests.test_pool import waitFor


class MapBackgroundTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.pool = ProcessPool(reactor, tasks=["taskd.examples"], workers=2, killGrace=1.0)
        yield self.pool.start()
        self.jobs = JobService(self.pool, SQLiteJournal(self.mktemp(), reactor), maxJobs=30)
        yield self.jobs.start()
        self.addCleanup(self.jobs.stop)
        self.addCleanup(self.pool.stop)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            TaskServerFactory(self.pool, jobs=self.jobs)
        )
        self.addCleanup(port.stopListening)
        self.connect = f"tcp:127.0.0.1:{port.getHost().port}"
        self.client = yield connect(reactor, self.connect)
        self.addCleanup(self.client.close)

    @inlineCallbacks
    def test_idsInInputOrder(self) -> Any:
        """
        C{map --background} submits one job per non-blank line and writes
        their ids in input order; each job then ends with its line's
        result; stderr ends with the count; the exit status is 0.
        """
        lines = [json.dumps([i, 100]) for i in range(20)]
        lines.insert(5, "")
        stdin = ("\n".join(lines) + "\n").encode()
        out, err, status = yield runCLI("map", "--background", "-c", self.connect, "-n", "4", "add", "-", stdin=stdin)
        self.assertEqual(status, 0, err)
        ids = out.decode().splitlines()
        self.assertEqual(len(set(ids)), 20)
        results = yield gatherResults([self.client.job(jobId).result() for jobId in ids])
        self.assertEqual(results, [i + 100 for i in range(20)])
        self.assertRegex(err.decode().splitlines()[-1], r"^20/20 done, 0 failed, [\d.]+/s$")

    @inlineCallbacks
    def test_refusedInPlace(self) -> Any:
        """
        A submit the daemon refuses (it holds its C{maxJobs} jobs not yet
        ended, or the task is unknown) writes its error object in its
        line's place; the others' ids are written; the exit status is 1.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.writelines("[30]\n" for i in range(35))
        for _ in range(2):
            yield self.client.submitWith("add", [0, 0], delay=600)
        out, err, status = yield runCLI("map", "-b", "-c", self.connect, "-n", "1", "sleep", path)
        lines = out.decode().splitlines()
        self.assertEqual(status, 1)
        self.assertEqual(len(lines), 35)
        refused = [json.loads(line)["error"]["type"] for line in lines if line.startswith("{")]
        self.assertTrue(refused, lines)
        self.assertEqual(set(refused), {"busy"})
        self.assertEqual(len(lines) - len(refused), 28)
        out, err, status = yield runCLI("map", "-b", "-c", self.connect, "nope", "-", stdin=b"[1]\n")
        self.assertEqual((json.loads(out)["error"]["type"], status), ("unknown_task", 1))

    @inlineCallbacks
    def test_interrupted(self) -> Any:
        """
        Ctrl-C sends no more submits; the ids of the jobs already queued
        are written (every one of them is known to the daemon), and stderr
        says how many were queued and not sent.
        """
        stdin = b"".join(b"[0.05]\n" for _ in range(2000))
        proto, process = spawnCLI("map", "-b", "-c", self.connect, "-n", "1", "sleep", "-", stdin=stdin)
        yield waitFor(lambda: proto.out.count(b"\n") >= 3, "a few ids")
        process.signalProcess(signal.SIGINT)
        out, err, status = yield proto.ended
        ids = out.decode().splitlines()
        self.assertLess(len(ids), 2000)
        self.assertRegex(
            err.decode().splitlines()[-1],
            rf"^taskd: interrupted \(SIGINT\): {len(ids)} of 2000 jobs queued \(0 refused\), "
            rf"{2000 - len(ids)} not sent; {len(ids)} lines written; the queued jobs go on$",
        )
        statuses = yield gatherResults([self.client.job(jobId).status() for jobId in ids])
        self.assertEqual([s.job for s in statuses], ids)
        yield self.assertFailure(self.client.job("not-a-job").status(), errors.UnknownJob)
