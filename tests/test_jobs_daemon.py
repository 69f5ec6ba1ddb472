"""
Background jobs against real C{twistd taskd} daemons: a crash (C{kill -9}
of the daemon) with jobs running, queued and scheduled, and a restart on
the same journal.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections import Counter
from typing import Any

from twisted.internet.defer import inlineCallbacks

from tests.test_pool import waitFor
from tests.test_reliability import DaemonTestCase, report
from tests.test_tap import ROOT


def submit(n: int, function: str, path: str, tag: str, hold: str | None = None, **extra: Any) -> bytes:
    return json.dumps(
        {"type": "submit", "function": function, "args": [path, tag, hold], "id": n, **extra}
    ).encode()


class CrashTests(DaemonTestCase):
    timeout = 180

    @inlineCallbacks
    def test_killNineAndRestart(self) -> Any:
        """
        Jobs submitted (two running, thousands queued, some scheduled);
        C{kill -9} of the daemon; a restart on the same journal: every job
        reaches exactly one final state; the queued and scheduled ones ran
        once; the running one whose task does not opt into retries ran
        once and is C{interrupted}; the one whose task does ran again, to
        C{done}; the journal holds no more than C{--max-jobs}.
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        runs, hold, journal = (os.path.join(work, name) for name in ("runs", "release", "journal.sqlite"))
        # The full scenario: 10,000 jobs (~30 s on 2 loaded cores);
        # TASKD_CRASH_JOBS=N runs another size.
        total = int(os.environ.get("TASKD_CRASH_JOBS", "10000"))
        scheduled = 200
        queued, maxJobs = total - 2 - scheduled, max(5000, total + 1000)
        options = ("--journal", journal, "--max-jobs", str(maxJobs))
        yield self.startDaemon(*options)
        lines = [
            submit(0, "recordRun", runs, "plain", hold),
            submit(1, "recordRunSafely", runs, "safe", hold),
        ]
        lines += [submit(2 + n, "recordRun", runs, f"q{n}") for n in range(queued)]
        lines += [
            submit(2 + queued + n, "recordRun", runs, f"s{n}", delay=0.5 + n / scheduled)
            for n in range(scheduled)
        ]
        started = time.monotonic()
        accepted = yield self.pipeline(lines, inFlight=1000)
        submitSeconds = time.monotonic() - started
        jobs = {}
        for n in range(len(lines)):
            (reply,) = accepted.replies[n]
            self.assertEqual(reply["type"], "accepted", reply)
            jobs[n] = reply["job"]
        self.assertEqual(len(set(jobs.values())), len(lines))

        def bothRunning() -> bool:
            try:
                with open(runs) as f:
                    return {"plain", "safe"} <= set(f.read().split())
            except FileNotFoundError:
                return False

        yield waitFor(bothRunning, "the two held jobs to run")
        os.kill(self.daemonProcess.pid, signal.SIGKILL)
        yield self.daemon.ended
        with open(hold, "w"):
            pass  # the re-run of the safe job may end
        restarted = time.monotonic()
        yield self.startDaemon(*options)
        waits = [json.dumps({"type": "wait", "job": job, "id": n}).encode() for n, job in jobs.items()]
        waited = yield self.pipeline(waits, inFlight=1000)
        allDone = time.monotonic() - restarted
        finals = {n: waited.replies[n] for n in jobs}
        self.assertEqual({n: len(r) for n, r in finals.items() if len(r) != 1}, {})
        self.assertEqual(finals[0][0]["error"]["type"], "interrupted")
        self.assertEqual(finals[1][0], {"type": "result", "id": 1, "result": "safe"})
        self.assertEqual(
            [n for n in range(2, len(lines)) if finals[n][0].get("type") != "result"], []
        )
        with open(runs) as f:
            counts = Counter(f.read().split())
        self.assertEqual(counts.pop("plain"), 1)
        self.assertEqual(counts.pop("safe"), 2)
        self.assertEqual(set(counts.values()), {1})
        self.assertEqual(len(counts), queued + scheduled)
        states = yield self.pipeline([json.dumps({"type": "job", "job": jobs[n], "id": n}).encode() for n in (0, 1, 2)])
        self.assertEqual([states.replies[n][0]["state"] for n in (0, 1, 2)], ["interrupted", "done", "done"])
        self.daemonProcess.signalProcess("TERM")
        yield self.daemon.ended
        db = sqlite3.connect(journal)
        self.addCleanup(db.close)
        rows = db.execute("SELECT count(*), sum(finished IS NULL) FROM jobs").fetchone()
        self.assertEqual(rows, (len(lines), 0))
        self.assertLessEqual(rows[0], maxJobs)
        self.assertNothingUnhandled()
        report(
            "jobs: kill -9 and restart",
            jobs=len(lines),
            submit_seconds=round(submitSeconds, 2),
            restart_to_all_ended_seconds=round(allDone, 2),
            journal_bytes=os.path.getsize(journal),
        )


class NotStartedTests(DaemonTestCase):
    timeout = 120

    @inlineCallbacks
    def test_jobBehindCallsRunsAfterACrash(self) -> Any:
        """
        A job the pool could not send to a worker (both busy: one with a
        job, one with a call, and a call queued) waits in the journal as
        C{queued}, not in the pool's queue as C{running}: after C{kill -9}
        and a restart it runs, once; the job a worker had ends
        C{interrupted}, having run once.
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        runs, hold, journal = (os.path.join(work, name) for name in ("runs", "release", "journal.sqlite"))
        yield self.startDaemon("--journal", journal)

        def ran() -> list[str]:
            try:
                with open(runs) as f:
                    return f.read().split()
            except FileNotFoundError:
                return []

        sent = yield self.pipeline([submit(1, "recordRun", runs, "sent", hold)])
        sentJob = sent.replies[1][0]["job"]
        yield waitFor(lambda: "sent" in ran(), "the first job to run")
        call = lambda n, tag: json.dumps(  # noqa: E731
            {"function": "recordRun", "args": [runs, tag, hold], "id": n}
        ).encode()
        calls = self.pipeline([call(2, "call1"), call(3, "call2")])
        calls.addErrback(lambda _: None)  # cut by the kill
        yield waitFor(lambda: "call1" in ran(), "a call to hold the other worker")
        waiting = yield self.pipeline([submit(4, "recordRun", runs, "waiting")])
        waitingJob = waiting.replies[4][0]["job"]
        yield waitFor(lambda: b"jobs wait in the journal" in self.daemon.output, "the job to be taken back")
        status = yield self.pipeline([json.dumps({"type": "job", "job": waitingJob, "id": 5}).encode()])
        self.assertEqual(status.replies[5][0]["state"], "queued")
        os.kill(self.daemonProcess.pid, signal.SIGKILL)
        yield self.daemon.ended
        with open(hold, "w"):
            pass
        yield self.startDaemon("--journal", journal)
        waits = [json.dumps({"type": "wait", "job": job, "id": n}).encode() for n, job in ((1, sentJob), (4, waitingJob))]
        waited = yield self.pipeline(waits)
        self.assertEqual(waited.replies[1][0]["error"]["type"], "interrupted")
        self.assertEqual(waited.replies[4][0], {"type": "result", "id": 4, "result": "waiting"})
        counts = Counter(ran())
        self.assertEqual((counts["sent"], counts["waiting"], counts["call1"], counts["call2"]), (1, 1, 1, 0))
        self.assertNothingUnhandled()


class JournalOptionTests(DaemonTestCase):
    @inlineCallbacks
    def test_oneDaemonPerJournal(self) -> Any:
        """
        A second daemon given a journal in use exits with status 1 and a
        line saying so; the first serves on.
        """
        journal = os.path.abspath(self.mktemp())
        yield self.startDaemon("--journal", journal)
        first = self.daemonProcess
        second = self.spawn("--listen", "tcp:0:interface=127.0.0.1", "--workers", "1", "--journal", journal)
        status = yield second.ended
        self.assertEqual(status, (1, None))
        self.assertIn(
            f"the journal {journal!r} is in use by another daemon (give each daemon a journal of its own with --journal)".encode(),
            second.output,
        )
        self.daemonProcess = first
        check = yield self.pipeline([b'{"type":"submit","function":"add","args":[1,2],"id":1}'])
        self.assertEqual(check.replies[1][0]["type"], "accepted")

    @inlineCallbacks
    def test_inMemory(self) -> Any:
        """
        With C{--journal :memory:} jobs work, and no file is written.
        """
        default = os.path.join(ROOT, "taskd-journal.sqlite")
        self.assertFalse(os.path.exists(default))
        yield self.startDaemon("--journal", ":memory:")
        replies = yield self.pipeline([b'{"type":"submit","function":"add","args":[1,2],"id":1}'])
        job = replies.replies[1][0]["job"]
        waited = yield self.pipeline([json.dumps({"type": "wait", "job": job, "id": 2}).encode()])
        self.assertEqual(waited.replies[2][0]["result"], 3)
        self.assertFalse(os.path.exists(default))
