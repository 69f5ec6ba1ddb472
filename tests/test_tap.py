"""
Tests for the daemon: L{taskd.tap}'s options and service tree, the twistd
plugin, and a real C{twistd taskd} process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from taskd import errors, listeners, tap
from taskd.pool import PoolService, ProcessPool
from taskd.registry import TaskOptions
from taskd.server import TaskServerFactory

from tests.fakes import FakeProcessReactor

from tests.test_pool import alive
from tests.test_server import Collector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """
        With no options: the example tasks, one worker per CPU, loopback
        port 12345, and the documented limits.
        """
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(
            {k: options[k] for k in options if k != "help" and k != "version"},
            {
                "listen": ["tcp:12345:interface=127.0.0.1"],
                "tasks": ["taskd.examples"],
                "workers": os.cpu_count(),
                "max-queue": 1000,
                "timeout": None,
                "max-tasks-per-worker": None,
                "max-line-length": 1024 * 1024,
                "max-connections": 1000,
                "max-in-flight": 100,
                "grace": 10.0,
                "kill-grace": 5.0,
                "max-memory": None,
                "max-worker-rss": None,
                "prefetch": 1,
                "prefetch-time": 0.005,
                "threads": 1,
                "async-concurrency": 100,
                "auth-token-file": None,
                "auth-token": None,
                "auth-timeout": 10.0,
                "idle-timeout": 300.0,
                "line-timeout": 30.0,
                "tracebacks": "full",
                "task-limits": {},
                "journal": os.path.abspath("taskd-journal.sqlite"),
                "job-ttl": 86400.0,
                "job-lease": 30.0,
                "job-poll": 1.0,
                "max-jobs": 100000,
                "http": None,
                "http-token-file": None,
                "http-token": None,
                "log-format": "text",
                "admin-token-file": None,
                "admin-token": None,
            },
        )

    def test_everything(self) -> None:
        """
        Every option is parsed and coerced; C{--listen} and C{--tasks}
        repeat.
        """
        options = tap.Options()
        options.parseOptions(
            [
                "--listen", "tcp:0", "-l", "unix:/tmp/x.sock", "--tasks", "taskd.examples",
                "--tasks", "tests.tasks", "-w", "3", "--max-queue", "0", "-t", "2.5",
                "--max-tasks-per-worker", "9", "--max-line-length", "100",
                "--max-connections", "7", "--max-in-flight", "4", "--grace", "1",
                "--kill-grace", "0.5", "--idle-timeout", "0", "--line-timeout", "2.5", "--tracebacks", "none",
            ]
        )
        self.assertEqual(options["listen"], ["tcp:0", "unix:/tmp/x.sock"])
        self.assertEqual(options["tasks"], ["taskd.examples", "tests.tasks"])
        self.assertEqual(
            [options[k] for k in ("workers", "max-queue", "timeout", "max-tasks-per-worker", "max-line-length", "max-connections", "max-in-flight", "grace", "kill-grace")],
            [3, 0, 2.5, 9, 100, 7, 4, 1.0, 0.5],
        )
        self.assertEqual([options[k] for k in ("idle-timeout", "line-timeout", "tracebacks")], [0.0, 2.5, "none"])

    def test_tracebacksDefault(self) -> None:
        """
        C{--tracebacks} defaults to C{full} when every listener is loopback
        or C{unix:}, to C{short} when any may be reached from elsewhere (or
        is of a kind taskd cannot judge); given, it is kept.
        """
        from tests.certs import Authority

        directory = self.mktemp()
        os.makedirs(directory)
        ca = Authority(directory, "taskd-test")
        key, cert = ca.issue("daemon", ["localhost"])
        for listen, mode in [
            ([], "full"),
            (["tcp:0:interface=127.0.0.1", "unix:/tmp/x.sock", "tcp6:0:interface=\\:\\:1"], "full"),
            ([f"mtls:0:privateKey={key}:certKey={cert}:caCerts={ca.certPath}:interface=localhost"], "full"),
            (["unix:/tmp/x.sock", "tcp:0"], "short"),
            ([f"ssl:0:privateKey={key}:certKey={cert}:interface=10.0.0.1"], "short"),
        ]:
            options = tap.Options()
            options.parseOptions([a for d in listen for a in ("-l", d)])
            self.assertEqual(options["tracebacks"], mode, listen)
        # (A systemd: listener is checked against the sockets systemd
        # passed, so it is judged here without parsing.)
        self.assertEqual(listeners.defaultTracebacks(["systemd:domain=INET:index=0"]), "short")
        options = tap.Options()
        options.parseOptions(["-l", "tcp:0", "--tracebacks", "full"])
        self.assertEqual(options["tracebacks"], "full")

    def test_taskLimit(self) -> None:
        """
        C{--task-limit NAME:...} (repeatable; later ones override the
        options they set) becomes the pool's L{PoolConfig.taskLimits}.
        """
        options = tap.Options()
        options.parseOptions([
            "-l", "tcp:0", "--task-limit", "mail:concurrency=4,rate=10/s",
            "--task-limit", "mail:priority=5,concurrency=2", "--task-limit", "a.b:c:rate=3/h",
        ])
        self.assertEqual(
            tap.poolConfig(options).taskLimits,
            {"mail": TaskOptions(priority=5, concurrency=2, rate="10/s"), "a.b:c": TaskOptions(rate="3/h")},
        )

    def test_prefetchTime(self) -> None:
        """
        C{--prefetch-time SECONDS} becomes L{PoolConfig.prefetchTime}; 0
        lifts the limit (C{None}); the default is 5 ms.
        """
        for args, value in [([], 0.005), (["--prefetch-time", "0.02"], 0.02), (["--prefetch-time", "0"], None)]:
            options = tap.Options()
            options.parseOptions(["-l", "tcp:0", "--prefetch", "8", *args])
            config = tap.poolConfig(options)
            self.assertEqual((config.prefetch, config.prefetchTime), (8, value), args)

    def test_badValues(self) -> None:
        """
        Bad values are refused with a message naming the option.
        """
        for args, text in [
            (["--workers", "0"], "--workers '0': must be a whole number of at least 1"),
            (["--workers", "many"], "--workers 'many': must be a whole number"),
            (["--timeout", "-1"], "--timeout '-1': must be a number of seconds above 0"),
            (["--timeout", "0"], "--timeout '0': must be a number of seconds above 0"),
            (["--auth-timeout", "0"], "--auth-timeout '0': must be a number of seconds above 0"),
            (["--grace", "nan"], "--grace 'nan': must be a number of seconds (0 or more)"),
            (["--prefetch-time", "-1"], "--prefetch-time '-1': must be a number of seconds (0 or more)"),
            (["--max-queue", "-5"], "--max-queue '-5': must be a whole number of at least 0"),
            (["--idle-timeout", "-1"], "--idle-timeout '-1': must be a number of seconds (0 or more)"),
            (["--line-timeout", "inf"], "--line-timeout 'inf': must be a number of seconds (0 or more)"),
            (["--tracebacks", "some"], "--tracebacks 'some': must be one of full, short, none, not 'some'"),
            (["--max-worker-rss", "0"], "--max-worker-rss '0': must be a whole number of at least 1"),
            (["--tasks", "tests.brokentasks"], "--tasks 'tests.brokentasks': cannot load task module: ImportError: this task module is broken on purpose"),
            (["--tasks", "no.such.module"], "--tasks 'no.such.module': cannot load task module: ModuleNotFoundError: No module named 'no'"),
            (["--auth-token-file", "/nonexistent"], "--auth-token-file '/nonexistent': cannot read it: No such file or directory"),
            (["--task-limit", "mail"], "--task-limit 'mail': must be NAME:OPTION=VALUE,... (such as send_mail:concurrency=4,rate=10/s)"),
            (["--task-limit", "mail:speed=4"], "--task-limit 'mail:speed=4': 'speed=4' is not concurrency=N, rate=N/s|m|h, priority=N, retries=N or backoff=SECONDS"),
            (["--task-limit", "mail:concurrency=0"], "--task-limit 'mail:concurrency=0': concurrency must be a whole number of at least 1, not 0"),
            (["--task-limit", "mail:concurrency=x"], "--task-limit 'mail:concurrency=x': concurrency must be a whole number, not 'x'"),
            (["--task-limit", "mail:rate=10"], "--task-limit 'mail:rate=10': rate '10' must be COUNT/s, COUNT/m or COUNT/h (such as '10/s')"),
            (["--task-limit", "mail:priority=200"], "--task-limit 'mail:priority=200': priority must be a whole number from -100 to 100, not 200"),
            (["--task-limit", "mail:rate=1/s,rate=2/s"], "--task-limit 'mail:rate=1/s,rate=2/s': rate is given twice"),
        ]:
            e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, args)
            self.assertEqual(str(e), text)

    def test_badEndpoints(self) -> None:
        """
        Each C{--listen} value is checked with Twisted's own parser before
        anything starts; the error says what would be valid.
        """
        for description, text in [
            ("12345", "not an endpoint; for TCP port 12345 on loopback write tcp:12345:interface=127.0.0.1"),
            ("tcp:abc", "port must be a number from 0 to 65535, not 'abc'"),
            ("tcp:70000", "port must be a number from 0 to 65535, not '70000'"),
            ("tcp", "tcp needs a port: tcp:PORT"),
            ("tcp:0:foo=1", "tcp endpoints take no parameter 'foo'"),
            ("tcp:0:backlog=many", "'many' is not a whole number"),
            ("ssl:0:privateKey=/nonexistent.pem", "cannot read /nonexistent.pem: No such file or directory"),
            ("systemd:domain=INET:index=0", "there is no socket number 0 from systemd: it passed 0 sockets to this process (LISTEN_FDS, LISTEN_PID)"),
        ]:
            e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--listen", description])
            self.assertEqual(str(e), f"--listen {description!r}: {text}")
        e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--listen", "bogus:1"])
        self.assertTrue(str(e).startswith("--listen 'bogus:1': unknown endpoint type 'bogus'; valid types: tcp:, tcp6:, ssl:, unix:, systemd:, "), str(e))
        self.assertIn("mtls:", str(e))
        for good in ["tcp:0", "tcp:0:interface=127.0.0.1:backlog=10", "tcp6:0:interface=\\:\\:1", "unix:/tmp/x.sock"]:
            self.assertIsNone(listeners.checkEndpoint(good), good)

    def test_systemdNames(self) -> None:
        """
        Sockets passed to this process without names are named C{unknown},
        as libsystemd does; other environments are left alone.
        """
        environ = {"LISTEN_PID": "42", "LISTEN_FDS": "2"}
        listeners.nameSystemdSockets(environ, pid=42)
        self.assertEqual(environ["LISTEN_FDNAMES"], "unknown:unknown")
        for other in [{"LISTEN_PID": "41", "LISTEN_FDS": "2"}, {"LISTEN_PID": "42", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}, {}]:
            before = dict(other)
            listeners.nameSystemdSockets(other, pid=42)
            self.assertEqual(other, before)


class MakeServiceTests(SynchronousTestCase):
    def test_freezesItsHeapOnceStarted(self) -> None:
        """
        A daemon in a process of its own (no reactor given, as twistd
        makes it) freezes its heap (C{gc.freeze}) once its jobs are picked
        up, so that full collections scan only what it made since; a
        daemon made in a test's process does not.
        """
        import gc

        options = tap.Options()
        options.parseOptions(["-l", "tcp:0:interface=127.0.0.1", "-w", "1", "--journal", ":memory:"])
        own = tap.makeService(options)
        self.assertTrue(own.freezeHeap)
        # And holds its writes over each reactor turn (taskd._pipes.holdEachTurn).
        self.assertTrue(own.holdTurns)
        service = tap.makeService(options, reactor=FakeProcessReactor())
        self.assertFalse(service.freezeHeap)
        self.assertFalse(service.holdTurns)
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        service.freezeHeap = True
        service.startService()
        self.assertGreater(gc.get_freeze_count(), 0)

    def test_serviceTree(self) -> None:
        """
        L{tap.makeService} gives the pool service and one listener per
        C{--listen}.
        """
        options = tap.Options()
        options.parseOptions(["-l", "tcp:0:interface=127.0.0.1", "-l", "unix:/tmp/taskd-test.sock", "-w", "2", "-t", "3"])
        service = tap.makeService(options)
        self.assertIsInstance(service, tap.TaskdService)
        children = list(service)
        self.assertIsInstance(children[0], PoolService)
        self.assertEqual([type(c) for c in children[1:]], [StreamServerEndpointService] * 2)
        self.assertEqual((service.pool.config.workers, service.pool.config.timeout), (2, 3.0))
        self.assertIs(children[1].factory, service.factory)


class SkipTLSImportsTests(SynchronousTestCase):
    def test_plainListeners(self) -> None:
        """
        With only plain listeners, and before Twisted's TCP transport is
        imported, pyOpenSSL is marked unavailable.
        """
        modules: dict[str, Any] = {}
        listeners.skipTLSImports(["tcp:0", "unix:/tmp/x.sock", "tcp6:0", "systemd:domain=INET:index=0"], modules)
        self.assertEqual(modules, {"OpenSSL": None})

    def test_tlsListener(self) -> None:
        """
        Any other listener (C{ssl:}, C{mtls:}, a plugin's) may need TLS:
        nothing is changed.
        """
        for other in ["ssl:0:privateKey=k.pem", "mtls:0:privateKey=k.pem:caCerts=ca.pem", "le:/certs:tcp:443"]:
            modules: dict[str, Any] = {}
            listeners.skipTLSImports(["tcp:0", other], modules)
            self.assertEqual(modules, {})

    def test_tooLate(self) -> None:
        """
        Once pyOpenSSL or Twisted's TCP transport is imported, nothing is
        changed.
        """
        for name in ["OpenSSL", "twisted.internet.tcp"]:
            modules: dict[str, Any] = {name: object()}
            listeners.skipTLSImports(["tcp:0"], modules)
            self.assertEqual(list(modules), [name])


class StartupWarningTests(SynchronousTestCase):
    def test_warnsWhenExposed(self) -> None:
        """
        Starting a daemon that listens on all interfaces with neither TLS
        nor a token logs both security warnings (nothing is bound: the
        reactor is a fake).
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        options = tap.Options()
        options.parseOptions(["-l", "tcp:12345", "-w", "1", "--journal", ":memory:"])
        service = tap.makeService(options, reactor=FakeProcessReactor())
        service.startService()
        warnings = [e["problem"] for e in events if "problem" in e]
        self.assertEqual(len(warnings), 2)
        self.assertIn("without TLS", warnings[0])
        self.assertIn("without authentication", warnings[1])


    def warnings(self, *args: str) -> list[str]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        options = tap.Options()
        options.parseOptions(["-w", "1", "--journal", ":memory:", *args])
        service = tap.makeService(options, reactor=FakeProcessReactor())
        service.startService()
        return [e["problem"] for e in events if "problem" in e]

    def test_unixOpenToEveryone(self) -> None:
        """
        A C{unix:} listener whose mode lets every local user connect, with
        no token, gets a security warning; with a token, or with the
        default or a group mode, it does not.
        """
        self.assertEqual(
            self.warnings("-l", "unix:/tmp/taskd-w.sock:mode=666"),
            ["unix:/tmp/taskd-w.sock:mode=666 lets every local user connect (mode 666) and there is no authentication: "
             "any of them can run tasks; leave mode= out (660) or set --auth-token-file"],
        )
        token = self.mktemp()
        with open(token, "w") as f:
            f.write("t")
        self.assertEqual(self.warnings("-l", "unix:/tmp/taskd-w.sock:mode=666", "--auth-token-file", token), [])
        self.assertEqual(self.warnings("-l", "unix:/tmp/taskd-w.sock", "-l", "unix:/tmp/taskd-w2.sock:mode=660"), [])


class ListenDescriptionTests(SynchronousTestCase):
    def test_unixDefaultMode(self) -> None:
        """
        A C{unix:} listener without C{mode=} gets mode 660; one with a mode,
        and other kinds of listener, are left as given.
        """
        self.assertEqual(listeners.listenDescription("unix:/run/taskd.sock"), "unix:/run/taskd.sock:mode=660")
        self.assertEqual(listeners.listenDescription("unix:/run/taskd.sock:backlog=9"), "unix:/run/taskd.sock:backlog=9:mode=660")
        self.assertEqual(listeners.listenDescription("unix:/run/taskd.sock:mode=600"), "unix:/run/taskd.sock:mode=600")
        self.assertEqual(listeners.listenDescription("tcp:0:interface=127.0.0.1"), "tcp:0:interface=127.0.0.1")

    def test_listensWithTheMode(self) -> None:
        """
        L{tap.makeService} listens on C{unix:} sockets with that mode.
        """
        options = tap.Options()
        options.parseOptions(["-w", "1", "--journal", ":memory:", "-l", "unix:/tmp/taskd-m.sock", "-l", "unix:/tmp/taskd-m2.sock:mode=600"])
        reactor = FakeProcessReactor()
        tap.makeService(options, reactor=reactor).startService()
        self.assertEqual([(path, mode) for path, _, _, mode, _ in reactor.unixServers], [("/tmp/taskd-m.sock", 0o660), ("/tmp/taskd-m2.sock", 0o600)])


class ExitStatusTests(SynchronousTestCase):
    def test_poolCannotStart(self) -> None:
        """
        When the pool cannot start, the service stops the reactor and
        registers an exit handler that will make the process exit 1.
        """
        registered: list[Any] = []
        reactor = FakeProcessReactor()
        pool = ProcessPool(reactor, tasks=["tests.tasks"], workers=1)
        service = tap.TaskdService(reactor, pool, TaskServerFactory(pool), [], atExit=registered.append)
        service.startService()
        self.assertEqual((service.exitStatus, registered, reactor.hasStopped), (0, [], False))
        (worker,) = reactor.processes
        worker.send(b"E" + json.dumps({"type": "worker_start_failed", "message": "cannot load: boom", "traceback": "TB"}).encode())
        worker.exit(1)
        self.assertEqual((service.exitStatus, registered, reactor.hasStopped), (1, [service._exit], True))
        self.assertEqual(len(self.flushLoggedErrors(errors.WorkerStartError)), 1)


class PluginTests(SynchronousTestCase):
    def test_discovered(self) -> None:
        """
        Twisted's plugin system finds exactly one C{taskd} service maker,
        which provides both interfaces and builds the daemon.
        """
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "taskd"]
        self.assertEqual(len(makers), 1)
        (maker,) = makers
        verifyObject(IPlugin, maker)
        verifyObject(IServiceMaker, maker)
        self.assertIs(maker.options, tap.Options)


class Twistd(ProcessProtocol):
    """
    A C{twistd taskd} child; collects its log and fires C{ended} with its
    exit status.
    """

    def __init__(self) -> None:
        self.output = b""
        #: What it wrote on stderr alone (also in C{output}).
        self.err = b""
        self.ended: Deferred[Any] = Deferred()
        self._waiting: list[tuple[re.Pattern[bytes], Deferred[Any]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for pattern, d in list(self._waiting):
            m = pattern.search(self.output)
            if m:
                self._waiting.remove((pattern, d))
                d.callback(m)

    def errReceived(self, data: bytes) -> None:
        self.err += data
        self.outReceived(data)

    def waitFor(self, pattern: bytes) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiting.append((re.compile(pattern), d))
        self.outReceived(b"")
        d.addTimeout(30, reactor)
        return d

    def processEnded(self, reason: Any) -> None:
        # (exit status, signal): twistd re-raises the signal that stopped
        # it once it has shut down cleanly, as an init system expects.
        self.ended.callback((reason.value.exitCode, reason.value.signal))


class TwistdMixin:
    """
    Spawns real C{twistd -n taskd} processes, killed by PID at cleanup if
    still running.
    """

    def spawn(self, *args: str, **extraEnv: str) -> Twistd:
        proto = Twistd()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
        env.update(extraEnv)
        if not any(a.startswith("--journal") for a in args):
            # A journal of its own: daemons run side by side from ROOT.
            args = (*args, "--journal", os.path.abspath(self.mktemp()))  # type: ignore[attr-defined]
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "taskd", *args]
        process = reactor.spawnProcess(proto, sys.executable, argv, env=env, path=ROOT)

        def cleanup() -> Any:
            if proto.ended.called:
                return None
            process.signalProcess("KILL")
            return proto.ended

        self.addCleanup(cleanup)  # type: ignore[attr-defined]
        self.process = process
        return proto


class TwistdTests(TwistdMixin, TestCase):
    """
    A real C{twistd -n taskd} process.
    """

    @inlineCallbacks
    def test_serveAndStopOnSIGTERM(self) -> Any:
        """
        twistd starts the daemon with its workers and serves calls; on
        SIGTERM it stops listening, lets running calls finish, answers
        queued ones with C{stopping}, ends its workers and exits 0.
        """
        daemon = self.spawn("--listen", "tcp:0:interface=127.0.0.1", "--workers", "2", "--tasks", "taskd.examples", "--grace", "20")
        m = yield daemon.waitFor(rb"starting on (\d+)")
        port = int(m.group(1))
        yield daemon.waitFor(rb"pool ready: 2 workers")
        workers = [int(p) for p in re.findall(rb"worker (\d+) started", daemon.output)]
        self.assertEqual(len(workers), 2)
        # No TLS listener: cryptography's native code (which pyOpenSSL
        # would have loaded) is not mapped.
        with open(f"/proc/{self.process.pid}/maps") as f:
            self.assertNotIn("/cryptography/", f.read())

        collector = Collector(4)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        proto = yield endpoint.connect(Factory.forProtocol(lambda: collector))
        proto.transport.write(
            b'{"function":"add","args":[1,2],"id":"first"}\n'
            b'{"function":"sleep","args":[1],"id":"s1"}\n'
            b'{"function":"sleep","args":[1],"id":"s2"}\n'
            b'{"function":"add","args":[3,4],"id":"queued"}\n'
        )
        yield deferLater(reactor, 0.3, lambda: None)
        self.process.signalProcess("TERM")
        replies = yield collector.done
        byId = {r["id"]: r for r in replies}
        self.assertEqual(byId["first"]["result"], 3)
        self.assertEqual((byId["s1"]["result"], byId["s2"]["result"]), (1, 1))
        self.assertEqual(byId["queued"]["error"], {"type": "stopping", "message": "the pool is stopping", "started": False})
        status = yield daemon.ended
        self.assertEqual(status, (None, signal.SIGTERM))
        self.assertIn(b"taskd stopped", daemon.output)
        self.assertIn(b"Server Shut Down.", daemon.output)
        self.assertEqual([p for p in workers if alive(p)], [])

    @inlineCallbacks
    def test_token(self) -> Any:
        """
        With C{--auth-token-file} the daemon refuses calls without the
        token and serves the CLI given it through C{TASKD_TOKEN} or
        C{--token-file}; on loopback it logs no security warning.
        """
        tokenFile = os.path.abspath(self.mktemp())
        with open(tokenFile, "w") as f:
            f.write("s3cret\n")
        daemon = self.spawn("--listen", "tcp:0:interface=127.0.0.1", "--workers", "1", "--auth-token-file", tokenFile)
        m = yield daemon.waitFor(rb"starting on (\d+)")
        yield daemon.waitFor(rb"pool ready")
        self.assertNotIn(b"SECURITY", daemon.output)
        from tests.test_cli import runCLI

        connect = f"tcp:127.0.0.1:{int(m.group(1))}"
        out, err, status = yield runCLI("call", "-c", connect, "add", "[1, 2]")
        self.assertEqual(
            (out.decode(), err.decode(), status),
            ("", f"taskd: {connect} requires a token and none was given: pass --token-file FILE or set TASKD_TOKEN\n", 3),
        )
        out, err, status = yield runCLI("call", "-c", connect, "add", "[1, 2]", env={"TASKD_TOKEN": "wrong"})
        self.assertEqual((out, err.decode(), status), (b"", f"taskd: {connect} refused the token: the token is wrong\n", 3))
        collector = Collector(1)
        proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", int(m.group(1))).connect(Factory.forProtocol(lambda: collector))
        proto.transport.write(b'{"type":"hello"}\n')
        replies = yield collector.done
        self.assertEqual(
            replies,
            [{"type": "error", "error": {"type": "unauthenticated", "message": "this daemon requires a token and the hello carried none", "started": False}}],
        )
        out, err, status = yield runCLI("call", "-c", connect, "add", "[1, 2]", env={"TASKD_TOKEN": "s3cret"})
        self.assertEqual((out, err, status), (b"3\n", b"", 0))
        out, err, status = yield runCLI("call", "-c", connect, "--token-file", tokenFile, "add", "[2, 2]")
        self.assertEqual((out, status), (b"4\n", 0))
        self.process.signalProcess("TERM")
        yield daemon.ended

    @inlineCallbacks
    def test_badOptionExits(self) -> Any:
        """
        Every class of bad option (a bad number, a bad endpoint string, an
        unknown endpoint type, a task module that does not import, an
        unknown option) makes twistd exit with status 2 and one line on
        stderr naming the option and the value: no usage text, no
        traceback, nothing started.
        """
        cases = [
            (["--workers", "0"], "taskd: --workers '0': must be a whole number of at least 1"),
            (["--max-in-flight", "lots"], "taskd: --max-in-flight 'lots': must be a whole number"),
            (["--grace", "-3"], "taskd: --grace '-3': must be a number of seconds (0 or more)"),
            (["--listen", "12345"], "taskd: --listen '12345': not an endpoint; for TCP port 12345 on loopback write tcp:12345:interface=127.0.0.1"),
            (["--listen", "tcp:abc"], "taskd: --listen 'tcp:abc': port must be a number from 0 to 65535, not 'abc'"),
            (["--listen", "bogus:1"], "taskd: --listen 'bogus:1': unknown endpoint type 'bogus'; valid types: tcp:, tcp6:, ssl:, unix:, systemd:, "),
            (["--tasks", "tests.brokentasks"], "taskd: --tasks 'tests.brokentasks': cannot load task module: ImportError: this task module is broken on purpose"),
            (["--bogus"], "taskd: option --bogus not recognized"),
        ]
        daemons = [(self.spawn(*args), args, line) for args, line in cases]
        for daemon, args, line in daemons:
            status = yield daemon.ended
            self.assertEqual(status, (2, None), args)
            self.assertEqual(daemon.err.count(b"\n"), 1, daemon.err)
            self.assertTrue(daemon.err.decode().startswith(line), (args, daemon.err))
            self.assertNotIn(b"Traceback", daemon.output)
            self.assertNotIn(b"Usage", daemon.output)
            self.assertNotIn(b"started", daemon.output)

    @inlineCallbacks
    def test_version(self) -> Any:
        """
        C{twistd taskd --version} prints taskd's version (and Twisted's);
        the daemon logs its version when it starts.
        """
        import twisted

        import taskd

        daemon = self.spawn("--version")
        self.assertEqual((yield daemon.ended), (0, None))
        self.assertEqual(daemon.output.decode(), f"taskd {taskd.__version__} (Twisted {twisted.version.short()})\n")
        daemon = self.spawn("--listen", "tcp:0:interface=127.0.0.1", "--workers", "1")
        yield daemon.waitFor(rb"pool ready: 1 worker running")
        self.assertIn(
            f"taskd {taskd.__version__} starting: 1 worker running taskd.examples, listening on tcp:0:interface=127.0.0.1".encode(),
            daemon.output,
        )
        self.process.signalProcess("TERM")
        yield daemon.ended

    @inlineCallbacks
    def test_systemdSocketWithoutName(self) -> Any:
        """
        Started as C{systemd-socket-activate} does without C{--fdname}
        (C{LISTEN_FDS=1}, no C{LISTEN_FDNAMES}), C{--listen
        systemd:domain=INET:index=0} serves on the socket passed.
        """
        import socket

        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(10)
        self.addCleanup(listening.close)
        port = listening.getsockname()[1]
        wrapper = (
            "import os, sys\n"
            "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1'\n"
            "os.environ.pop('LISTEN_FDNAMES', None)\n"
            "sys.argv = ['twistd', '-n', '--pidfile=', 'taskd', '-w', '1', '--listen', 'systemd:domain=INET:index=0', '--journal', ':memory:']\n"
            "from twisted.scripts.twistd import run; run()\n"
        )
        proto = Twistd()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
        process = reactor.spawnProcess(
            proto, sys.executable, [sys.executable, "-c", wrapper], env=env, path=ROOT,
            childFDs={0: "w", 1: "r", 2: "r", 3: listening.fileno()},
        )

        def cleanup() -> Any:
            if proto.ended.called:
                return None
            process.signalProcess("KILL")
            return proto.ended

        self.addCleanup(cleanup)
        yield proto.waitFor(rb"pool ready: 1 worker")
        from tests.test_cli import runCLI

        out, err, status = yield runCLI("call", "-c", f"tcp:127.0.0.1:{port}", "add", "[1, 2]")
        self.assertEqual((out, err, status), (b"3\n", b"", 0))
        process.signalProcess("TERM")
        self.assertEqual((yield proto.ended), (None, signal.SIGTERM))

    @inlineCallbacks
    def test_workersCannotStart(self) -> Any:
        """
        If the workers cannot load the task modules (the daemon itself can),
        the daemon logs the worker's traceback, shuts down cleanly instead
        of serving nothing, and exits with status 1, so that a supervisor
        (systemd's C{Restart=on-failure}) sees a failure.
        """
        daemon = self.spawn("--tasks", "tests.childbroken", "--listen", "tcp:0:interface=127.0.0.1", TASKD_TEST_BREAK="always")
        status = yield daemon.ended
        self.assertIn(b"the pool could not start", daemon.output)
        self.assertIn(b"ImportError: broken in the worker on purpose", daemon.output)
        self.assertIn(b"Server Shut Down.", daemon.output)
        self.assertEqual(status, (1, None))

    @inlineCallbacks
    def test_tracebacks(self) -> Any:
        """
        C{--tracebacks short}: a failed task's traceback reaches the client
        as its innermost frame and exception, without directories;
        C{--tracebacks none}: without a traceback.
        """
        replies = []
        for mode in ("short", "none"):
            daemon = self.spawn("--listen", "tcp:0:interface=127.0.0.1", "--workers", "1", "--tracebacks", mode)
            m = yield daemon.waitFor(rb"starting on (\d+)")
            yield daemon.waitFor(rb"pool ready")
            collector = Collector(1)
            proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", int(m.group(1))).connect(Factory.forProtocol(lambda: collector))
            proto.transport.write(b'{"function":"fail","args":["no luck"]}\n')
            (reply,) = yield collector.done
            replies.append(reply["error"])
            proto.transport.loseConnection()
            self.process.signalProcess("TERM")
            yield daemon.ended
        short, none = replies
        lines = short.pop("traceback").splitlines()
        self.assertEqual(short, {"type": "task_failed", "message": "no luck", "started": True, "exception": "ValueError"})
        self.assertEqual(lines[0], "Traceback (most recent call last):")
        self.assertRegex(lines[1], r'^  File "examples.py", line \d+, in fail$')
        self.assertEqual(lines[2:], ["    raise ValueError(message)", "ValueError: no luck"])
        self.assertEqual(none, {"type": "task_failed", "message": "no luck", "started": True, "exception": "ValueError"})

    @inlineCallbacks
    def test_unixListeners(self) -> Any:
        """
        A C{unix:} socket is created with mode 660 unless C{mode=} says
        otherwise; one every local user may connect to, without a token,
        is named in a start-up SECURITY warning.  Both serve calls.
        """
        directory = tempfile.mkdtemp(prefix="taskd-unix-")  # short: socket paths are limited
        self.addCleanup(shutil.rmtree, directory)
        safe, open_ = os.path.join(directory, "safe.sock"), os.path.join(directory, "open.sock")
        daemon = self.spawn("--listen", f"unix:{safe}", "--listen", f"unix:{open_}:mode=666", "--workers", "1")
        yield daemon.waitFor(rb"pool ready")
        self.assertEqual(stat.S_IMODE(os.stat(safe).st_mode), 0o660)
        self.assertEqual(stat.S_IMODE(os.stat(open_).st_mode), 0o666)
        warnings = re.findall(rb"SECURITY: (.*)", daemon.output)
        self.assertEqual(len(warnings), 1)
        self.assertIn(f"unix:{open_}:mode=666 lets every local user connect".encode(), warnings[0])
        from twisted.internet.endpoints import UNIXClientEndpoint

        for path in (safe, open_):
            collector = Collector(1)
            proto = yield UNIXClientEndpoint(reactor, path).connect(Factory.forProtocol(lambda: collector))
            proto.transport.write(b'{"function":"add","args":[1,2]}\n')
            self.assertEqual((yield collector.done), [{"type": "result", "result": 3}])
            proto.transport.loseConnection()
        self.process.signalProcess("TERM")
        yield daemon.ended

    @inlineCallbacks
    def test_busyPortExits(self) -> Any:
        """
        A port already in use makes twistd exit with status 2 and one line
        naming the option and the address; no traceback, no worker started.
        """
        first = self.spawn("--listen", "tcp:0:interface=127.0.0.1", "--workers", "1")
        m = yield first.waitFor(rb"starting on (\d+)")
        firstProcess = self.process
        port = int(m.group(1))
        second = self.spawn("--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "1")
        status = yield second.ended
        self.assertEqual(status, (2, None))
        self.assertEqual(
            second.err.decode(),
            f"taskd: --listen 'tcp:{port}:interface=127.0.0.1': cannot listen on 127.0.0.1:{port}: address already in use\n",
        )
        self.assertNotIn(b"Traceback", second.output)
        self.assertNotIn(b"worker", second.output)
        firstProcess.signalProcess("TERM")
        self.assertEqual((yield first.ended), (None, signal.SIGTERM))


class LoopbackTests(SynchronousTestCase):
    def test_onlyLoopbackIsLocal(self) -> None:
        """
        A listener counts as local only on a loopback address (or
        C{localhost}): look-alike strings do not.
        """
        from taskd.listeners import isLocal

        for interface, local in [
            ("127.0.0.1", True),
            ("127.1.2.3", True),
            ("\\:\\:1", True),
            ("localhost", True),
            ("\\:\\:1a", False),
            ("0\\:0\\:0\\:0\\:0\\:0\\:0\\:10", False),
            ("localhost.example.com", False),
            ("127.0.0.1.evil", False),
            ("", False),
        ]:
            self.assertEqual(isLocal(f"tcp:0:interface={interface}"), local, interface)
