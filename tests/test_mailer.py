"""
The scenario end to end (docs/examples/wsmailer.py): a WebSocket server
mails users through taskd with real SMTP, stays responsive, and reports
failures.  Figures are printed as C{MAILER ...} lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from taskd.jobs import JobService
from taskd.journal import SQLiteJournal
from taskd.reconnecting import ReconnectingClient
from taskd.pool import ProcessPool
from taskd.server import TaskServerFactory

from tests.test_tap import ROOT

EXAMPLES = os.path.join(ROOT, "docs", "examples")

try:
    from twisted.web.websocket import WebSocketClientEndpoint
except ImportError:  # pragma: no cover
    WebSocketClientEndpoint = None


def report(name: str, **figures: Any) -> None:
    sys.__stdout__.write("\nMAILER " + name + ": " + " ".join(f"{k}={v}" for k, v in figures.items()) + "\n")
    sys.__stdout__.flush()


class TextClient:
    """
    The parts of Twisted's C{WebSocketProtocol} a text-only client does not
    use; subclasses handle C{textMessageReceived}.
    """

    transport: Any = None

    def negotiationStarted(self, transport: Any) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        pass

    def pongReceived(self, payload: bytes) -> None:
        pass

    def bytesMessageReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


class ClientFactory:
    """
    Builds one kind of L{TextClient} for C{WebSocketClientEndpoint.connect}.
    """

    def __init__(self, cls: type[TextClient]) -> None:
        self.cls = cls

    def buildProtocol(self, url: str) -> Any:
        return self.cls()


class Peer(TextClient):
    """
    A WebSocket client that records what the server sends.
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.done: Deferred[dict[str, Any]] = Deferred()
        self.pongs: list[float] = []

    def textMessageReceived(self, message: str) -> None:
        m = json.loads(message)
        if m["type"] == "pong":
            self.pongs.append(time.perf_counter() - m["t"])
            return
        self.messages.append(m)
        if m["type"] == "done":
            self.done.callback(m)

    def send(self, message: dict[str, Any]) -> None:
        self.transport.sendTextMessage(json.dumps(message))


def percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_ms": round(1e3 * values[len(values) // 2], 2),
        "p99_ms": round(1e3 * values[int(len(values) * 0.99)], 2),
        "max_ms": round(1e3 * values[-1], 2),
        "pings": len(values),
    }


class MailerCase(TestCase):
    """
    A pool running the mailer task, a daemon with its jobs' journal, a
    reconnecting client, and helpers to start the sink, the site and
    WebSocket clients.
    """

    timeout = 300
    listening: Any = None

    @inlineCallbacks
    def setUp(self) -> Any:
        if WebSocketClientEndpoint is None:
            self.skipTest("twisted[websocket] (wsproto) is not installed")
        if EXAMPLES not in sys.path:
            sys.path.insert(0, EXAMPLES)
            self.addCleanup(sys.path.remove, EXAMPLES)
        import smtpsink
        import wsmailer

        self.smtpsink, self.wsmailer = smtpsink, wsmailer
        self.journal = os.path.abspath(self.mktemp())
        port = yield self.startDaemon()
        self.client = ReconnectingClient(reactor, [f"tcp:127.0.0.1:{port}"])
        self.client.startService()
        self.addCleanup(self.client.stopService)

    @inlineCallbacks
    def startDaemon(self, port: int = 0) -> Any:
        """
        Start the daemon: a pool running the mailer task, its jobs on the
        test's journal file, listening on C{port}.
        """
        self.pool = ProcessPool(reactor, tasks=["mailer_tasks"], workers=2, killGrace=1.0)
        yield self.pool.start()
        self.jobs = JobService(self.pool, SQLiteJournal(self.journal, reactor))
        yield self.jobs.start()
        self.factory = TaskServerFactory(self.pool, jobs=self.jobs)
        self.listening = yield TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(self.factory)
        self.addCleanup(self.stopDaemon)
        return self.listening.getHost().port

    @inlineCallbacks
    def stopDaemon(self) -> Any:
        """
        Stop the daemon as twistd does on SIGTERM: stop listening, stop the
        jobs and the pool (running calls finish), close the connections.
        """
        if self.listening is None:
            return
        listening, self.listening = self.listening, None
        yield listening.stopListening()
        jobsStopped = self.jobs.stop()
        yield self.pool.stop()
        yield jobsStopped
        self.factory.closeConnections()

    @inlineCallbacks
    def serve(self, mailer: Any) -> Any:
        web = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.wsmailer.makeSite(mailer))
        self.addCleanup(web.stopListening)
        return f"ws://127.0.0.1:{web.getHost().port}/ws"

    @inlineCallbacks
    def sink(self, refuse: set[str] = set()) -> Any:
        sink = self.smtpsink.Sink(refuse)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1", backlog=1024).listen(sink)
        self.addCleanup(port.stopListening)
        return sink, port.getHost().port

    @inlineCallbacks
    def connect(self, url: str) -> Any:
        peer = yield Deferred.fromCoroutine(WebSocketClientEndpoint.new(reactor, url).connect(ClientFactory(Peer)))
        def close() -> None:
            try:
                peer.transport.loseConnection()
            except Exception:
                pass  # the test closed it already

        self.addCleanup(close)
        return peer

    @inlineCallbacks
    def mailWithPings(self, url: str, users: int) -> Any:
        """
        Start a batch on one connection and ping every 10 ms on another
        until it is done.
        """
        mailer = yield self.connect(url)
        pinger = yield self.connect(url)
        loop = LoopingCall(lambda: pinger.send({"action": "ping", "t": time.perf_counter()}))
        start = time.perf_counter()
        mailer.send({"action": "mail", "users": users})
        loop.start(0.01)
        done = yield mailer.done
        elapsed = time.perf_counter() - start
        loop.stop()
        return mailer, pinger, done, elapsed



class MailerTests(MailerCase):
    @inlineCallbacks
    def test_allMailArrives(self) -> Any:
        """
        1,000 users: the sink holds exactly 1,000 distinct messages to the
        right recipients; the client saw progress and a final "done" with
        1,000 sent and 0 failed; a second client's pings were answered
        throughout, never waiting for the whole batch.
        """
        sink, smtpPort = yield self.sink()
        url = yield self.serve(self.wsmailer.Mailer(self.client, smtpPort))
        mailer, pinger, done, elapsed = yield self.mailWithPings(url, 1000)
        self.assertEqual((done["sent"], done["failed"], done["failures"]), (1000, 0, []))
        progress = [m for m in mailer.messages if m["type"] == "progress"]
        self.assertGreater(len(progress), 10)
        self.assertEqual([m["sent"] for m in progress], sorted(m["sent"] for m in progress))
        recipients = sorted(r for r, _ in sink.messages)
        self.assertEqual(recipients, [f"user{i:04d}@example.com" for i in range(1000)])
        self.assertTrue(all(b"Subject: hello" in m for _, m in sink.messages))
        self.assertGreater(len(pinger.pongs), 10)
        self.assertLess(max(pinger.pongs), elapsed)
        report("taskd, 1000 mails", seconds=round(elapsed, 2), **percentiles(pinger.pongs))

    @inlineCallbacks
    def test_inlineBlocks(self) -> Any:
        """
        The contrast: the same batch sent inline (in the reactor thread)
        holds every ping for the whole batch.  The SMTP sink runs in its own
        process here, since the blocked reactor could not serve it.
        """
        process = subprocess.Popen(
            [sys.executable, os.path.join(EXAMPLES, "smtpsink.py"), "0"],
            stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path)),
        )
        self.addCleanup(lambda: (process.kill(), process.wait(), process.stdout.close()))
        line = process.stdout.readline().decode()
        smtpPort = int(line.rsplit(" ", 1)[1])
        url = yield self.serve(self.wsmailer.Mailer(None, smtpPort, inline=True))
        mailer, pinger, done, elapsed = yield self.mailWithPings(url, 1000)
        self.assertEqual(done["sent"], 1000)
        self.assertGreater(max(pinger.pongs), 0.5 * elapsed)
        report("inline, 1000 mails", seconds=round(elapsed, 2), **percentiles(pinger.pongs))

    @inlineCallbacks
    def test_failuresReported(self) -> Any:
        """
        With the sink refusing 1 % of recipients, "done" counts exactly
        those failures and names them.
        """
        refused = {f"user{i:04d}@example.com" for i in range(0, 1000, 100)}
        sink, smtpPort = yield self.sink(refused)
        url = yield self.serve(self.wsmailer.Mailer(self.client, smtpPort))
        mailer = yield self.connect(url)
        mailer.send({"action": "mail", "users": 1000})
        done = yield mailer.done
        self.assertEqual((done["sent"], done["failed"]), (990, 10))
        self.assertEqual({f["to"] for f in done["failures"]}, refused)
        self.assertTrue(all("SMTPRecipientsRefused" in f["error"] for f in done["failures"]))
        self.assertEqual(len(sink.messages), 990)
        report("refusals", refused=len(refused), reported=done["failed"])


class BatchTests(MailerCase):
    @inlineCallbacks
    def test_reconnectShowsTheBatchWhereItIs(self) -> Any:
        """
        A second WebSocket (a reloaded page) that asks for a batch by its id
        while it goes gets where it is at once, then its progress, to the
        end; no mail is sent twice, none is lost.
        """
        sink, smtpPort = yield self.sink()
        url = yield self.serve(self.wsmailer.Mailer(self.client, smtpPort))
        first = yield self.connect(url)
        first.send({"action": "mail", "users": 400})
        for _ in range(400):
            if any(m["type"] == "progress" and m["sent"] >= 40 for m in first.messages):
                break
            yield deferLater(reactor, 0.025, lambda: None)
        batch = first.messages[0]
        self.assertEqual(batch["type"], "batch")
        first.transport.loseConnection()
        again = yield self.connect(url)
        again.send({"action": "mail", "users": 400, "batch": batch["batch"]})
        done = yield again.done
        self.assertEqual(again.messages[0], {"type": "batch", "batch": batch["batch"], "total": 400})
        self.assertGreaterEqual(again.messages[1]["sent"], 40)
        self.assertEqual((done["sent"], done["failed"]), (400, 0))
        recipients = sorted(r for r, _ in sink.messages)
        self.assertEqual(recipients, [f"user{i:04d}@example.com" for i in range(400)])

    @inlineCallbacks
    def test_restartedMailer(self) -> Any:
        """
        A mailer that forgot the batch (restarted) asked to watch it finds
        its jobs by their keys: the batch ends with each mail sent once.
        """
        sink, smtpPort = yield self.sink()
        url = yield self.serve(self.wsmailer.Mailer(self.client, smtpPort))
        first = yield self.connect(url)
        first.send({"action": "mail", "users": 300})
        done = yield first.done
        batch = first.messages[0]["batch"]
        other = yield self.serve(self.wsmailer.Mailer(self.client, smtpPort))
        watcher = yield self.connect(other)
        watcher.send({"action": "mail", "users": 300, "batch": batch})
        again = yield watcher.done
        self.assertEqual((done["sent"], again["sent"], again["failed"]), (300, 300, 0))
        self.assertEqual(len(sink.messages), 300)

    @inlineCallbacks
    def test_daemonRestartMidBatch(self) -> Any:
        """
        The daemon restarts (SIGTERM's stop, then a start on the same
        journal and port) in the middle of a batch: the batch ends with
        every mail sent exactly once (the sink counts).
        """
        sink, smtpPort = yield self.sink()
        url = yield self.serve(self.wsmailer.Mailer(self.client, smtpPort, retryDelay=0.2))
        mailer = yield self.connect(url)
        mailer.send({"action": "mail", "users": 500})
        for _ in range(400):
            if any(m["type"] == "progress" and m["sent"] >= 50 for m in mailer.messages):
                break
            yield deferLater(reactor, 0.025, lambda: None)
        port = self.listening.getHost().port
        yield self.stopDaemon()
        sentAtRestart = len(sink.messages)
        yield self.startDaemon(port)
        done = yield mailer.done
        self.assertEqual((done["sent"], done["failed"], done["failures"]), (500, 0, []))
        recipients = sorted(r for r, _ in sink.messages)
        self.assertEqual(recipients, [f"user{i:04d}@example.com" for i in range(500)])
        self.assertLess(sentAtRestart, 500)
        report("daemon restart mid-batch", mails=500, sent_before_restart=sentAtRestart, sent_twice=0)


class DevTools(TextClient):
    """
    A minimal Chrome DevTools Protocol client over Twisted's WebSocket
    client: commands matched to replies by id.
    """

    def __init__(self) -> None:
        self.ids = 0
        self.waiting: dict[int, Deferred[Any]] = {}

    def textMessageReceived(self, message: str) -> None:
        m = json.loads(message)
        d = self.waiting.pop(m.get("id"), None)
        if d is not None:
            if "error" in m:
                d.errback(RuntimeError(str(m["error"])))
            else:
                d.callback(m.get("result", {}))

    def connectionLost(self, reason: Any) -> None:
        for d in self.waiting.values():
            d.errback(RuntimeError("DevTools connection lost"))
        self.waiting = {}

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Deferred[Any]:
        self.ids += 1
        message: dict[str, Any] = {"id": self.ids, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        d: Deferred[Any] = Deferred()
        self.waiting[self.ids] = d
        self.transport.sendTextMessage(json.dumps(message))
        return d


def findChromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser(ProcessProtocol):
    """
    A headless Chromium; C{listening} fires with its DevTools address.
    """

    def __init__(self) -> None:
        self.output = b""
        self.listening: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def errReceived(self, data: bytes) -> None:
        self.output += data
        m = re.search(rb"DevTools listening on (ws://\S+)", self.output)
        if m and not self.listening.called:
            self.listening.callback(m.group(1).decode())

    outReceived = errReceived

    def processEnded(self, reason: Any) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError(self.output.decode(errors="replace")[-2000:]))
        self.ended.callback(None)


@inlineCallbacks
def launchBrowser(case: TestCase, chromium: str) -> Any:
    """
    Start a headless Chromium for C{case} (killed by PID at its cleanup)
    and connect to its DevTools.

    @return: a C{Deferred} firing with the connected L{DevTools}.
    """
    profile = os.path.abspath(case.mktemp())
    os.makedirs(profile)
    browser = Browser()
    process = reactor.spawnProcess(
        browser, chromium,
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "about:blank"],
        env=dict(os.environ),
    )

    def stopBrowser() -> Any:
        if not browser.ended.called:
            process.signalProcess("KILL")
        return browser.ended

    case.addCleanup(stopBrowser)
    browserURL = yield browser.listening
    tools = yield Deferred.fromCoroutine(WebSocketClientEndpoint.new(reactor, browserURL).connect(ClientFactory(DevTools)))
    case.addCleanup(lambda: tools.transport.loseConnection())
    return tools


class BrowserTests(MailerCase):
    """
    A real browser: headless Chromium loads the page, presses the button
    and watches the progress bar reach 100 %.
    """

    @inlineCallbacks
    def openPage(self, chromium: str, url: str) -> Any:
        """
        Start Chromium on the mailer's page (C{url} is its WebSocket's).

        @return: a function that evaluates a JavaScript expression in the
            page and gives a C{Deferred} of its value.
        """
        page = url.replace("ws://", "http://").replace("/ws", "/")
        tools = yield launchBrowser(self, chromium)
        target = yield tools.call("Target.createTarget", {"url": page})
        attached = yield tools.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        session = attached["sessionId"]

        @inlineCallbacks
        def evaluate(expression: str) -> Any:
            result = yield tools.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
            return result.get("result", {}).get("value")

        return evaluate

    @inlineCallbacks
    def test_browserPressesTheButton(self) -> Any:
        """
        Chromium, driven over the DevTools protocol, loads the page, asks
        for 200 mails and sees the bar reach 200 of 200 and "done"; the
        sink holds the 200 messages.
        """
        chromium = findChromium()
        if chromium is None:
            self.skipTest("Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
        sink, smtpPort = yield self.sink()
        url = yield self.serve(self.wsmailer.Mailer(self.client, smtpPort))
        evaluate = yield self.openPage(chromium, url)

        for _ in range(300):
            ready = yield evaluate("document.readyState === 'complete' && !!document.getElementById('go')")
            if ready:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(ready, "the page did not load")
        yield evaluate("document.getElementById('users').value = '200'; document.getElementById('go').click(); true")
        seen = []
        for _ in range(600):
            state = yield evaluate(
                "[document.getElementById('bar').value, document.getElementById('bar').max,"
                " document.getElementById('status').textContent]"
            )
            seen.append(state[0])
            if state[2].startswith("done"):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(state, [200, 200, "done: 200 sent, 0 failed"])
        self.assertEqual(len(sink.messages), 200)
        report("browser", final=state[2].replace(" ", "_"), progress_samples=len(seen))

    @inlineCallbacks
    def test_reloadInTheMiddle(self) -> Any:
        """
        Chromium asks for 400 mails and reloads the page in the middle:
        the reloaded page shows the batch where it is (its bar does not go
        back) and follows it to "done"; the sink holds each of the 400
        mails once.
        """
        chromium = findChromium()
        if chromium is None:
            self.skipTest("Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
        sink, smtpPort = yield self.sink()
        url = yield self.serve(self.wsmailer.Mailer(self.client, smtpPort))
        evaluate = yield self.openPage(chromium, url)

        @inlineCallbacks
        def until(expression: str, what: str, tries: int = 600) -> Any:
            for _ in range(tries):
                value = yield evaluate(expression)
                if value:
                    return value
                yield deferLater(reactor, 0.05, lambda: None)
            raise AssertionError(f"gave up waiting for {what}")

        bar = "document.getElementById('bar')"
        yield until("document.readyState === 'complete' && !!document.getElementById('go')", "the page")
        yield evaluate("document.getElementById('users').value = '400'; document.getElementById('go').click(); true")
        before = yield until(f"{bar}.value >= 40 && {bar}.value < 400 && {bar}.value", "some progress")
        yield evaluate("location.reload(); true")
        yield deferLater(reactor, 0.2, lambda: None)
        after = yield until(f"document.readyState === 'complete' && {bar} && {bar}.value > 0 && {bar}.value", "the batch again")
        self.assertGreaterEqual(after, before)
        status = yield until(
            "document.getElementById('status').textContent.startsWith('done') && document.getElementById('status').textContent",
            "the end",
        )
        self.assertEqual(status, "done: 400 sent, 0 failed")
        recipients = sorted(r for r, _ in sink.messages)
        self.assertEqual(recipients, [f"user{i:04d}@example.com" for i in range(400)])
        report("browser reload", bar_before_reload=before, bar_after_reload=after)
