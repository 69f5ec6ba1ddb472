"""
Security tests: TLS with verified identities, mutual TLS, the shared
token over real connections, start-up warnings, and that nothing from the
network is unpickled or evaluated.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import SynchronousTestCase, TestCase

from taskd import errors
from taskd.client import connect
from taskd.reconnecting import ReconnectingClient
from taskd.pool import ProcessPool
from taskd.server import TaskServerFactory
from taskd.listeners import exposureWarnings

from tests.certs import Authority
from tests.test_tap import ROOT


class TLSTests(TestCase):
    """
    Real TLS on 127.0.0.1 with certificates made for the test.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ca = Authority(self.dir, "taskd-test")
        self.rogue = Authority(self.dir, "rogue")
        self.pool = ProcessPool(reactor, tasks=["taskd.examples"], workers=1, killGrace=1.0)
        yield self.pool.start()
        self.addCleanup(self.pool.stop)

    @inlineCallbacks
    def listen(self, description: str, **kw: Any) -> Any:
        port = yield serverFromString(reactor, description).listen(TaskServerFactory(self.pool, **kw))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def ssl(self, authority: Authority, hostnames: list[str]) -> str:
        cert, key = authority.issue("server-" + hostnames[0], hostnames)
        return f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"

    @inlineCallbacks
    def test_roundTripHostnameVerified(self) -> Any:
        """
        A C{tls:} client that trusts the CA reaches a daemon whose
        certificate names the host it dialled.
        """
        port = yield self.listen(self.ssl(self.ca, ["localhost", "127.0.0.1"]))
        client = yield connect(reactor, f"tls:localhost:{port}:trustRoots={self.ca.trustDir}")
        self.addCleanup(client.close)
        self.assertEqual((yield client.call("add", 20, 22)), 42)

    @inlineCallbacks
    def test_wrongHostnameRefused(self) -> Any:
        """
        A certificate for another name fails the connection, with the
        verification error in the message.
        """
        port = yield self.listen(self.ssl(self.ca, ["other.example"]))
        e = yield self.assertFailure(
            connect(reactor, f"tls:localhost:{port}:trustRoots={self.ca.trustDir}"), errors.ConnectionLost
        )
        self.assertIn("localhost", e.message)
        self.assertRegex(e.message, r"(?i)verif|certificate|hostname")

    @inlineCallbacks
    def test_untrustedCARefused(self) -> Any:
        """
        A certificate from a CA the client does not trust fails the
        connection.
        """
        port = yield self.listen(self.ssl(self.rogue, ["localhost"]))
        e = yield self.assertFailure(
            connect(reactor, f"tls:localhost:{port}:trustRoots={self.ca.trustDir}"), errors.ConnectionLost
        )
        self.assertRegex(e.message, r"(?i)certificate verify failed|unknown ca|self.signed|verif")

    @inlineCallbacks
    def test_mutualTLS(self) -> Any:
        """
        An C{mtls:} daemon serves a client whose certificate its client CA
        issued, and refuses one without a certificate or with one from
        another CA.
        """
        cert, key = self.ca.issue("server", ["localhost"])
        clientsCA = Authority(self.dir, "clients")
        port = yield self.listen(f"mtls:0:interface=127.0.0.1:privateKey={key}:certKey={cert}:caCerts={clientsCA.certPath}")
        base = f"tls:localhost:{port}:trustRoots={self.ca.trustDir}"
        goodCert, goodKey = clientsCA.issue("alice", ["alice"], client=True)
        client = yield connect(reactor, f"{base}:certificate={goodCert}:privateKey={goodKey}")
        self.addCleanup(client.close)
        self.assertEqual((yield client.call("add", 1, 2)), 3)
        yield self.assertFailure(connect(reactor, base), errors.ConnectionLost)
        badCert, badKey = self.rogue.issue("mallory", ["mallory"], client=True)
        yield self.assertFailure(connect(reactor, f"{base}:certificate={badCert}:privateKey={badKey}"), errors.ConnectionLost)

    @inlineCallbacks
    def test_tokenOverTCP(self) -> Any:
        """
        With a token required, the right token connects, a wrong or
        missing one fails with L{errors.Unauthenticated}; the reconnecting
        client authenticates each connection.
        """
        port = yield self.listen("tcp:0:interface=127.0.0.1", authToken="s3cret")
        client = yield connect(reactor, f"tcp:127.0.0.1:{port}", token="s3cret")
        self.addCleanup(client.close)
        self.assertEqual((yield client.call("add", 1, 2)), 3)
        e = yield self.assertFailure(connect(reactor, f"tcp:127.0.0.1:{port}", token="nope"), errors.Unauthenticated)
        self.assertEqual(e.message, "the token is wrong")
        e = yield self.assertFailure(connect(reactor, f"tcp:127.0.0.1:{port}"), errors.Unauthenticated)
        self.assertEqual(e.message, "this daemon requires a token and the hello carried none")
        service = ReconnectingClient(reactor, [f"tcp:127.0.0.1:{port}"], token="s3cret")
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual((yield service.call("add", 2, 2)), 4)
        wrong = ReconnectingClient(reactor, [f"tcp:127.0.0.1:{port}"], token="nope", waitTimeout=0.5)
        wrong.startService()
        self.addCleanup(wrong.stopService)
        yield self.assertFailure(wrong.call("add", 2, 2), errors.NotConnected)
        self.assertEqual(wrong.connectedCount(), 0)


class WarningTests(SynchronousTestCase):
    def test_exposure(self) -> None:
        """
        Loopback and UNIX listeners are quiet; a network address warns
        about clear text without TLS and about missing authentication
        without a token (or mutual TLS).
        """
        self.assertEqual(exposureWarnings("tcp:12345:interface=127.0.0.1", False), [])
        self.assertEqual(exposureWarnings("tcp6:12345:interface=\\:\\:1", False), [])
        self.assertEqual(exposureWarnings("unix:/run/taskd.sock", False), [])
        self.assertEqual(
            exposureWarnings("tcp:12345", False),
            [
                "tcp:12345 listens on all interfaces without TLS: calls, results cross the network in clear text; use ssl: or mtls:",
                "tcp:12345 listens on all interfaces without authentication: anyone who can reach it can run tasks; set --auth-token-file or use mtls:",
            ],
        )
        self.assertEqual(
            exposureWarnings("tcp:12345:interface=10.0.0.5", True),
            ["tcp:12345:interface=10.0.0.5 listens on 10.0.0.5 without TLS: calls, results and the auth token cross the network in clear text; use ssl: or mtls:"],
        )
        self.assertEqual(len(exposureWarnings("ssl:12345:privateKey=k:certKey=c", False)), 1)
        self.assertEqual(exposureWarnings("ssl:12345:privateKey=k:certKey=c", True), [])
        self.assertEqual(exposureWarnings("mtls:12345:privateKey=k:certKey=c:caCerts=a", False), [])


class SourceTests(SynchronousTestCase):
    def test_noPickleOrEval(self) -> None:
        """
        No module of the package unpickles, unmarshals, evaluates or
        executes anything.
        """
        pattern = re.compile(r"\b(pickle|marshal|shelve)\b|(?<![.\w])(eval|exec|compile)\s*\(")
        found = []
        package = os.path.join(ROOT, "taskd")
        for name in sorted(os.listdir(package)):
            if name.endswith(".py"):
                with open(os.path.join(package, name), encoding="utf-8") as f:
                    for number, line in enumerate(f, 1):
                        if pattern.search(line.split("#")[0]):
                            found.append(f"{name}:{number}: {line.strip()}")
        self.assertEqual(found, [])
        self.assertTrue(pattern.search("data = pickle.loads(x)"))
        self.assertTrue(pattern.search("eval(text)"))
        self.assertTrue(pattern.search("import marshal"))
        self.assertFalse(pattern.search("re.compile(text)"))
