"""
Runs the embedding example, C{docs/examples/webapp.py}: a web server that
hands mail to taskd stays responsive and reports when the batch is done.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from taskd.reconnecting import ReconnectingClient
from taskd.pool import ProcessPool
from taskd.server import TaskServerFactory

from tests.test_tap import ROOT

EXAMPLES = os.path.join(ROOT, "docs", "examples")


class WebAppExampleTests(TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        if EXAMPLES not in sys.path:
            sys.path.insert(0, EXAMPLES)
            self.addCleanup(sys.path.remove, EXAMPLES)
        import webapp

        pool = ProcessPool(reactor, tasks=["mail_tasks"], workers=2, killGrace=1.0)
        yield pool.start()
        self.addCleanup(pool.stop)
        daemon = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(TaskServerFactory(pool))
        self.addCleanup(daemon.stopListening)
        client = ReconnectingClient(reactor, [f"tcp:127.0.0.1:{daemon.getHost().port}"])
        client.startService()
        self.addCleanup(client.stopService)
        web = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(webapp.makeSite(client))
        self.addCleanup(web.stopListening)
        self.base = f"http://127.0.0.1:{web.getHost().port}".encode()
        self.agent = Agent(reactor)

    @inlineCallbacks
    def get(self, path: bytes) -> Any:
        response = yield self.agent.request(b"GET", self.base + path)
        body = yield readBody(response)
        return response.code, body

    @inlineCallbacks
    def test_mailWhileResponsive(self) -> Any:
        """
        While 100 mails (50 ms of blocking work each, 2.5 s on 2 workers)
        go out, pings are answered; the mail request then reports 98 sent
        and the 2 refused addresses.
        """
        mail = self.get(b"/mail?users=100")
        pings = 0
        while not mail.called:
            code, body = yield self.get(b"/ping")
            self.assertEqual((code, body), (200, b"pong"))
            pings += 1
        code, body = yield mail
        self.assertEqual(code, 200)
        report = json.loads(body)
        self.assertEqual(report["sent"], 98)
        self.assertEqual(len(report["failed"]), 2)
        self.assertIn("not an address: 'user0'", report["failed"][0])
        # Every ping came back while the batch was in flight.
        self.assertGreater(pings, 1)
