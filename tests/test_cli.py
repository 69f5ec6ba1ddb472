"""
Tests for C{python -m taskd}, run as subprocesses against a daemon on
127.0.0.1, and for its progress display.
"""

from __future__ import annotations

import io
import json
import re
import os
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

import taskd
from taskd.cli.progress import Progress
from taskd.pool import ProcessPool
from taskd.server import TaskServerFactory

from tests.test_server import Collector
from tests.test_tap import ROOT, TwistdMixin


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
        self.endedAt = time.monotonic()
        # The status as a shell reports it: 128 + N for death by signal N.
        status = reason.value.exitCode
        if status is None:
            status = 128 + reason.value.signal
        self.ended.callback((self.out, self.err, status))


def spawnCLI(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> tuple[_Run, Any]:
    """
    Start C{python -m taskd ARGS} as a user would (from the repository
    root, this checkout first on the path).

    @return: its protocol (C{ended} fires with (stdout, stderr, status as a
        shell reports it)) and its process transport.
    """
    proto = _Run(stdin)
    base = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    base.pop("TASKD_CONNECT", None)
    base.pop("TASKD_TOKEN", None)
    env = {**base, **(env or {})}
    process = reactor.spawnProcess(proto, sys.executable, [sys.executable, "-m", "taskd", *args], env=env, path=ROOT)
    return proto, process


def runCLI(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> Deferred[tuple[bytes, bytes, int]]:
    return spawnCLI(*args, stdin=stdin, env=env)[0].ended


@inlineCallbacks
def daemonStats(port: int) -> Any:
    """
    Ask the daemon on C{port} for its stats over a connection of our own.
    """
    collector = Collector(1)
    proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: collector))
    proto.transport.write(b'{"type":"stats"}\n')
    (reply,) = yield collector.done
    proto.transport.loseConnection()
    return reply


@inlineCallbacks
def waitForStats(port: int, check: Any, within: float) -> Any:
    """
    Poll the daemon's stats until C{check(stats)} holds.

    @return: the time it took, or fail the test after C{within} seconds.
    """
    start = time.monotonic()
    while True:
        stats = yield daemonStats(port)
        if check(stats):
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"still {stats} after {within} s")
        yield deferLater(reactor, 0.02, lambda: None)


class CLITests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        # The parent's registry holds only what the workers load: other
        # test modules may have filled the default one in this process.
        import taskd.examples
        from taskd.registry import Registry, registry as everything

        examples = Registry()
        for name in everything:
            function = everything.get(name)
            if function is not None and function.__module__ == taskd.examples.__name__:
                examples.register(function, name)
        pool = ProcessPool(reactor, tasks=["taskd.examples"], workers=2, killGrace=1.0, registry=examples)
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
        self.assertEqual(
            err,
            b"taskd: ARGS '[1,': not JSON: Expecting value: line 1 column 4 (char 3) (see python -m taskd call --help)\n",
        )
        out, err, status = yield runCLI("map", "-c", self.connect, "add", "-", stdin=b"[1, 2]\n\nnope\n")
        self.assertEqual((out, status), (b"", 2))
        self.assertEqual(
            err, b"taskd: stdin line 3 is not JSON: Expecting value: line 1 column 1 (char 0); nothing was sent\n"
        )

    @inlineCallbacks
    def test_badOptions(self) -> Any:
        """
        Each bad option value, endpoint string or file gets one line naming
        the option, the value and what would be valid, and exit status 2;
        no usage text, no traceback.
        """
        for args, message in [
            (["map", "-n", "0", "add", "-"], "--concurrency '0': must be a whole number of at least 1 (see python -m taskd map --help)"),
            (["call", "--timeout", "soon", "add"], "--timeout 'soon': must be a number of seconds above 0 (see python -m taskd call --help)"),
            (["call", "-c", "bogus:1", "add"], "--connect 'bogus:1': unknown endpoint type 'bogus'; use tcp:HOST:PORT, tls:HOST:PORT or unix:PATH"),
            (["stats", "--token-file", "/nonexistent"], "--token-file '/nonexistent': cannot read it: No such file or directory"),
            (["map", "add", "/nonexistent"], "FILE '/nonexistent': cannot read it: No such file or directory"),
        ]:
            out, err, status = yield runCLI(*args)
            self.assertEqual((out, err.decode(), status), (b"", f"taskd: {message}\n", 2), args)
        out, err, status = yield runCLI("frobnicate")
        self.assertEqual((out, status, err.count(b"\n")), (b"", 2, 1))
        self.assertTrue(err.startswith(b"taskd: COMMAND invalid choice: 'frobnicate' (choose from "), err)

    @inlineCallbacks
    def test_version(self) -> Any:
        """
        C{--version} prints taskd's version, the one the package metadata
        holds.
        """
        from importlib.metadata import version

        out, err, status = yield runCLI("--version")
        self.assertEqual((out, err, status), (f"taskd {taskd.__version__}\n".encode(), b"", 0))
        self.assertEqual(taskd.__version__, version("taskd"))

    @inlineCallbacks
    def test_hello(self) -> Any:
        """
        C{hello} shows what the daemon is: its version, protocol, tasks and
        limits; with C{--json}, the daemon's hello reply.
        """
        out, err, status = yield runCLI("hello", "-c", self.connect)
        self.assertEqual((err, status), (b"", 0))
        self.assertEqual(
            out.decode(),
            f"taskd {taskd.__version__} at {self.connect}\n"
            "protocol version: 1\n"
            "tasks: add, burn, crash, echo, fail, pid, sleep, steps\n"
            "longest request line: 1048576 bytes\n"
            "requests in flight per connection: 100\n",
        )
        out, err, status = yield runCLI("hello", "--json", "-c", self.connect)
        self.assertEqual(
            json.loads(out),
            {"version": 1, "server": "taskd", "serverVersion": taskd.__version__,
             "tasks": ["add", "burn", "crash", "echo", "fail", "pid", "sleep", "steps"],
             "maxLineLength": 1048576, "maxInFlight": 100, "taskLimits": {}},
        )

    @inlineCallbacks
    def test_stats(self) -> Any:
        """
        C{stats} shows the daemon's counters, one per line, or as JSON; the
        CLI's own connection is counted.
        """
        out, err, status = yield runCLI("stats", "-c", self.connect)
        counters, traffic = out.split(b"bytesReceived: ")
        self.assertEqual(
            (counters, err, status),
            (b"workers: 2\nidle: 2\nbusy: 0\nqueued: 0\nprocesses: 2\nmemoryRecycled: 0\nqueuedByPriority: none\nqueuedByTask: none\nretrying: 0\nconnections: 1\n", b"", 0),
        )
        received, sent, dropped = re.fullmatch(
            rb"(\d+)\nbytesSent: (\d+)\nprogressDropped: (\d+)\n", traffic
        ).groups()  # type: ignore[union-attr]
        out, err, status = yield runCLI("stats", "--json", "-c", self.connect)
        stats = json.loads(out)
        # The bytes of this connection's hello and stats request are counted
        # with the first run's.
        self.assertGreater(stats.pop("bytesReceived"), int(received))
        self.assertGreater(stats.pop("bytesSent"), int(sent))
        self.assertEqual(stats.pop("progressDropped"), int(dropped))
        self.assertEqual(
            stats,
            {"workers": 2, "idle": 2, "busy": 0, "queued": 0, "processes": 2, "memoryRecycled": 0, "queuedByPriority": {}, "queuedByTask": {}, "retrying": 0, "connections": 1},
        )

    @inlineCallbacks
    def test_tasks(self) -> Any:
        """
        C{tasks} lists each task with its signature and the first line of
        its docstring; with C{--json}, the daemon's list.
        """
        out, err, status = yield runCLI("tasks", "-c", self.connect)
        self.assertEqual((err, status), (b"", 0))
        lines = out.decode().splitlines()
        self.assertEqual(lines[:2], ["add(a: float, b: float) -> float", "    Return C{a + b}."])
        self.assertIn("steps(n: int, pause: float = 0.1) -> int", lines)
        self.assertEqual(len(lines), 16)
        out, err, status = yield runCLI("tasks", "--json", "-c", self.connect)
        tasks = json.loads(out)
        self.assertEqual([t["name"] for t in tasks], ["add", "burn", "crash", "echo", "fail", "pid", "sleep", "steps"])
        self.assertEqual(tasks[6], {"name": "sleep", "signature": "(seconds: float) -> float",
                                    "doc": "Block for C{seconds}, then return it.  Stands for blocking I/O."})

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


class InterruptTests(TwistdMixin, TestCase):
    """
    Ctrl-C (SIGINT) and SIGTERM on C{call} and C{map}, sent to a real CLI
    process talking to a real C{twistd taskd}.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        self.daemon = self.spawn("--listen", "tcp:0:interface=127.0.0.1", "--workers", "2")
        self.daemonProcess = self.process
        m = yield self.daemon.waitFor(rb"starting on (\d+)")
        yield self.daemon.waitFor(rb"pool ready: 2 workers")
        self.port = int(m.group(1))
        self.connect = f"tcp:127.0.0.1:{self.port}"

    def stopCLIAtCleanup(self, proto: _Run, process: Any) -> None:
        def stop() -> Any:
            if not proto.ended.called:
                process.signalProcess("KILL")
                return proto.ended
            return None

        self.addCleanup(stop)

    @inlineCallbacks
    def test_callCtrlC(self) -> Any:
        """
        Ctrl-C on a running C{call}: the call is cancelled on the daemon
        (no busy worker within 1 s of the CLI's exit), nothing is printed
        on stdout, one line on stderr says so, and the CLI ends by SIGINT
        (status 130).
        """
        proto, process = spawnCLI("call", "-c", self.connect, "sleep", "[30]")
        self.stopCLIAtCleanup(proto, process)
        yield waitForStats(self.port, lambda s: s["busy"] == 1, within=20)
        process.signalProcess("INT")
        out, err, status = yield proto.ended
        self.assertEqual(
            (out, err, status), (b"", b"taskd: interrupted (SIGINT): the call was cancelled on the daemon\n", 130)
        )
        yield waitForStats(self.port, lambda s: s["busy"] == 0 and s["queued"] == 0, within=1.0)

    @inlineCallbacks
    def test_mapCtrlC(self) -> Any:
        """
        Ctrl-C on C{map}: the calls in flight are cancelled on the daemon,
        no more are sent, and the output holds, line for line, the real
        results up to the last call that finished, with a call cancelled
        before it marked C{interrupted}; stderr ends with a one-line
        summary; the CLI ends by SIGINT.
        """
        # The first call runs long; the others finish behind it.
        lines = [b"[30]"] + [b"[0.1]"] * 39
        proto, process = spawnCLI("map", "-c", self.connect, "-n", "3", "sleep", "-", stdin=b"\n".join(lines) + b"\n")
        self.stopCLIAtCleanup(proto, process)
        yield waitForStats(self.port, lambda s: s["busy"] == 2, within=20)
        yield deferLater(reactor, 1.0, lambda: None)
        process.signalProcess("INT")
        out, err, status = yield proto.ended
        endedAt = proto.endedAt
        yield waitForStats(self.port, lambda s: s["busy"] == 0 and s["queued"] == 0, within=1.0)
        self.assertLess(time.monotonic() - endedAt, 1.5)
        self.assertEqual(status, 130)
        results = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(
            results[0], {"error": {"type": "interrupted", "message": "cancelled on SIGINT before it finished"}}
        )
        done = len(results) - 1
        self.assertGreaterEqual(done, 3)
        self.assertEqual(results[1:], [0.1] * done)
        summary = err.decode().splitlines()[-1]
        self.assertRegex(
            summary,
            rf"^taskd: interrupted \(SIGINT\): {done} of 40 calls done \(0 failed\), "
            rf"[1-3] cancelled on the daemon, \d+ not sent; {len(results)} lines written$",
        )

    @inlineCallbacks
    def test_mapSIGTERM(self) -> Any:
        """
        SIGTERM does the same, and the CLI ends by SIGTERM (status 143);
        with nothing finished, nothing is written.
        """
        proto, process = spawnCLI("map", "-c", self.connect, "-n", "4", "sleep", "-", stdin=b"[30]\n" * 40)
        self.stopCLIAtCleanup(proto, process)
        yield waitForStats(self.port, lambda s: s["busy"] == 2 and s["queued"] == 2, within=20)
        process.signalProcess("TERM")
        out, err, status = yield proto.ended
        yield waitForStats(self.port, lambda s: s["busy"] == 0 and s["queued"] == 0, within=1.0)
        self.assertEqual((out, status), (b"", 143))
        self.assertEqual(
            err.decode().splitlines()[-1],
            "taskd: interrupted (SIGTERM): 0 of 40 calls done (0 failed), 4 cancelled on the daemon, 36 not sent; 0 lines written",
        )

    @inlineCallbacks
    def test_secondCtrlC(self) -> Any:
        """
        The first Ctrl-C waits (up to 5 s) for the cancels to be written;
        a second one exits at once, resetting the connection (which a
        daemon takes as "cancel everything").  Here the peer answers the
        hello, then stops reading, so that C{map}'s large calls fill the
        socket buffers and the cancels cannot be written.
        """
        peer = _StopsReading()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(lambda: peer))
        self.addCleanup(port.stopListening)
        line = json.dumps(["x" * 900_000]).encode() + b"\n"
        proto, process = spawnCLI(
            "map", "-c", f"tcp:127.0.0.1:{port.getHost().port}", "-n", "50", "echo", "-", stdin=line * 60
        )
        self.stopCLIAtCleanup(proto, process)
        yield peer.greeted
        yield deferLater(reactor, 1.0, lambda: None)
        process.signalProcess("INT")
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(proto.ended.called, "the first Ctrl-C waits for the cancels to be written")
        # Two SIGINTs that arrive before Python runs its handler are one:
        # on a loaded machine the first may not have been handled yet, so
        # Ctrl-C is pressed again until the process ends.
        sent = time.monotonic()
        for _ in range(20):
            if proto.ended.called:
                break
            process.signalProcess("INT")
            yield deferLater(reactor, 0.2, lambda: None)
        out, err, status = yield proto.ended
        # Well before the first Ctrl-C's 5 s are over.
        self.assertLess(proto.endedAt - sent, 3.0)
        self.assertEqual((out, status), (b"", 130))
        self.assertEqual(err.decode().splitlines()[-1], "taskd: SIGINT again: exiting at once")
        peer.transport.resumeProducing()
        lost = yield peer.lost
        self.assertIsInstance(lost, ConnectionLost)  # a reset, not a clean close


class _StopsReading(Protocol):
    """
    A peer that answers the hello as a daemon would, then reads nothing.
    """

    def __init__(self) -> None:
        self.greeted: Deferred[None] = Deferred()
        self.lost: Deferred[Any] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.greeted.called:
            self.transport.write(b'{"type":"hello","version":1,"server":"taskd"}\n')
            self.transport.pauseProducing()
            self.greeted.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(reason.value)


class StatsTextTests(SynchronousTestCase):
    def test_breakdowns(self) -> None:
        """
        C{stats} shows a breakdown (calls queued by priority or by task) as
        C{key: count} pairs for people, C{none} when empty.
        """
        from taskd.cli.inspecting import _shown

        self.assertEqual(_shown({"5": 1, "0": 3}), "5: 1, 0: 3")
        self.assertEqual(_shown({}), "none")
        self.assertEqual(_shown(7), "7")


class LostDaemonTests(TestCase):
    @inlineCallbacks
    def test_mapWhenTheConnectionGoes(self) -> Any:
        """
        A daemon that goes away during a long C{map}: the calls not sent
        fail at once (C{connection_lost}) and every input line still gets
        its output line, in order; nothing recurses once per line.
        """
        from twisted.protocols.basic import LineReceiver

        class Vanishing(LineReceiver):
            delimiter = b"\n"
            calls = 0

            def lineReceived(self, line: bytes) -> None:
                request = json.loads(line)
                if request.get("type") == "hello":
                    self.sendLine(b'{"type":"hello","version":1,"maxLineLength":1048576}')
                    return
                self.calls += 1
                if self.calls == 3:
                    self.transport.loseConnection()

        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Vanishing))
        self.addCleanup(port.stopListening)
        lines = b"".join(b"[%d, 1]\n" % i for i in range(3000))
        out, err, status = yield runCLI("map", "add", "-", "-n", "4", "-c", f"tcp:127.0.0.1:{port.getHost().port}", stdin=lines)
        records = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(len(records), 3000)
        self.assertEqual({r["error"]["type"] for r in records}, {"connection_lost"})
        self.assertNotIn(b"RecursionError", err)
        self.assertEqual(status, 1)
