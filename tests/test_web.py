"""
Tests for the daemon's HTTP side: L{taskd.activity} (the book the pool's
observer keeps), L{taskd.web} (health, token, events) and a real
C{twistd taskd --http} (its C{/metrics} parsed with C{prometheus_client}'s
own parser; L{taskd.metrics} alone is tested in L{tests.test_metrics}).
"""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from taskd import errors, tap
from taskd.activity import Activity, Histogram
from taskd.web import Web, httpDescription, httpExposureWarnings

from tests.fakes import PoolTestsMixin
from tests.test_server import Collector
from tests.test_tap import TwistdMixin


def families(text: str) -> dict[str, Any]:
    """
    @return: the metric families of Prometheus text C{text}, by name, each
        as C{{(sample name, labels as a sorted tuple): value}}.
    """
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = {
            (s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples
        }
    return out


class ActivityTests(PoolTestsMixin, SynchronousTestCase):
    """
    L{Activity} as the observer of a pool on the fake process reactor.
    """

    def setUp(self) -> None:
        self.pool, self.reactor = self.makePool(2)
        self.activity = Activity(
            self.reactor, buckets=(1.0, 5.0), running=self.pool.running, served=self.pool.served
        )
        self.pool.observer = self.activity
        d = self.pool.start()
        for p in self.reactor.processes:
            p.ready()
        self.successResultOf(d)

    def test_booksAndSnapshot(self) -> None:
        """
        Calls are numbered in order, counted by task and outcome when they
        end, their run times and waits kept by task; running calls and
        each worker's current call are listed in the snapshot, errors
        among the recent ones.
        """
        a, b = self.reactor.processes
        first = self.pool.submitEncoded("add", b'{"args":[1,2]}', origin="127.0.0.1:1")
        second = self.pool.submitEncoded("sleep", b'{"args":[9]}', origin="127.0.0.1:2")
        third = self.pool.submitEncoded("add", b'{"args":[2,2]}')
        self.reactor.advance(2)
        running = self.activity.running()
        self.assertEqual([(c.number, c.name) for c in running], [(1, "add"), (2, "sleep")])
        snapshot = self.activity.snapshot(self.pool.stats())
        self.assertEqual(
            [(r["number"], r["task"], r["age"], r["peer"]) for r in snapshot["running"]],
            [(1, "add", 2.0, "127.0.0.1:1"), (2, "sleep", 2.0, "127.0.0.1:2")],
        )
        self.assertEqual(snapshot["queued"], {"add": 1})
        busy = [p for p in (a, b) if p.requests()[0][0] == "add"][0]
        busy.send(b"R3")
        self.reactor.advance(4)
        busy.send(b'E{"type":"task_failed","message":"x","exception":"E"}')
        self.successResultOf(first)
        self.failureResultOf(third, errors.TaskFailed)
        self.assertEqual(self.activity.calls, {("add", "result"): 1, ("add", "task_failed"): 1})
        self.assertEqual(self.activity.runTimes["add"].counts, [0, 2, 0])
        self.assertEqual(self.activity.waits["add"].counts, [1, 1, 0])
        snapshot = self.activity.snapshot(self.pool.stats())
        self.assertEqual(
            [(e["number"], e["task"], e["type"]) for e in snapshot["errors"]], [(3, "add", "task_failed")]
        )
        workers = {w["pid"]: w for w in snapshot["workers"]}
        self.assertEqual(workers[busy.pid]["served"], 2)
        other = a if busy is b else b
        self.assertEqual((workers[other.pid]["task"], workers[other.pid]["for"]), ("sleep", 6.0))
        self.assertNoResult(second)

    def test_cancelByNumber(self) -> None:
        """
        L{ProcessPool.cancelCall} cancels the call in flight, running or
        queued, with that number (its caller sees the cancellation) and
        says whether there was one.
        """
        running = [self.pool.submit("sleep", [9]) for _ in range(2)]
        queued = self.pool.submit("sleep", [9])
        self.assertTrue(self.pool.cancelCall(3))
        self.failureResultOf(queued, CancelledError)
        self.assertTrue(self.pool.cancelCall(1))
        self.failureResultOf(running[0], CancelledError)
        self.assertFalse(self.pool.cancelCall(1))
        self.assertFalse(self.pool.cancelCall(99))
        self.assertEqual(self.activity.calls, {("sleep", "cancelled"): 2})
        self.assertEqual([c.number for c in self.pool.running()], [2])

    def test_rates(self) -> None:
        """
        Calls and errors are counted per second; seconds with none are
        zeros.
        """
        self.reactor.advance(10)
        for reply in (b"R1", b"R1", b'E{"type":"task_failed","message":"x"}'):
            self.pool.submit("add", [1, 1]).addErrback(lambda f: None)
            for q in self.reactor.processes:
                if len(q.requests()) > q.proto.calls:
                    q.send(reply)
        self.reactor.advance(2)
        self.assertEqual(self.activity.rates(4), [(9, 0, 0), (10, 3, 1), (11, 0, 0), (12, 0, 0)])

    def test_ratesOfTheCurrentSecond(self) -> None:
        """
        The current second's figures are the calls that ended since the
        counts were last read (on the whole second), before the timer
        reads them again.
        """
        self.reactor.advance(5.5)
        for reply in (b"R1", b'E{"type":"task_failed","message":"x"}'):
            self.pool.submit("add", [1, 1]).addErrback(lambda f: None)
            for q in self.reactor.processes:
                if len(q.requests()) > q.proto.calls:
                    q.send(reply)
        self.assertEqual(self.activity.rates(2), [(4, 0, 0), (5, 2, 1)])
        self.reactor.advance(0.5)
        self.assertEqual(self.activity.rates(2), [(5, 2, 1), (6, 0, 0)])

    def test_timesFoldedOnceASecond(self) -> None:
        """
        A call's end only counts it and keeps its run time and wait in a
        list; the timer that reads the counts on each whole second takes
        those into the histograms and empties the lists, so that they hold
        at most a second's calls.  Reading the histograms takes them in
        first: they are exact whenever read.
        """
        self.reactor.advance(0.25)
        self.pool.submit("add", [1, 1])
        [busy] = [q for q in self.reactor.processes if q.requests()]
        self.reactor.advance(0.5)
        busy.send(b"R2")
        counts = self.activity.tasks["add"]
        self.assertEqual((counts.results, counts.ran, counts.waited, counts.runTimes.count), (1, [0.5], [0.0], 0))
        self.reactor.advance(0.25)
        self.assertEqual((counts.ran, counts.waited, counts.runTimes.counts, counts.waits.counts), ([], [], [1, 0, 0], [1, 0, 0]))
        self.pool.submit("add", [1, 1])
        self.reactor.advance(2)
        busy.send(b"R2")
        self.assertEqual(self.activity.runTimes["add"].counts, [1, 1, 0])
        self.assertEqual(counts.ran, [])

    def test_stop(self) -> None:
        """
        L{Activity.stop} cancels its timer; the rates then know nothing
        after it.
        """
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.activity.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.activity.stop()


class HistogramTests(SynchronousTestCase):
    """
    L{Histogram}.
    """

    def test_buckets(self) -> None:
        """
        A value on a bound counts in that bound's bucket; above the last,
        in C{+Inf}; the cumulative counts are Prometheus'.
        """
        h = Histogram((1.0, 2.0))
        for v in (0.5, 1.0, 1.5, 3.0):
            h.observe(v)
        self.assertEqual(list(h.cumulative()), [(1.0, 2), (2.0, 3), (float("inf"), 4)])
        self.assertEqual((h.count, h.sum), (4, 6.0))

    def test_observeAll(self) -> None:
        """
        L{Histogram.observeAll} counts as many L{Histogram.observe} calls
        would: values on a bound in its bucket, above the last in C{+Inf},
        the sum added in the values' order.
        """
        values = [3.0, 0.1, 1.0, 2.0, 0.2, 9.5, 1.0000001, 0.0, 2.0]
        one, many = Histogram((1.0, 2.0, 5.0)), Histogram((1.0, 2.0, 5.0))
        for v in values:
            one.observe(v)
        many.observeAll(list(values))
        many.observeAll([])
        self.assertEqual((many.counts, many.sum), (one.counts, one.sum))
        self.assertEqual(many.counts, [4, 3, 1, 1])


class OptionsTests(SynchronousTestCase):
    """
    C{--http}, C{--http-token-file} and C{--admin-token-file}.
    """

    def test_barePort(self) -> None:
        """
        A bare port is a loopback TCP endpoint; anything else is an
        endpoint string, checked like C{--listen}'s.
        """
        self.assertEqual(httpDescription("9100"), "tcp:9100:interface=127.0.0.1")
        self.assertEqual(httpDescription("unix:/run/t.sock"), "unix:/run/t.sock")
        options = tap.Options()
        options.parseOptions(["--http", "0"])
        self.assertEqual(options["http"], "tcp:0:interface=127.0.0.1")
        e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--http", "tcp:port"])
        self.assertTrue(str(e).startswith("--http 'tcp:port': "), str(e))

    def test_tokenWithoutHTTP(self) -> None:
        """
        C{--http-token-file} without C{--http} is an error.
        """
        e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--http-token-file", "x"])
        self.assertEqual(str(e), "--http-token-file needs --http")

    def test_emptyAdminToken(self) -> None:
        """
        An empty admin token file is refused, naming the option.
        """
        path = self.mktemp()
        open(path, "w").close()
        e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--admin-token-file", path])
        self.assertEqual(str(e), f"--admin-token-file {path!r}: the file is empty")

    def test_prometheusMissing(self) -> None:
        """
        Without C{prometheus_client}, C{--http} says what to install.
        """
        import importlib.util

        real = importlib.util.find_spec
        self.patch(importlib.util, "find_spec", lambda name, *a: None if name == "prometheus_client" else real(name, *a))
        e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--http", "9100"])
        self.assertEqual(
            str(e),
            "--http needs the prometheus_client package, which is not installed: pip install 'taskd[http]'",
        )

    def test_exposure(self) -> None:
        """
        Beyond loopback, C{--http} warns without a token, or with one but
        without TLS; on loopback or a unix socket it does not.
        """
        self.assertEqual(httpExposureWarnings("tcp:9100:interface=127.0.0.1", False), [])
        self.assertEqual(httpExposureWarnings("unix:/run/t.sock", False), [])
        [bare] = httpExposureWarnings("tcp:9100", False)
        self.assertIn("listens on all interfaces without a token", bare)
        [clear] = httpExposureWarnings("tcp:9100:interface=10.0.0.1", True)
        self.assertIn("without TLS", clear)
        self.assertEqual(httpExposureWarnings("ssl:9100:privateKey=k.pem", True), [])


class WebTests(PoolTestsMixin, TestCase):
    """
    L{Web}'s resources over real HTTP on 127.0.0.1, on a pool of fakes.
    """

    @inlineCallbacks
    def serve(self, token: str | None = None) -> Any:
        pool, fake = self.startedPool(1)
        self.pool = pool
        self.activity = Activity(reactor)
        self.problem: str | None = None
        self.web = Web(reactor, self.activity, pool.stats, lambda: self.problem, token)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.web.site)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.web.close)
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def get(self, path: str, headers: dict[bytes, list[bytes]] | None = None) -> Any:
        response = yield Agent(reactor).request(b"GET", (self.base + path).encode(), Headers(headers or {}))
        body = yield readBody(response)
        return response.code, body

    @inlineCallbacks
    def test_health(self) -> Any:
        """
        C{/healthz} is 200 C{ok} with no problem, 503 and the problem
        otherwise.
        """
        yield self.serve()
        self.assertEqual((yield self.get("/healthz")), (200, b"ok\n"))
        self.problem = "draining"
        self.assertEqual((yield self.get("/healthz")), (503, b"draining\n"))

    @inlineCallbacks
    def test_token(self) -> Any:
        """
        With a token, the page and the events need it (as a bearer token or
        in the query); C{/healthz} does not; a wrong one is refused.
        """
        yield self.serve(token="s3cret")
        code, body = yield self.get("/")
        self.assertEqual((code, body), (401, b"this needs the HTTP token: Authorization: Bearer TOKEN, or ?token=TOKEN\n"))
        self.assertEqual((yield self.get("/", {b"Authorization": [b"Bearer wrong"]}))[0], 401)
        code, body = yield self.get("/", {b"Authorization": [b"Bearer s3cret"]})
        self.assertEqual(code, 200)
        self.assertIn(b"<title>taskd status</title>", body)
        self.assertEqual((yield self.get("/?token=s3cret"))[0], 200)
        self.assertEqual((yield self.get("/healthz"))[0], 200)

    @inlineCallbacks
    def test_events(self) -> Any:
        """
        C{/events} sends a snapshot at once, then one a second; when the
        last watcher goes, the timer stops.
        """
        yield self.serve()
        response = yield Agent(reactor).request(b"GET", (self.base + "/events").encode())
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"])
        received: list[bytes] = []
        twoEvents: Deferred[None] = Deferred()

        from twisted.internet.protocol import Protocol

        class Reader(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)
                if b"".join(received).count(b"event: status") >= 2 and not twoEvents.called:
                    twoEvents.callback(None)

        reader = Reader()
        response.deliverBody(reader)
        yield twoEvents.addTimeout(10, reactor)
        events = [
            json.loads(chunk.split(b"data: ", 1)[1])
            for chunk in b"".join(received).split(b"\n\n")
            if chunk.startswith(b"event: status")
        ]
        self.assertEqual(events[0]["health"], "ok")
        self.assertEqual(events[0]["pool"]["workers"], 1)
        self.assertEqual(self.web.events.watchers, 1)
        reader.transport.stopProducing()
        for _ in range(50):
            if not self.web.events.watchers:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.web.events.watchers, 0)


class TwistdHTTPTests(TwistdMixin, TestCase):
    """
    A real C{twistd taskd --http}.
    """

    @inlineCallbacks
    def start(self, *args: str) -> Any:
        daemon = self.spawn(
            "--listen", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1",
            "--workers", "2", "--tasks", "taskd.examples", *args,
        )
        m = yield daemon.waitFor(rb"TaskServerFactory starting on (\d+)")
        self.port = int(m.group(1))
        m = yield daemon.waitFor(rb"StatusSite starting on (\d+)")
        self.http = f"http://127.0.0.1:{int(m.group(1))}"
        yield daemon.waitFor(rb"pool ready")
        return daemon

    @inlineCallbacks
    def get(self, path: str, token: str | None = None) -> Any:
        headers = Headers({b"Authorization": [b"Bearer " + token.encode()]} if token else {})
        response = yield Agent(reactor).request(b"GET", (self.http + path).encode(), headers)
        body = yield readBody(response)
        return response.code, body

    @inlineCallbacks
    def send(self, lines: list[bytes]) -> Any:
        collector = Collector(len(lines))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        proto = yield endpoint.connect(Factory.forProtocol(lambda: collector))
        proto.transport.write(b"".join(lines))
        replies = yield collector.done.addTimeout(60, reactor)
        proto.transport.loseConnection()
        self.received = collector.data
        return replies

    @inlineCallbacks
    def test_metricsCountEverything(self) -> Any:
        """
        After a known mix of calls (results, task errors, crashes,
        timeouts, one unknown task), each counter of C{/metrics}, parsed
        with C{prometheus_client}'s parser, is what was sent; the
        histograms count every call that ran; worker starts and ends say
        why; the bytes each way are counted.  The HTTP token guards
        C{/metrics} but not C{/healthz}.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("h77p\n")
        daemon = yield self.start("--http-token-file", path)
        mix = (
            [b'{"function":"add","args":[%d,1],"id":"a%d"}\n' % (i, i) for i in range(7)]
            + [b'{"function":"fail","id":"f%d"}\n' % i for i in range(3)]
            + [b'{"function":"crash","id":"c%d"}\n' % i for i in range(2)]
            + [b'{"function":"sleep","args":[5],"timeout":0.2,"id":"t%d"}\n' % i for i in range(2)]
            + [b'{"function":"nope","id":"u"}\n']
        )
        replies = yield self.send(mix)
        kinds = sorted(r["error"]["type"] if r["type"] == "error" else "result" for r in replies)
        self.assertEqual(
            kinds, ["result"] * 7 + ["task_failed"] * 3 + ["timeout"] * 2 + ["unknown_task"] + ["worker_crashed"] * 2
        )
        # Every replacement is ready again (2 first workers, 4 replaced).
        for _ in range(100):
            code, text = yield self.get("/metrics", "h77p")
            got = families(text.decode())
            if got["taskd_worker_starts"][("taskd_worker_starts_total", ())] == 6:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(code, 200)
        calls = {dict(k[1])["task"] + "/" + dict(k[1])["outcome"]: v for k, v in got["taskd_calls"].items()}
        self.assertEqual(
            calls, {"add/result": 7, "fail/task_failed": 3, "crash/worker_crashed": 2, "sleep/timeout": 2}
        )
        run = got["taskd_call_run_seconds"]
        counts = {dict(k[1])["task"]: v for k, v in run.items() if k[0] == "taskd_call_run_seconds_count"}
        self.assertEqual(counts, {"add": 7, "fail": 3, "crash": 2, "sleep": 2})
        waits = got["taskd_call_queue_wait_seconds"]
        self.assertEqual(sum(v for k, v in waits.items() if k[0].endswith("_count")), 14)
        # A replacement that died before it was ready (seen under load: it
        # found its reply pipe closed) is counted as a crash too.
        startFailures = daemon.output.count(b"could not start")
        ends = {dict(k[1])["reason"]: v for k, v in got["taskd_worker_ends"].items()}
        self.assertEqual(
            (ends["crash"], ends["timeout"], sum(ends.values())),
            (2 + startFailures, 2, 4 + startFailures),
            daemon.output.decode(),
        )
        self.assertEqual(got["taskd_worker_starts"][("taskd_worker_starts_total", ())], 6)
        rss = got["taskd_worker_resident_memory_bytes"]
        self.assertEqual(sorted(dict(k[1])["slot"] for k in rss), ["0", "1"])
        self.assertTrue(all(v > 1e6 for v in rss.values()))
        self.assertEqual(got["taskd_connections"], {("taskd_connections", ()): 0})
        # Every byte each way, and no progress report dropped.
        self.assertEqual(
            (
                got["taskd_received_bytes"][("taskd_received_bytes_total", ())],
                got["taskd_sent_bytes"][("taskd_sent_bytes_total", ())],
                got["taskd_progress_dropped"][("taskd_progress_dropped_total", ())],
            ),
            (len(b"".join(mix)), len(self.received), 0),
        )
        self.assertEqual((yield self.get("/metrics"))[0], 401)
        self.assertEqual((yield self.get("/healthz")), (200, b"ok\n"))
        self.process.signalProcess("TERM")
        yield daemon.ended

    @inlineCallbacks
    def test_healthzFlipsWhileStopping(self) -> Any:
        """
        On SIGTERM, C{/healthz} answers 503 C{draining} while the running
        call finishes (it gets its result); then the daemon exits.
        """
        daemon = yield self.start("--grace", "20")
        self.assertEqual((yield self.get("/healthz")), (200, b"ok\n"))
        running = self.send([b'{"function":"sleep","args":[2],"id":1}\n'])
        yield deferLater(reactor, 0.3, lambda: None)
        self.process.signalProcess("TERM")
        seen = []
        for _ in range(100):
            try:
                seen.append((yield self.get("/healthz")))
            except Exception:
                break
            if seen[-1][0] == 503:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(seen[-1], (503, b"draining\n"))
        self.assertFalse(running.called)
        [reply] = yield running
        self.assertEqual(reply, {"type": "result", "id": 1, "result": 2})
        status = yield daemon.ended
        self.assertEqual(status, (None, signal.SIGTERM))
        self.assertTrue(re.search(rb"taskd stopped", daemon.output))

    @inlineCallbacks
    def test_jsonLog(self) -> Any:
        """
        With C{--log-format json} every line of the log is one JSON object;
        a worker's start carries its C{pid}, a failed call its C{number},
        C{task}, C{error}, C{duration} and C{peer}.
        """
        daemon = yield self.start("--log-format", "json")
        [reply] = yield self.send([b'{"function":"fail","id":1}\n'])
        self.assertEqual(reply["error"]["type"], "task_failed")
        yield daemon.waitFor(rb'"task": "fail"')
        self.process.signalProcess("TERM")
        yield daemon.ended
        events = [json.loads(line) for line in daemon.output.splitlines() if line.strip()]
        started = [e for e in events if e.get("log_format") == "worker {pid} started"]
        self.assertEqual(len(started), 2)
        self.assertTrue(all(isinstance(e["pid"], int) for e in started))
        [failed] = [e for e in events if e.get("log_namespace") == "taskd.activity.Activity"]
        self.assertEqual((failed["number"], failed["task"], failed["error"]), (1, "fail", "task_failed"))
        self.assertGreater(failed["duration"], 0)
        self.assertTrue(failed["peer"].startswith("127.0.0.1:"))
