"""
A cluster started by the tests themselves: three C{twistd taskd} daemons on
127.0.0.1, a real HAProxy in TCP mode in front (its health check speaks the
protocol: it sends a hello and expects the daemon's), and one throwaway
PostgreSQL server holding their jobs.  The reliability scenarios of
docs/cluster.md, scaled to fit CI's time; each prints its figures as a
C{RELIABILITY ...} line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ConnectError
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from taskd import errors
from taskd.client import connect
from tests.pgserver import PostgreSQLServer, freshDatabase, skipReason
from tests.test_pool import waitFor
from tests.test_reliability import DaemonTestCase, report

#: The HAProxy configuration of docs/cluster.md; {servers} is one
#: C{server} line per daemon, {bind} the frontend's address.
HAPROXY_CONFIG = """\
global
    maxconn 4096

defaults
    mode tcp
    timeout connect 2s
    # Longer than the longest call: a connection is idle while its task runs.
    timeout client 10m
    timeout server 10m
    # A connection refused by a daemon that just died goes to another one.
    retries 2
    option redispatch

frontend taskd
    bind {bind}
    default_backend taskd_daemons

backend taskd_daemons
    balance leastconn
    option tcp-check
    tcp-check connect
    tcp-check send "{{\\"type\\":\\"hello\\",\\"version\\":1}}\\n"
    tcp-check expect rstring "\\"type\\": ?\\"hello\\""
    default-server inter 300ms fall 2 rise 2
{servers}
"""


def haproxyPath() -> str | None:
    found = shutil.which("haproxy")
    if found is None and os.path.exists("/usr/sbin/haproxy"):
        found = "/usr/sbin/haproxy"
    return found


def freePort() -> int:
    """
    @return: a port the kernel just gave out on 127.0.0.1 (HAProxy's
        configuration needs the daemons' ports before they start, and a
        restarted daemon takes its port again).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[Any] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class ClusterTestCase(DaemonTestCase):
    """
    Starts PostgreSQL, N daemons and HAProxy; knows each daemon's port,
    process and workers.
    """

    timeout = 400
    daemonOptions: tuple[str, ...] = ()

    def setUp(self) -> None:
        reason = skipReason()
        if reason is None and haproxyPath() is None:
            reason = "haproxy is not installed (Debian package 'haproxy')"
        if reason is not None:
            raise SkipTest(reason)

    @inlineCallbacks
    def startCluster(self, daemons: int = 3, workers: int = 2) -> Any:
        self.pg = PostgreSQLServer()
        self.addCleanup(self.pg.destroy)
        self.pg.start()
        self.dsn = freshDatabase(self.pg)
        self.ports = [freePort() for _ in range(daemons)]
        self.daemons: list[Any] = [None] * daemons
        self.processes: list[Any] = [None] * daemons
        self.workers = workers
        yield gatherResults([self.startMember(n) for n in range(daemons)])
        yield self.startHAProxy()

    @inlineCallbacks
    def startMember(self, n: int) -> Any:
        daemon = yield self.startDaemon(
            "--journal", self.dsn, "--job-lease", os.environ.get("TASKD_CLUSTER_LEASE", "10"),
            "--job-poll", "0.5", *self.daemonOptions,
            port=self.ports[n], workers=self.workers,
        )
        self.daemons[n] = daemon
        self.processes[n] = self._spawned[id(daemon)]
        return daemon

    def spawn(self, *args: str, **extraEnv: str) -> Any:
        # Daemons start side by side: remember each one's process.
        proto = super().spawn(*args, **extraEnv)
        if not hasattr(self, "_spawned"):
            self._spawned: dict[int, Any] = {}
        self._spawned[id(proto)] = self.process
        return proto

    @inlineCallbacks
    def startHAProxy(self) -> Any:
        self.port = freePort()
        servers = "\n".join(
            f"    server taskd{n} 127.0.0.1:{port} check" for n, port in enumerate(self.ports)
        )
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(HAPROXY_CONFIG.format(bind=f"127.0.0.1:{self.port}", servers=servers))
        self.haproxyConfig = path
        proto = _Output()
        process = reactor.spawnProcess(proto, haproxyPath(), [haproxyPath(), "-db", "-f", path], env=os.environ)
        self.haproxyOutput = proto

        def stop() -> Any:
            if not proto.ended.called:
                process.signalProcess("KILL")
            return proto.ended

        self.addCleanup(stop)
        # Serving once every daemon passes its health check.
        yield self.waitUp(set(range(len(self.ports))))

    @inlineCallbacks
    def waitUp(self, members: set[int], tries: int = 400) -> Any:
        """
        Wait until HAProxy sends new connections to each of C{members}
        (each answers a C{pid} call with one of its workers).
        """
        seen: set[int] = set()
        for _ in range(tries):
            try:
                client = yield connect(reactor, f"tcp:127.0.0.1:{self.port}")
                try:
                    pid = yield client.call("pid")
                finally:
                    yield client.close()
                seen.add(self.memberOf(pid))
            except errors.TaskdError:
                pass
            except Exception:
                pass
            if members <= seen:
                return
            yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"HAProxy never reached daemons {members - seen}")

    @inlineCallbacks
    def connectMember(self, tries: int = 200) -> Any:
        """
        Connect through HAProxy (again: a connection HAProxy sent to a
        daemon that just died is closed at once).

        @return: the client, and which daemon it reached.
        """
        for _ in range(tries):
            try:
                client = yield connect(reactor, f"tcp:127.0.0.1:{self.port}")
                pid = yield client.call("pid")
                return client, self.memberOf(pid)
            except Exception:
                yield deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("could not connect through HAProxy")

    def memberOf(self, workerPid: int) -> int:
        """
        @return: which daemon runs the worker C{workerPid}.
        """
        for n, daemon in enumerate(self.daemons):
            if daemon is not None and re.search(rb"worker %d started" % workerPid, daemon.output):
                return n
        raise AssertionError(f"no daemon started worker {workerPid}")

    @inlineCallbacks
    def killMember(self, n: int) -> Any:
        os.kill(self.processes[n].pid, signal.SIGKILL)
        yield self.daemons[n].ended


class CallsThroughHAProxyTests(ClusterTestCase):
    """
    Calls through HAProxy while a daemon is killed and restarted.
    """

    @inlineCallbacks
    def test_killOneDaemon(self) -> Any:
        """
        20,000 calls from 50 connections (10 in flight on each) through HAProxy to 3 daemons; one
        daemon is SIGKILLed a third of the way, and restarted: every call
        gets exactly one outcome, the right result or, only for calls on
        a connection to the killed daemon, C{connection_lost} saying so
        (the caller reconnects through HAProxy and goes on); the restarted
        daemon takes connections again.
        """
        yield self.startCluster()
        total, connections, inFlight = 20_000, 50, 10
        nextCall = iter(range(total))
        outcomes: dict[int, list[Any]] = {}
        lostOn: Counter[int] = Counter()
        killAt = total // 3
        done = [0]
        killed: Deferred[None] = Deferred()
        victim = 1

        @inlineCallbacks
        def caller() -> Any:
            while True:
                client, member = yield self.connectMember()
                lost: list[bool] = []

                @inlineCallbacks
                def lane() -> Any:
                    for n in nextCall:
                        try:
                            result = yield client.call("add", n, 1)
                            outcomes.setdefault(n, []).append(("result", result))
                        except errors.ConnectionLost as e:
                            outcomes.setdefault(n, []).append(("lost", member, str(e)))
                            lostOn[member] += 1
                            lost.append(True)
                            return
                        done[0] += 1
                        if done[0] == killAt and not killed.called:
                            killed.callback(None)

                yield gatherResults([lane() for _ in range(inFlight)])
                if not lost:
                    yield client.close()
                    return

        started = time.monotonic()
        callers = gatherResults([caller() for _ in range(connections)], consumeErrors=True)

        def stopWaiting(result: Any) -> Any:
            if not killed.called:
                killed.errback(result) if isinstance(result, Failure) else killed.callback(None)
            return result

        callers.addBoth(stopWaiting)
        yield killed
        victimPid = self.processes[victim].pid
        yield self.killMember(victim)
        yield callers.addBoth(lambda r: r)
        yield self.startMember(victim)
        yield self.waitUp({victim})
        seconds = time.monotonic() - started
        self.assertEqual(sorted(outcomes), list(range(total)))
        self.assertEqual([n for n, o in outcomes.items() if len(o) != 1], [])
        wrong = [n for n, (o,) in outcomes.items() if o[0] == "result" and o[1] != n + 1]
        self.assertEqual(wrong, [])
        failures = [o for (o,) in outcomes.values() if o[0] == "lost"]
        self.assertEqual({f[1] for f in failures} - {victim}, set())
        for f in failures:
            self.assertIn("connection to taskd lost", f[2])
        self.assertGreater(len(failures), 0)
        report(
            "cluster-calls", calls=total, connections=connections, daemons=3,
            killed=victimPid, failed=len(failures), seconds=f"{seconds:.1f}",
        )


def submitLine(n: int, function: str, runs: str, hold: str | None) -> bytes:
    return json.dumps({
        "type": "submit", "function": function, "args": [runs, f"t{n}", hold],
        "key": f"k{n}", "id": n,
    }).encode()


class JobsThroughHAProxyTests(ClusterTestCase):
    """
    Jobs through HAProxy on the PostgreSQL journal while a daemon is killed
    and PostgreSQL itself is restarted.
    """

    @inlineCallbacks
    def submitAll(self, lines: list[bytes], connections: int = 5) -> Any:
        """
        @return: the replies to C{lines}, by id, sent through HAProxy on
            C{connections} connections.
        """
        parts = yield gatherResults([
            # The daemons' --max-in-flight (100) per connection.
            self.pipeline(lines[k::connections], inFlight=100) for k in range(connections)
        ])
        replies: dict[Any, dict[str, Any]] = {}
        for part in parts:
            for id, answers in part.replies.items():
                (replies[id],) = answers
        return replies

    @inlineCallbacks
    def test_killDaemonAndRestartPostgreSQL(self) -> Any:
        """
        5,000 jobs (C{TASKD_CLUSTER_JOBS}) submitted through HAProxy (all
        but 200, then 200) (one in ten of a task that
        opts into retries), held running on every daemon; one daemon is
        SIGKILLed, then PostgreSQL is restarted while 200 more are
        submitted (refused with C{journal_unavailable} while it is down,
        submitted again with the same key after); the daemon is restarted
        and the jobs released: every job reaches exactly one final state;
        none without opt-in ran twice; only the jobs the killed daemon held
        end C{interrupted}, saying its lease expired; every daemon answers
        the same status for any job.
        """
        yield self.startCluster()
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        runs, hold = os.path.join(work, "runs"), os.path.join(work, "hold")
        # 10,000 is the scale (TASKD_CLUSTER_JOBS=10000, ~50 s
        # alone); CI runs half of it, beside the rest of the suite.
        during = 200
        first = int(os.environ.get("TASKD_CLUSTER_JOBS", "5000")) - during
        total = first + during

        def function(n: int) -> str:
            return "recordRunSafely" if n % 10 == 0 else "recordRun"

        started = time.monotonic()
        replies = yield self.submitAll([submitLine(n, function(n), runs, hold) for n in range(first)])
        self.assertEqual([r for r in replies.values() if r["type"] != "accepted"][:3], [])
        jobs = {n: r["job"] for n, r in replies.items()}

        def ranCount() -> int:
            try:
                with open(runs) as f:
                    return len(f.read().split())
            except FileNotFoundError:
                return 0

        # Every daemon's workers are busy with held jobs.
        yield waitFor(lambda: ranCount() >= 3 * self.workers, "every worker to run a held job")
        yield deferLater(reactor, 0.5, lambda: None)
        victim = 1
        yield self.killMember(victim)
        self.pg.stop()
        refused = yield self.submitAll(
            [submitLine(n, function(n), runs, None) for n in range(first, total)]
        )
        refusedDown = Counter(r["error"]["type"] for r in refused.values() if r["type"] == "error")
        for n, r in refused.items():
            if r["type"] == "error":
                self.assertIn("the jobs' journal (PostgreSQL) is unreachable", r["error"]["message"])
                self.assertFalse(r["error"]["started"])
            else:
                jobs[n] = r["job"]
        self.assertEqual(set(refusedDown), {"journal_unavailable"})
        self.pg.start()
        missing = sorted(set(range(first, total)) - set(jobs))
        for _ in range(100):
            if not missing:
                break
            again = yield self.submitAll([submitLine(n, function(n), runs, None) for n in missing], 1)
            for n, r in again.items():
                if r["type"] == "accepted":
                    jobs[n] = r["job"]
            missing = sorted(set(range(first, total)) - set(jobs))
            yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(missing, [])
        with open(hold, "w"):
            pass
        yield self.startMember(victim)
        yield self.waitUp({victim})

        # A job request is answered with a job reply, or with an error
        # reply (asked again next round); both carry the request's id.
        states: dict[int, dict[str, Any]] = {}
        refusals: Counter[str] = Counter()
        lastError: dict[int, dict[str, Any]] = {}
        for _ in range(240):
            pending = [n for n in jobs if states.get(n, {}).get("state") not in FINAL]
            if not pending:
                break
            answers = yield self.submitAll(
                [json.dumps({"type": "job", "job": jobs[n], "id": n}).encode() for n in pending]
            )
            stray = {n: reply for n, reply in answers.items() if n not in pending}
            if stray:
                # (Seen once at load 8: an id-less idle_timeout, the
                # daemon having nothing in flight and nothing received for
                # 300 s while the round waited for replies; this test read
                # it as a job's reply then: KeyError 'state'.)
                self.fail(
                    f"replies that answer no job request: {list(stray.values())}; this "
                    f"round, {len(answers) - len(stray)} of {len(pending)} job requests "
                    "were answered"
                )
            for n, reply in answers.items():
                if reply.get("type") == "job":
                    states[n] = reply
                else:
                    self.assertEqual(reply.get("type"), "error", f"job {n}: {reply}")
                    refusals[reply["error"]["type"]] += 1
                    lastError[n] = reply
            yield deferLater(reactor, 0.5, lambda: None)
        seconds = time.monotonic() - started
        with open(runs) as f:
            ran = Counter(int(tag[1:]) for tag in f.read().split())
        unfinished = {n: states.get(n, lastError.get(n)) for n in jobs if states.get(n, {}).get("state") not in FINAL}
        self.assertEqual(unfinished, {}, "jobs not ended after 240 rounds, with their last replies")
        byState = Counter(s["state"] for s in states.values())
        self.assertEqual(set(byState) - {"done", "interrupted"}, set())
        interrupted = sorted(n for n, s in states.items() if s["state"] == "interrupted")
        for n in interrupted:
            self.assertEqual(function(n), "recordRun")
            self.assertIn("its lease expired", states[n]["error"]["message"])
        # The killed daemon had its window of jobs (--workers x --prefetch
        # 1: each of its workers held one, and a daemon claims no more
        # than its window) marked running as its own; those not opting
        # into retries end interrupted when its lease expires.  Any other
        # job ends interrupted only if a live daemon's lease expired.
        if len(interrupted) > self.workers:
            said = [
                f"daemon {k}: {line}" for k, daemon in enumerate(self.daemons)
                for line in daemon.output.decode(errors="replace").splitlines()
                if "lease expired" in line or "was not changed" in line or "renewing leases failed" in line
            ]
            self.fail(
                f"{len(interrupted)} jobs ended interrupted, more than the {self.workers} the killed "
                f"daemon held: jobs {interrupted}; the daemons logged:\n" + "\n".join(said[-40:])
            )
        twice = [n for n in range(total) if ran[n] > 1 and function(n) == "recordRun"]
        self.assertEqual(twice, [])
        for n, s in states.items():
            if s["state"] == "done":
                self.assertGreaterEqual(ran[n], 1)
                self.assertEqual(s["result"], f"t{n}")
        # Any daemon answers for any job, the same.
        sample = [jobs[n] for n in range(0, total, 97)]
        seen = []
        for port in self.ports:
            self.port, haproxy = port, self.port
            answers = yield self.pipeline(
                [json.dumps({"type": "job", "job": j, "id": k}).encode() for k, j in enumerate(sample)]
            )
            self.port = haproxy
            replies = [answers.replies[k][0] for k in range(len(sample))]
            for k, reply in enumerate(replies):
                self.assertEqual(reply.get("type"), "job", f"daemon on port {port} about job {sample[k]}: {reply}")
            seen.append([(reply["state"], reply["finished"]) for reply in replies])
        self.assertEqual(seen[0], seen[1])
        self.assertEqual(seen[0], seen[2])
        report(
            "cluster-jobs", jobs=total, daemons=3, refusedWhileDown=sum(refusedDown.values()),
            interrupted=len(interrupted), statusErrors=dict(refusals),
            reranWithOptIn=sum(1 for n in range(total) if ran[n] > 1),
            seconds=f"{seconds:.1f}",
        )


FINAL = {"done", "failed", "cancelled", "interrupted", "expired"}


class HAProxyConfigDocsTests(SynchronousTestCase):
    """
    docs/cluster.md shows the HAProxy configuration the cluster tests run.
    """

    def test_sameAsTheTests(self) -> None:
        """
        The balancing and health-check lines of docs/cluster.md's
        configuration are the tests' own, and HAProxy accepts it.
        """
        from tests.test_tap import ROOT

        with open(os.path.join(ROOT, "docs", "cluster.md")) as f:
            text = f.read()
        block = text.split("## HAProxy", 1)[1].split("```\n", 2)[1]

        def essential(config: str) -> list[str]:
            return [
                line.strip() for line in config.splitlines()
                if line.strip().startswith(("tcp-check", "balance", "option", "retries", "default-server", "timeout", "mode"))
            ]

        ours = HAPROXY_CONFIG.format(bind="127.0.0.1:1", servers="")
        self.assertEqual(essential(block), essential(ours))
        haproxy = haproxyPath()
        if haproxy is None:
            raise SkipTest("haproxy is not installed (Debian package 'haproxy')")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(block.replace("10.0.0.10", "127.0.0.1"))
        result = subprocess.run([haproxy, "-c", "-f", path], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class RollingRestartTests(ClusterTestCase):
    """
    The rolling-restart script of docs/deployment.md, under load.
    """

    daemonOptions = ("--grace", "10")

    def test_rollingRestart(self) -> Any:
        """
        The script drains and restarts each of the 3 daemons in turn while
        a L{ReconnectingClient} (three connections through HAProxy) keeps
        20 calls in flight: it succeeds, every daemon is replaced, calling
        goes on throughout, and no call fails: each daemon says goodbye
        when it drains, the client sends nothing more on its connection
        and reconnects through HAProxy once its calls there are answered.
        """
        return self.rollingRestart(self.script(), "cluster-rolling-restart")

    def test_rollingRestartWithoutDrain(self) -> Any:
        """
        The same script without its drain (SIGTERM only, as a plain
        C{systemctl restart} does): still no call fails.  The daemon says
        goodbye as it stops; a call on its way then is answered
        C{stopping} (C{started} false) and sent to another daemon.
        """
        script = self.script()
        drain = "    python -m taskd drain --connect \"tcp:127.0.0.1:$port\" >/dev/null\n"
        self.assertIn(drain, script)
        return self.rollingRestart(script.replace(drain, ""), "cluster-rolling-restart-sigterm-only")

    def script(self) -> str:
        """
        @return: the rolling-restart script of docs/deployment.md.
        """
        from tests.test_tap import ROOT

        with open(os.path.join(ROOT, "docs", "deployment.md")) as f:
            text = f.read()
        return text.split("## Rolling restart behind a balancer", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]

    @inlineCallbacks
    def rollingRestart(self, script: str, name: str) -> Any:
        from taskd.reconnecting import ReconnectingClient
        from tests.test_tap import ROOT

        yield self.startCluster()
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        path = os.path.join(work, "rolling-restart.sh")
        with open(path, "w") as f:
            f.write(script)
        for port, process in zip(self.ports, self.processes):
            with open(os.path.join(work, f"taskd-{port}.pid"), "w") as f:
                f.write(str(process.pid))

        def killRestarted() -> None:
            for port in self.ports:
                try:
                    with open(os.path.join(work, f"taskd-{port}.pid")) as f:
                        pid = int(f.read())
                except (OSError, ValueError):
                    continue
                if pid not in [p.pid for p in self.processes]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        self.addCleanup(killRestarted)
        client = ReconnectingClient(reactor, [f"tcp:127.0.0.1:{self.port}"] * 3)
        client.startService()
        self.addCleanup(client.stopService)
        outcomes: Counter[str] = Counter()
        failures: list[str] = []
        stop = [False]

        @inlineCallbacks
        def lane(k: int) -> Any:
            n = 0
            while not stop[0]:
                n += 1
                try:
                    result = yield client.call("add", k, n)
                    outcomes["ok" if result == k + n else "wrong"] += 1
                except Exception as e:
                    failures.append(repr(e))
            return None

        lanes = gatherResults([lane(k) for k in range(20)])
        yield deferLater(reactor, 1, lambda: None)
        from twisted.internet.utils import getProcessOutputAndValue

        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([ROOT, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]).rstrip(os.pathsep),
            TASKD_OPTIONS=f"--workers {self.workers} --tasks taskd.examples --tasks tests.tasks --journal {self.dsn}",
        )
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        started = time.monotonic()
        out, err, code = yield getProcessOutputAndValue(
            "/bin/sh", [path, *map(str, self.ports)], env=env, path=work
        )
        seconds = time.monotonic() - started
        yield deferLater(reactor, 1, lambda: None)
        stop[0] = True
        yield lanes
        self.assertEqual(code, 0, (out + err).decode(errors="replace"))
        for daemon in self.daemons:
            self.assertTrue(daemon.ended.called)
        self.assertEqual(failures, [])
        self.assertEqual(outcomes["wrong"], 0)
        self.assertGreater(outcomes["ok"], 1000)
        report(name, daemons=3, calls=outcomes["ok"], failed=len(failures), seconds=f"{seconds:.1f}")


class HAProxyTokenTests(DaemonTestCase):
    """
    The health check of docs/cluster.md ("With a token") against a daemon
    started with C{--auth-token-file}.
    """

    timeout = 120

    def setUp(self) -> None:
        if haproxyPath() is None:
            raise SkipTest("haproxy is not installed (Debian package 'haproxy')")

    @inlineCallbacks
    def test_checkWithToken(self) -> Any:
        """
        One HAProxy, two backends on the same daemon: the one whose check
        sends docs/cluster.md's hello with the token keeps the daemon in
        and carries calls (of a client with the token); the one whose
        check sends no token takes it out (HAProxy says why), and a
        connection through it reaches no daemon.
        """
        from tests.test_tap import ROOT

        token = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
        tokenFile = os.path.abspath(self.mktemp())
        with open(tokenFile, "w") as f:
            f.write(token + "\n")
        yield self.startDaemon("--auth-token-file", tokenFile, workers=1)
        with open(os.path.join(ROOT, "docs", "cluster.md")) as f:
            block = f.read().split("### With a token", 1)[1].split("```\n", 2)[1]
        (send,) = [line for line in block.splitlines() if line.strip().startswith("tcp-check send")]
        ports = {"token": freePort(), "plain": freePort()}
        server = f"    server taskd0 127.0.0.1:{self.port} check"
        config = ""
        for name in ("token", "plain"):
            part = HAPROXY_CONFIG.format(bind=f"127.0.0.1:{ports[name]}", servers=server)
            if name == "token":
                part = "\n".join(
                    send.replace("TOKEN", token) if "tcp-check send" in line else line for line in part.splitlines()
                )
            if config:
                part = "frontend" + part.split("frontend", 1)[1]
            config += part.replace("taskd_daemons", name).replace("frontend taskd", f"frontend {name}") + "\n"
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(config)
        proto = _Output()
        process = reactor.spawnProcess(proto, haproxyPath(), [haproxyPath(), "-db", "-f", path], env=os.environ)

        def stop() -> Any:
            if not proto.ended.called:
                process.signalProcess("KILL")
            return proto.ended

        self.addCleanup(stop)
        yield waitFor(lambda: b"plain/taskd0 is DOWN" in proto.output, "HAProxy to take the daemon out of 'plain'")
        # Served through the checked-with-token backend (HAProxy sends
        # connections only to a server whose check passes; a check that
        # timed out on a loaded machine is retried).
        for attempt in range(100):
            try:
                client = yield connect(reactor, f"tcp:127.0.0.1:{ports['token']}", token=token)
                self.assertEqual((yield client.call("add", 1, 2)), 3)
                yield client.close()
                break
            except (errors.TaskdError, ConnectError, OSError):
                yield deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("HAProxy never sent a connection to the daemon: " + proto.output.decode(errors="replace"))
        self.assertNotIn(b"token/taskd0 is DOWN, reason: Layer7", proto.output)
        failure = yield self.assertFailure(
            connect(reactor, f"tcp:127.0.0.1:{ports['plain']}", token=token), Exception
        )
        line = [l for l in proto.output.decode(errors="replace").splitlines() if "plain/taskd0 is DOWN" in l][0]
        self.assertIn("Layer7 invalid response", line)
        report("haproxy-token-check", plainCheck=line.split("reason: ", 1)[-1][:80], refused=type(failure).__name__)


class PostgreSQLServerTests(SynchronousTestCase):
    """
    L{tests.pgserver.PostgreSQLServer} leaves nothing running behind it.
    """

    skip = skipReason()

    def test_notUpInTimeIsKilled(self) -> None:
        """
        A server that does not take connections within C{start}'s timeout
        is killed before C{start} raises: with no PID file read, nothing
        could stop it later.
        """
        import psycopg

        server = PostgreSQLServer()
        self.addCleanup(server.destroy)
        self.assertRaises(psycopg.OperationalError, server.start, 0.0)
        self.assertIsNone(server.pid)
        self.assertIsNotNone(server._process.poll())
        server.destroy()
        # Its watcher was told, and has exited.
        self.assertEqual(server._watcher.returncode, 0)
        self.assertFalse(os.path.exists(server.dir))

    def test_diesWithTheProcessThatStartedIt(self) -> None:
        """
        The shared server of a test process that is SIGKILLed (trial's
        timeout, CI's) does not outlive it: its watcher stops the
        postmaster (gone, by its PID, within 30 s) and removes its
        directory.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        program = (
            "import sys, time\n"
            f"sys.path.insert(0, {root!r})\n"
            "from tests.pgserver import sharedServer\n"
            "server = sharedServer()\n"
            "print(server.pid, server.dir, flush=True)\n"
            "time.sleep(600)\n"
        )
        child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        pid, directory = child.stdout.readline().decode().split()  # type: ignore[union-attr]
        postmaster = int(pid)

        def leftover() -> None:
            # Before the watcher (or should it fail): stop what was left.
            if running(postmaster):
                os.kill(postmaster, signal.SIGKILL)
            shutil.rmtree(directory, ignore_errors=True)

        self.addCleanup(leftover)
        self.assertTrue(running(postmaster))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while running(postmaster) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertFalse(running(postmaster), f"the postmaster {postmaster} outlived its test process")
        while os.path.exists(directory) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertFalse(os.path.exists(directory))


def running(pid: int) -> bool:
    """
    @return: whether process C{pid} runs (a zombie does not).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class PostgreSQLDiscoveryTests(SynchronousTestCase):
    """
    Where L{tests.pgserver.binDir} finds PostgreSQL's server programs.
    """

    def install(self, *dirs: str, programs: tuple[str, ...] = ("initdb", "postgres")) -> str:
        root = os.path.abspath(self.mktemp())
        for d in dirs:
            os.makedirs(os.path.join(root, d))
            for program in programs:
                path = os.path.join(root, d, program)
                with open(path, "w") as f:
                    f.write("#!/bin/sh\n")
                os.chmod(path, 0o755)
        return root

    def test_newestMajor(self) -> None:
        """
        Of Debian's per-version directories, the newest major version's is
        taken, by number (16 after 9.6), and one lacking C{postgres} is
        passed over; PGDG's directories count as well.
        """
        from tests import pgserver

        root = self.install("lib/9.6/bin", "lib/15/bin", "lib/10/bin", "pgsql-14/bin")
        # A newer major without its server (only the client's programs).
        os.makedirs(os.path.join(root, "lib/17/bin"))
        os.symlink(os.path.join(root, "lib/15/bin/initdb"), os.path.join(root, "lib/17/bin/initdb"))
        self.patch(pgserver, "BIN_GLOBS", (os.path.join(root, "lib/*/bin"), os.path.join(root, "pgsql-*/bin")))
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "TASKD_PG_BINDIR"})
        self.assertEqual(pgserver.binDir(), os.path.join(root, "lib/15/bin"))
        self.patch(pgserver, "BIN_GLOBS", (os.path.join(root, "pgsql-*/bin"), os.path.join(root, "lib/9*/bin")))
        self.assertEqual(pgserver.binDir(), os.path.join(root, "pgsql-14/bin"))

    def test_overrideAndPath(self) -> None:
        """
        C{TASKD_PG_BINDIR} wins; with no packaged directory, C{initdb} on
        C{PATH} is used; with none at all, C{None}.
        """
        from tests import pgserver

        root = self.install("mine", "onpath")
        self.patch(pgserver, "BIN_GLOBS", (os.path.join(root, "nothing/*/bin"),))
        environ = {k: v for k, v in os.environ.items() if k != "TASKD_PG_BINDIR"}
        self.patch(os, "environ", dict(environ, TASKD_PG_BINDIR=os.path.join(root, "mine")))
        self.assertEqual(pgserver.binDir(), os.path.join(root, "mine"))
        self.patch(os, "environ", dict(environ, PATH=os.path.join(root, "onpath")))
        self.assertEqual(pgserver.binDir(), os.path.join(root, "onpath"))
        self.patch(os, "environ", dict(environ, PATH=os.path.join(root, "nothing")))
        self.assertIsNone(pgserver.binDir())
