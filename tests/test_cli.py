"""
Tests for C{python -m taskd}, run as subprocesses against a daemon on
127.0.0.1, and for its progress display.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from taskd.cli import Progress
from taskd.pool import ProcessPool
from taskd.server import TaskServerFactory

from tests.test_tap import ROOT


class _Run(ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.ended: Deferred[tuple[bytes, bytes, int]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback((self.out, self.err, reason.value.exitCode))


def runCLI(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> Deferred[tuple[bytes, bytes, int]]:
    proto = _Run(stdin)
    base = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    base.pop("TASKD_CONNECT", None)
    base.pop("TASKD_TOKEN", None)
    env = {**base, **(env or {})}
    reactor.spawnProcess(proto, sys.executable, [sys.executable, "-m", "taskd", *args], env=env, path=ROOT)
    return proto.ended


class CLITests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        pool = ProcessPool(reactor, tasks=["taskd.examples"], workers=2, killGrace=1.0)
        yield pool.start()
        self.addCleanup(pool.stop)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(TaskServerFactory(pool))
        self.addCleanup(port.stopListening)
        self.connect = f"tcp:127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def test_call(self) -> Any:
        """
        C{call} prints the result as JSON and exits 0; arguments may be an
        array or an object.
        """
        out, err, status = yield runCLI("call", "-c", self.connect, "add", "[1, 2]")
        self.assertEqual((out, err, status), (b"3\n", b"", 0))
        out, err, status = yield runCLI("call", "-c", self.connect, "echo", '{"value": {"a": [1]}}')
        self.assertEqual((json.loads(out), status), ({"a": [1]}, 0))

    @inlineCallbacks
    def test_callProgress(self) -> Any:
        """
        With C{--progress}, the task's reports go to stderr as they come,
        the result to stdout.
        """
        out, err, status = yield runCLI("call", "-c", self.connect, "--progress", "steps", "[2, 0.01]")
        self.assertEqual(
            (out, err, status),
            (b"2\n", b'progress: {"done": 1, "of": 2}\nprogress: {"done": 2, "of": 2}\n', 0),
        )

    @inlineCallbacks
    def test_callErrors(self) -> Any:
        """
        A failed call prints the error type and message (and a task's
        remote traceback) on stderr and exits 1.
        """
        out, err, status = yield runCLI("call", "-c", self.connect, "fail", '["no luck"]')
        self.assertEqual((out, status), (b"", 1))
        self.assertTrue(err.startswith(b"taskd: task_failed: ValueError: no luck\nTraceback"))
        out, err, status = yield runCLI("call", "-c", self.connect, "--timeout", "0.2", "sleep", "[5]")
        self.assertEqual((err, status), (b"taskd: timeout: task 'sleep' did not finish within 0.2 seconds\n", 1))
        out, err, status = yield runCLI("call", "-c", self.connect, "os.system")
        self.assertEqual((err, status), (b"taskd: unknown_task: no task named 'os.system'\n", 1))

    @inlineCallbacks
    def test_unreachableAndUsage(self) -> Any:
        """
        An unreachable daemon exits 3; bad arguments exit 2.
        """
        out, err, status = yield runCLI("call", "-c", "tcp:127.0.0.1:1", "add", "[1, 2]")
        self.assertEqual(status, 3)
        self.assertIn(b"taskd: cannot connect to tcp:127.0.0.1:1", err)
        out, err, status = yield runCLI("call", "-c", self.connect, "add", "[1,")
        self.assertEqual(status, 2)
        self.assertIn(b"argument args: not JSON", err)
        out, err, status = yield runCLI("map", "-c", self.connect, "add", "-", stdin=b"[1, 2]\nnope\n")
        self.assertEqual(status, 2)
        self.assertIn(b"input is not JSON lines", err)

    @inlineCallbacks
    def test_help(self) -> Any:
        """
        Each command has C{--help}.
        """
        for args in (["--help"], ["call", "--help"], ["map", "--help"]):
            out, err, status = yield runCLI(*args)
            self.assertEqual(status, 0)
            self.assertIn(b"usage: python -m taskd", out)

    @inlineCallbacks
    def test_map(self) -> Any:
        """
        C{map} runs one call per input line and writes the results in
        input order, failures in place as error objects; it exits 1 if any
        call failed and ends stderr with a summary.
        """
        lines = [json.dumps([i, 1]) for i in range(40)]
        lines[7] = json.dumps([7])  # add() missing an argument
        lines.insert(3, "")  # blank lines are skipped
        stdin = ("\n".join(lines) + "\n").encode()
        out, err, status = yield runCLI("map", "-c", self.connect, "-n", "5", "add", "-", stdin=stdin)
        results = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(len(results), 40)
        self.assertEqual(results[7]["error"]["type"], "task_failed")
        self.assertEqual(results[:7] + results[8:], [i + 1 for i in range(40) if i != 7])
        self.assertEqual(status, 1)
        self.assertRegex(err.decode().splitlines()[-1], r"^40/40 done, 1 failed, [\d.]+/s$")

    @inlineCallbacks
    def test_mapFile(self) -> Any:
        """
        C{map} reads a file, and exits 0 when every call succeeded.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('{"value": "a"}\n"b"\n[["c"]]\n')
        out, err, status = yield runCLI("map", "-c", self.connect, "echo", path)
        self.assertEqual((out, status), (b'"a"\n"b"\n["c"]\n', 0))


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class ProgressTests(SynchronousTestCase):
    def test_bar(self) -> None:
        """
        On a terminal the bar shows count, percentage, rate, ETA and
        failures, redrawn in place at most every 0.1 s.
        """
        now = [100.0]
        stream = FakeTTY()
        progress = Progress(200, stream, clock=lambda: now[0])
        now[0] = 102.0
        progress.done, progress.failed = 50, 2
        progress.update()
        self.assertEqual(stream.getvalue(), "\r[#######-----------------------] 50/200  25%     25.0/s  ETA 0:06  failed 2")
        progress.done = 51
        progress.update()
        self.assertEqual(stream.getvalue().count("\r"), 1)
        now[0] = 108.0
        progress.done = 200
        progress.update(final=True)
        self.assertTrue(stream.getvalue().endswith("\r[##############################] 200/200 100%     25.0/s  ETA 0:00  failed 2\n"))

    def test_plain(self) -> None:
        """
        Elsewhere a plain count is printed every 2 seconds, and at the end.
        """
        now = [0.0]
        stream = io.StringIO()
        progress = Progress(10, stream, clock=lambda: now[0])
        progress.done = 1
        progress.update()
        now[0] = 2.0
        progress.done = 4
        progress.update()
        now[0] = 2.5
        progress.done = 10
        progress.update(final=True)
        self.assertEqual(stream.getvalue(), "4/10 done, 0 failed, 2.0/s\n10/10 done, 0 failed, 4.0/s\n")
