"""
Containment, against real C{twistd taskd} daemons: whatever a task starts
ends with its call's worker and with the daemon; signals from every path
stop the daemon gracefully; a worker that writes garbage to its protocol
pipe cannot corrupt the client stream; a worker over its memory limit is
replaced.  Each scenario prints a C{RELIABILITY ...} line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from tests.test_pool import alive, waitFor
from tests.test_reliability import DaemonTestCase, Pipeline, report, running
from tests.test_tap import ROOT, Twistd

KILL_GRACE = 1.0


def pause(seconds: float) -> Any:
    return deferLater(reactor, seconds, lambda: None)


class ChildProcessTests(DaemonTestCase):
    """
    A task that starts a 60-second child process (holding the worker's
    stdout and stderr, or a forked copy of the worker holding its pipes
    too), then its call ends in each way a call can end.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    @inlineCallbacks
    def childPid(self) -> Any:
        path = os.path.join(self.directory, "child.pid")
        yield waitFor(lambda: os.path.exists(path), "the task's child to start")
        with open(path) as f:
            pid = int(f.read())
        os.unlink(path)
        self.addCleanup(lambda: alive(pid) and os.kill(pid, signal.SIGKILL))
        return pid

    @inlineCallbacks
    def scenario(self, name: str, request: dict[str, Any], expected: str, cancelAfterStart: bool = False, **options: Any) -> Any:
        """
        Send C{request} (a call to C{leaveChild}), and check: the reply is
        C{expected} within its limit + kill grace + 1 s; the child is gone
        within kill grace + 1 s of the reply; the slot is replaced and
        serves a call.
        """
        request = {"function": "leaveChild", "id": 1, **request}
        request.setdefault("args", {})["directory"] = os.path.abspath(self.directory)
        started = time.monotonic()
        pipeline = self.pipeline([json.dumps(request).encode()])
        child = yield self.childPid()
        if cancelAfterStart:
            self._pipelines[-1].transport.write(b'{"type":"cancel","id":1}\n')
        proto = yield pipeline
        answered = time.monotonic() - started
        [reply] = proto.replies[1]
        got = reply.get("error", {}).get("type", reply["type"])
        self.assertEqual(got, expected, reply)
        answeredAt = time.monotonic()
        yield waitFor(lambda: not running(child), f"the child {child} to end", tries=int((KILL_GRACE + 1) / 0.025))
        childGone = time.monotonic() - answeredAt
        yield waitFor(lambda: len(self.workerPids()[0]) == self.workersTotal, "the slot to be replaced")
        check = yield self.pipeline([b'{"function":"add","args":[2,3],"id":2}'])
        self.assertEqual(check.replies[2][0]["result"], 5)
        report(
            f"child of a task, {name}",
            reply=got,
            answered=f"{answered:.2f}s",
            childGoneAfterReply=f"{childGone:.2f}s",
            slotReplaced="yes",
        )
        return answered

    @inlineCallbacks
    def test_crash(self) -> Any:
        """
        The worker crashes after starting the child: C{worker_crashed} at
        once (the child holding its stdout does not delay it), the child is
        ended, the slot replaced.
        """
        yield self.startDaemon()
        answered = yield self.scenario("crash", {"args": {"then": "crash"}}, "worker_crashed")
        self.assertLess(answered, KILL_GRACE + 1)

    @inlineCallbacks
    def test_crashAfterFork(self) -> Any:
        """
        The same with a forked child, which holds copies of the worker's
        reply pipe as well.
        """
        yield self.startDaemon()
        answered = yield self.scenario("crash after fork", {"args": {"then": "crash", "fork": True}}, "worker_crashed")
        self.assertLess(answered, KILL_GRACE + 1)

    @inlineCallbacks
    def test_timeout(self) -> Any:
        """
        The call times out: C{timeout} within its limit + kill grace + 1 s;
        a child that ignores SIGTERM is killed after the kill grace.
        """
        yield self.startDaemon()
        answered = yield self.scenario(
            "timeout, child ignoring SIGTERM",
            {"args": {"then": "hang", "stubborn": True}, "timeout": 1},
            "timeout",
        )
        self.assertLess(answered, 1 + KILL_GRACE + 1)

    @inlineCallbacks
    def test_cancel(self) -> Any:
        """
        The call is cancelled: C{cancelled}, the child ended.
        """
        yield self.startDaemon()
        yield self.scenario("cancel", {"args": {"then": "hang"}}, "cancelled", cancelAfterStart=True)

    @inlineCallbacks
    def test_recycled(self) -> Any:
        """
        The call returns and its worker is recycled (C{--max-tasks-per-
        worker 1}): the child it left is ended with the worker.
        """
        yield self.startDaemon("--max-tasks-per-worker", "1")
        yield self.scenario("recycled worker", {"args": {"then": "return"}}, "result")

    @inlineCallbacks
    def test_runningAtSIGTERM(self) -> Any:
        """
        The daemon gets SIGTERM while the call runs: the call is answered
        C{stopping} after the grace period, the daemon exits within grace +
        kill grace + 1 s, and no process of the tree is left.
        """
        daemon = yield self.startDaemon("--grace", "1")
        request = {"function": "leaveChild", "id": 1, "args": {"directory": os.path.abspath(self.directory), "then": "hang", "fork": True}}
        pipeline = self.pipeline([json.dumps(request).encode()])
        child = yield self.childPid()
        workers = self.workerPids()[1]
        started = time.monotonic()
        self.daemonProcess.signalProcess("TERM")
        proto = yield pipeline
        status = yield daemon.ended
        stopped = time.monotonic() - started
        self.assertEqual(proto.replies[1][0]["error"]["type"], "stopping")
        self.assertEqual(status, (None, signal.SIGTERM))
        self.assertLess(stopped, 1 + KILL_GRACE + 1)
        left = [pid for pid in workers | {child} if running(pid)]
        self.assertEqual(left, [])
        report("child of a task, daemon stopped", daemonStopped=f"{stopped:.2f}s", processesLeft=len(left))


class GroupSignalTests(DaemonTestCase):
    """
    SIGTERM reaching more than the daemon: its whole process group (a
    shell's C{kill %1}, C{timeout}), or every process of its control group
    (systemd's default C{KillMode}).
    """

    def spawnInOwnGroup(self, *args: str) -> Twistd:
        """
        Start the daemon as the leader of a process group of its own, as a
        shell does with a job.
        """
        proto = Twistd()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
        code = "import os; os.setpgid(0, 0); from twisted.scripts.twistd import run; run()"
        argv = [sys.executable, "-c", code, "-n", "--pidfile=", "taskd", *args, "--journal", ":memory:"]
        process = reactor.spawnProcess(proto, sys.executable, argv, env=env, path=ROOT)

        def cleanup() -> Any:
            if proto.ended.called:
                return None
            process.signalProcess("KILL")
            return proto.ended

        self.addCleanup(cleanup)
        self.process = process
        return proto

    @inlineCallbacks
    def startGrouped(self) -> Any:
        daemon = self.spawnInOwnGroup(
            "--listen", "tcp:0:interface=127.0.0.1", "--workers", "2", "--tasks", "taskd.examples",
            "--kill-grace", "1", "--grace", "20",
        )
        m = yield daemon.waitFor(rb"starting on (\d+)")
        yield daemon.waitFor(rb"pool ready")
        self.daemon = daemon
        self.daemonProcess = self.process
        self.port = int(m.group(1))
        self.workersTotal = 2
        self.addCleanup(self.killWorkers, daemon)
        return daemon

    @inlineCallbacks
    def runningCallsThen(self, signalThem: Any, name: str) -> Any:
        daemon = yield self.startGrouped()
        lines = [b'{"function":"sleep","args":[1.5],"id":%d}' % i for i in range(2)]
        pipeline = self.pipeline(lines)
        yield pause(0.5)  # both calls are running
        startedWorkers = self.workerPids()[1]
        signalThem()
        proto = yield pipeline
        status = yield daemon.ended
        replies = [proto.replies[i][0] for i in range(2)]
        self.assertEqual([r["type"] for r in replies], ["result", "result"], replies)
        self.assertEqual(status, (None, signal.SIGTERM))
        self.assertEqual(self.workerPids()[1], startedWorkers, "no worker was started during the stop")
        self.assertEqual([pid for pid in startedWorkers if running(pid)], [])
        report(f"SIGTERM to {name}", runningCalls=2, results=sum(r["type"] == "result" for r in replies), workersStartedDuringStop=0)

    def test_processGroup(self) -> Any:
        """
        SIGTERM to the daemon's process group: the workers are not in it;
        the daemon stops gracefully and every running call gets its result.
        """
        return self.runningCallsThen(lambda: os.killpg(self.daemonProcess.pid, signal.SIGTERM), "the process group")

    def test_everyProcess(self) -> Any:
        """
        SIGTERM to the daemon and to every worker at once, as systemd's
        default C{KillMode=control-group} sends it: each worker finishes
        its call, says goodbye and exits; no replacement is started; every
        running call gets its result.
        """

        def signalAll() -> None:
            pids = [self.daemonProcess.pid, *self.workerPids()[0]]
            for pid in pids:
                os.kill(pid, signal.SIGTERM)

        return self.runningCallsThen(signalAll, "every process of the control group")


class GarbageFrameTests(DaemonTestCase):
    @inlineCallbacks
    def test_garbageFrames(self) -> Any:
        """
        Tasks that write to the worker's reply pipe: each call is answered
        once (C{worker_protocol_error} or C{result_too_large} for noise that
        reads as a length), every reply line the client reads is one JSON
        object, the worker is replaced, and serving goes on.
        """
        yield self.startDaemon()
        kinds = ["resultNotJSON", "resultWithNewline", "errorNotJSON", "noise"]
        lines = [json.dumps({"function": "garbage", "args": [kind], "id": i}).encode() for i, kind in enumerate(kinds)]
        lines.append(b'{"function":"add","args":[1,1],"id":"after"}')
        proto = yield self.pipeline(lines, inFlight=1)
        outcomes = {kinds[i]: proto.replies[i][0]["error"]["type"] for i in range(len(kinds))}
        self.assertEqual(
            outcomes,
            {
                "resultNotJSON": "worker_protocol_error",
                "resultWithNewline": "worker_protocol_error",
                "errorNotJSON": "worker_protocol_error",
                "noise": "result_too_large",
            },
        )
        self.assertEqual([len(v) for v in proto.replies.values()], [1] * 5)
        self.assertEqual(proto.replies["after"][0]["result"], 2)
        self.assertNotIn(b"Unhandled", self.daemon.output)
        report("garbage frames", calls=len(kinds), answeredOnce="yes", replacedWorkers=len(self.workerPids()[1]) - 2)


class MemoryRecycleTests(DaemonTestCase):
    @inlineCallbacks
    def test_overTheLimit(self) -> Any:
        """
        With C{--max-worker-rss 100}, a call that leaves its worker holding
        150 MiB succeeds; the worker is then replaced, and C{stats} counts
        it.
        """
        yield self.startDaemon("--max-worker-rss", "100", workers=1)
        [before] = self.workerPids()[0]
        proto = yield self.pipeline([b'{"function":"grow","args":[150],"id":1}'])
        self.assertEqual(proto.replies[1][0]["result"], 1)
        yield waitFor(lambda: self.workerPids()[0] - {before} != set(), "a new worker")
        stats = yield self.stats()
        self.assertEqual(stats["memoryRecycled"], 1)
        self.assertFalse(alive(before))
        small = yield self.pipeline([b'{"function":"grow","args":[1],"id":1}'])
        self.assertEqual(small.replies[1][0]["result"], 1)
        self.assertEqual(len(re.findall(rb"is leaving: memory", self.daemon.output)), 1)
        report("memory recycling", limitMiB=100, grewMiB=150, callResult="ok", recycled=stats["memoryRecycled"])


class AnsweredPipeline(Pipeline):
    """
    A pipeline done after C{expected} replies, whatever it sent.
    """

    def __init__(self, lines: list[bytes], inFlight: int, expected: int) -> None:
        super().__init__(lines, inFlight)
        self.expected = expected

    def lineReceived(self, line: bytes) -> None:
        message = json.loads(line)
        self.replies.setdefault(message.get("id"), []).append(message)
        self.count += 1
        if self.count == self.expected and not self.done.called:
            self.done.callback(self)


class RespawnRateTests(DaemonTestCase):
    @inlineCallbacks
    def test_callThenCancelLoop(self) -> Any:
        """
        A client that, for 3 s, makes a call and cancels it at once, over
        and over (each call landing on a ready worker when there is one,
        which the cancel then kills): every call is answered C{cancelled},
        and the daemon starts at most C{--workers} replacements at once,
        then one per 0.5 s, not one process per cancelled call.
        """
        yield self.startDaemon(workers=2)
        before = len(self.workerPids()[1])
        started = time.monotonic()
        pairs = 0
        outcomes = set()
        while time.monotonic() - started < 3.0:
            call = b'{"function":"sleep","args":[10],"id":%d}' % pairs
            proto = yield self.connectPipeline(AnsweredPipeline([call, b'{"type":"cancel","id":%d}' % pairs], 2, expected=1))
            outcomes |= {r[0]["error"]["type"] for r in proto.replies.values()}
            pairs += 1
            yield pause(0.01)
        elapsed = time.monotonic() - started
        yield pause(1.0)  # replacements still starting get ready
        spawned = len(self.workerPids()[1]) - before
        bound = 2 + int((elapsed + 1.0) / 0.5) + 1
        self.assertEqual(outcomes, {"cancelled"})
        self.assertLessEqual(spawned, bound)
        report("call-then-cancel loop", pairs=pairs, seconds=f"{elapsed:.2f}", workersSpawned=spawned, bound=bound)

    @inlineCallbacks
    def connectPipeline(self, proto: Any) -> Any:
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.protocol import Factory

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        yield endpoint.connect(Factory.forProtocol(lambda: proto))
        yield proto.done
        proto.transport.loseConnection()
        return proto


class SameTaskdTests(DaemonTestCase):
    @inlineCallbacks
    def test_workersImportWhatTheDaemonImports(self) -> Any:
        """
        A daemon started with the C{twistd} script from a directory that
        holds another C{taskd} (a source checkout, say): its workers import
        the C{taskd} the daemon imported, not the one in the current
        directory.
        """
        here = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(here, "taskd"))
        with open(os.path.join(here, "taskd", "__init__.py"), "w") as f:
            f.write('raise ImportError("the taskd in the current directory was imported")\n')
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        proto = Twistd()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
        argv = [twistd, "-n", "--pidfile=", "taskd", "--listen", "tcp:0:interface=127.0.0.1", "--workers", "1"]
        process = reactor.spawnProcess(proto, twistd, argv, env=env, path=here)
        self.addCleanup(lambda: None if proto.ended.called else (process.signalProcess("KILL"), proto.ended)[1])
        m = yield proto.waitFor(rb"starting on (\d+)")
        yield proto.waitFor(rb"pool ready")
        self.daemon, self.daemonProcess, self.port = proto, process, int(m.group(1))
        self.addCleanup(self.killWorkers, proto)
        check = yield self.pipeline([b'{"function":"add","args":[2,3],"id":1}'])
        self.assertEqual(check.replies[1][0]["result"], 5)
        self.assertNotIn(b"current directory was imported", proto.output)
        report("workers import the daemon's taskd", startedFrom="a directory with another taskd", call="ok")
