"""
The scenario taskd exists for: a WebSocket server that must stay
responsive mails many users by handing the work to taskd.

A browser (or any WebSocket client) connects to C{/ws} and sends
C{{"action": "mail", "users": 1000}}.  The server hands one C{send_mail}
task per user to taskd (one per user, not batches: each failure then names
its recipient, and taskd's per-call cost is a few tens of microseconds),
keeps at most 100 in flight, streams C{{"type": "progress", ...}} and
finally sends C{{"type": "done", "sent": ..., "failed": ..., "failures":
[...]}}.  C{{"action": "ping", "t": ...}} is answered with a pong at once,
even while mail goes out.  C{/} serves a page with a button and a progress
bar.

    PYTHONPATH=docs/examples twistd -n taskd --tasks mailer_tasks &
    python docs/examples/smtpsink.py 2525 &
    PYTHONPATH=docs/examples python docs/examples/wsmailer.py 8080 2525
    # then open http://127.0.0.1:8080/
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet.defer import DeferredSemaphore
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from twisted.web.websocket import WebSocketResource

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>taskd mailer</title></head>
<body>
<h1>Mail the users</h1>
<p><input id="users" type="number" value="1000" min="1"> users
<button id="go">Send</button></p>
<p><progress id="bar" value="0" max="100"></progress> <span id="status">idle</span></p>
<script>
document.getElementById("go").onclick = function () {
  var users = parseInt(document.getElementById("users").value, 10);
  var ws = new WebSocket("ws://" + location.host + "/ws");
  var bar = document.getElementById("bar"), status = document.getElementById("status");
  ws.onopen = function () { ws.send(JSON.stringify({action: "mail", users: users})); };
  ws.onmessage = function (event) {
    var m = JSON.parse(event.data);
    if (m.type === "progress" || m.type === "done") {
      bar.max = m.total;
      bar.value = m.sent + m.failed;
      status.textContent = (m.type === "done" ? "done: " : "") + m.sent + " sent, " + m.failed + " failed";
    }
  };
};
</script>
</body></html>
"""


class Mailer:
    """
    Sends a batch of mails through taskd (or, for contrast, inline).

    @param client: a L{taskd.reconnecting.ReconnectingClient} (or L{TaskClient}).
    @param inline: send in the reactor thread instead, blocking it: what
        taskd is there to avoid.
    """

    def __init__(self, client: Any, smtpPort: int, smtpHost: str = "127.0.0.1", inline: bool = False) -> None:
        self.client = client
        self.smtp = {"smtpHost": smtpHost, "smtpPort": smtpPort}
        self.inline = inline

    def send(self, peer: MailerProtocol, users: int) -> None:
        counts = {"sent": 0, "failed": 0}
        failures: list[dict[str, str]] = []
        every = max(1, users // 100)

        def report(kind: str) -> None:
            message: dict[str, Any] = {"type": kind, "total": users, **counts}
            if kind == "done":
                message["failures"] = failures
            peer.send(message)

        def ended(ok: bool, to: str, error: str = "") -> None:
            counts["sent" if ok else "failed"] += 1
            if not ok:
                failures.append({"to": to, "error": error})
            finished = counts["sent"] + counts["failed"]
            if finished == users:
                report("done")
            elif finished % every == 0:
                report("progress")

        addresses = [f"user{i:04d}@example.com" for i in range(users)]
        if self.inline:
            from mailer_tasks import send_mail

            for to in addresses:
                try:
                    send_mail(to, "hello", "Hello from taskd.", **self.smtp)
                except Exception as e:
                    ended(False, to, f"{type(e).__name__}: {e}")
                else:
                    ended(True, to)
            return

        slots = DeferredSemaphore(100)

        def one(to: str) -> Any:
            d = self.client.call("send_mail", to=to, subject="hello", body="Hello from taskd.", **self.smtp)

            def failed(f: Failure) -> None:
                error = f.value
                ended(False, to, str(error))

            return d.addCallbacks(lambda _: ended(True, to), failed)

        for to in addresses:
            slots.run(one, to)


class MailerProtocol:
    """
    One WebSocket client of the mailer.
    """

    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer
        self.transport: Any = None
        self.gone = False

    def negotiationStarted(self, transport: Any) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        pass

    def pongReceived(self, payload: bytes) -> None:
        pass

    def textMessageReceived(self, message: str) -> None:
        request = json.loads(message)
        if request.get("action") == "ping":
            self.send({"type": "pong", "t": request.get("t")})
        elif request.get("action") == "mail":
            self.mailer.send(self, int(request["users"]))

    def bytesMessageReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.gone = True

    def send(self, message: dict[str, Any]) -> None:
        if not self.gone:
            self.transport.sendTextMessage(json.dumps(message))


class _Factory:
    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer

    def buildProtocol(self, request: Any) -> MailerProtocol:
        return MailerProtocol(self.mailer)


def makeSite(mailer: Mailer) -> Site:
    root = Resource()
    root.putChild(b"", Data(PAGE, "text/html; charset=utf-8"))
    root.putChild(b"ws", WebSocketResource(_Factory(mailer)))
    return Site(root)


def main(reactor: Any, port: str = "8080", smtpPort: str = "2525", daemon: str | None = None) -> Any:
    """
    Serve the page and the WebSocket on 127.0.0.1:C{port}, mailing through
    the SMTP server on C{smtpPort} and the taskd daemon at C{daemon}
    (default: C{$TASKD_CONNECT}, else C{tcp:127.0.0.1:12345}); say where
    once listening.
    """
    import os

    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from taskd.reconnecting import ReconnectingClient

    if daemon is None:
        daemon = os.environ.get("TASKD_CONNECT", "tcp:127.0.0.1:12345")
    client = ReconnectingClient(reactor, [daemon])
    client.startService()

    def listening(listeningPort: Any) -> None:
        print(
            f"mailer on http://127.0.0.1:{listeningPort.getHost().port}/ "
            f"(taskd at {daemon}, SMTP at 127.0.0.1:{smtpPort}); Ctrl-C stops it",
            flush=True,
        )

    d = TCP4ServerEndpoint(reactor, int(port), interface="127.0.0.1").listen(makeSite(Mailer(client, int(smtpPort))))
    d.addCallback(listening)
    return d.addCallback(lambda _: Deferred())


if __name__ == "__main__":
    from twisted.internet.task import react

    react(main, sys.argv[1:])
