"""
The status page (C{twistd taskd --http}, C{/}) in a real headless
Chromium, on a phone-sized screen: it shows the running calls of a known
workload and updates without being reloaded.  A screenshot is saved in
the test's temporary directory and its path printed.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.test_mailer import WebSocketClientEndpoint, findChromium, launchBrowser
from tests.test_server import Collector
from tests.test_tap import TwistdMixin


class StatusPageTests(TwistdMixin, TestCase):
    """
    The status page in headless Chromium.
    """

    timeout = 120

    @inlineCallbacks
    def test_showsRunningCallsLive(self) -> Any:
        """
        With two known C{sleep} calls running and C{add} calls going on,
        the page (on a 390-pixel-wide screen, with no horizontal
        scrolling) lists the two calls with their numbers and peer, shows
        both workers busy, and keeps updating without a reload.
        """
        chromium = findChromium()
        if chromium is None:
            self.skipTest("Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
        if WebSocketClientEndpoint is None:
            self.skipTest("twisted[websocket] (wsproto) is not installed")
        daemon = self.spawn(
            "--listen", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1",
            "--workers", "3", "--tasks", "taskd.examples",
        )
        m = yield daemon.waitFor(rb"TaskServerFactory starting on (\d+)")
        port = int(m.group(1))
        m = yield daemon.waitFor(rb"StatusSite starting on (\d+)")
        page = f"http://127.0.0.1:{int(m.group(1))}/"
        yield daemon.waitFor(rb"pool ready")

        # The known workload: two long calls on one connection, and a few
        # quick ones a second on another.
        sleeper = Collector(2)
        sleepers = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: sleeper))
        self.addCleanup(sleepers.transport.loseConnection)
        sleepers.transport.write(b'{"function":"sleep","args":[60],"id":1}\n{"function":"sleep","args":[60],"id":2}\n')
        peer = f"127.0.0.1:{sleepers.transport.getHost().port}"
        adder = Collector(10**6)
        adders = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: adder))
        self.addCleanup(adders.transport.loseConnection)

        adding: list[Any] = []

        def add() -> None:
            if adders.transport.connected:
                adders.transport.write(b'{"function":"add","args":[1,2]}\n')
                adding[:] = [reactor.callLater(0.1, add)]

        def stopAdding() -> None:
            for call in adding:
                if call.active():
                    call.cancel()

        # (Cleanups run last first: the adding stops before its connection
        # closes, so no call is left pending when the test ends.)
        self.addCleanup(stopAdding)
        add()

        tools = yield launchBrowser(self, chromium)
        target = yield tools.call("Target.createTarget", {"url": "about:blank"})
        attached = yield tools.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        session = attached["sessionId"]
        yield tools.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
            session,
        )
        yield tools.call("Page.navigate", {"url": page}, session)

        @inlineCallbacks
        def evaluate(expression: str) -> Any:
            result = yield tools.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
            return result.get("result", {}).get("value")

        rowsJS = (
            "Array.from(document.querySelectorAll('#running tbody tr'))"
            ".map(r => Array.from(r.cells).map(c => c.textContent))"
        )
        rows: Any = None
        for _ in range(200):
            rows = yield evaluate(rowsJS)
            sleeps = [r for r in rows or [] if len(r) == 5 and r[1] == "sleep"]
            if len(sleeps) == 2:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([(r[0], r[1], r[3]) for r in sleeps], [("1", "sleep", peer), ("2", "sleep", peer)])
        first = yield evaluate("window.taskdStatus.updates")
        loaded = yield evaluate("performance.timeOrigin")
        for _ in range(50):
            yield deferLater(reactor, 0.1, lambda: None)
            updates = yield evaluate("window.taskdStatus.updates")
            if updates >= first + 2:
                break
        self.assertGreaterEqual(updates, first + 2)
        self.assertEqual((yield evaluate("performance.timeOrigin")), loaded)  # not reloaded
        health = yield evaluate("document.getElementById('health').textContent")
        self.assertEqual(health, "healthy")
        workers = yield evaluate(
            "Array.from(document.querySelectorAll('#workers tbody tr')).map(r => r.cells[2].textContent)"
        )
        self.assertEqual(sorted(w for w in workers if w.startswith("sleep")), ["sleep #1", "sleep #2"])
        rate = yield evaluate("document.getElementById('callsLine').getAttribute('points').split(' ').length")
        self.assertGreater(rate, 100)
        overflow = yield evaluate("document.documentElement.scrollWidth - window.innerWidth")
        self.assertLessEqual(overflow, 0)
        shot = yield tools.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
        path = os.path.abspath(os.path.join(self.mktemp() + "-status.png"))
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        print(f"\nstatus page screenshot: {path}")
        self.process.signalProcess("KILL")
        yield daemon.ended
