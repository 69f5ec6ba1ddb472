"""
The scenario taskd exists for: a WebSocket server that must stay
responsive mails many users by handing the work to taskd, as background
jobs.

A browser (or any WebSocket client) connects to C{/ws} and sends
C{{"action": "mail", "users": 1000}}.  The server answers with the
batch's id (C{{"type": "batch", "batch": ...}}) and queues one
C{send_mail} job per user (one per user, not batches: each failure then
names its recipient), keyed C{mailer:BATCH:N}, at most 100 waited for at
once; it streams C{{"type": "progress", ...}} and finally sends
C{{"type": "done", "sent": ..., "failed": ..., "failures": [...]}}.
C{{"action": "mail", "users": 1000, "batch": ID}} watches (or finishes
queueing) a batch already started: its jobs' keys make the daemon answer
with the jobs it has, so a reloaded page, a reconnected WebSocket or a
restarted mailer shows the batch where it is, and nothing is sent twice.
The jobs are in the daemon's journal: a daemon restart in the middle of a
batch loses none of them (waits and submits cut by it are tried again).
C{{"action": "ping", "t": ...}} is answered with a pong at once, even
while mail goes out.  C{/} serves a page with a button and a progress bar
that remembers its batch (C{localStorage}) across reloads.

    PYTHONPATH=docs/examples twistd -n taskd --tasks mailer_tasks &
    python docs/examples/smtpsink.py 2525 &
    PYTHONPATH=docs/examples python docs/examples/wsmailer.py 8080 2525
    # then open http://127.0.0.1:8080/
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from twisted.web.websocket import WebSocketResource
from wsproto.utilities import LocalProtocolError

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>taskd mailer</title></head>
<body>
<h1>Mail the users</h1>
<p><input id="users" type="number" value="1000" min="1"> users
<button id="go">Send</button></p>
<p><progress id="bar" value="0" max="100"></progress> <span id="status">idle</span></p>
<script>
var bar = document.getElementById("bar"), statusLine = document.getElementById("status");
function watch(batch) {
  // batch: {users: N, batch: ID or undefined}; kept until the batch is done.
  var ws = new WebSocket("ws://" + location.host + "/ws");
  ws.onopen = function () { ws.send(JSON.stringify({action: "mail", users: batch.users, batch: batch.batch})); };
  ws.onmessage = function (event) {
    var m = JSON.parse(event.data);
    if (m.type === "batch") {
      batch.batch = m.batch;
      localStorage.setItem("mailerBatch", JSON.stringify(batch));
    } else if (m.type === "progress" || m.type === "done") {
      bar.max = m.total;
      bar.value = m.sent + m.failed;
      statusLine.textContent = (m.type === "done" ? "done: " : "") + m.sent + " sent, " + m.failed + " failed";
      if (m.type === "done") { localStorage.removeItem("mailerBatch"); ws.onclose = null; ws.close(); }
    }
  };
  // The mailer restarted: watch the batch again.
  ws.onclose = function () { setTimeout(function () { watch(batch); }, 1000); };
}
document.getElementById("go").onclick = function () {
  watch({users: parseInt(document.getElementById("users").value, 10)});
};
var kept = localStorage.getItem("mailerBatch");
if (kept) { watch(JSON.parse(kept)); }
</script>
</body></html>
"""


#: Errors after which a submit or a wait is tried again: the daemon is
#: restarting (its jobs are in its journal, and the keys make a second
#: submit answer with the first job).
AGAIN = ("connection_lost", "not_connected", "stopping", "journal_unavailable", "busy")


class Batch:
    """
    One batch of mails: its counts, and the connections watching it.
    """

    def __init__(self, batch: str, users: int) -> None:
        self.batch = batch
        self.users = users
        self.counts = {"sent": 0, "failed": 0}
        self.failures: list[dict[str, str]] = []
        self.watchers: set[MailerProtocol] = set()

    def message(self, kind: str) -> dict[str, Any]:
        message: dict[str, Any] = {"type": kind, "batch": self.batch, "total": self.users, **self.counts}
        if kind == "done":
            message["failures"] = self.failures
        return message

    def finished(self) -> bool:
        return self.counts["sent"] + self.counts["failed"] == self.users

    def tell(self, peer: MailerProtocol) -> None:
        peer.send(self.message("done" if self.finished() else "progress"))

    def ended(self, ok: bool, to: str, error: str = "") -> None:
        self.counts["sent" if ok else "failed"] += 1
        if not ok:
            self.failures.append({"to": to, "error": error})
        finished = self.counts["sent"] + self.counts["failed"]
        if finished == self.users or finished % max(1, self.users // 100) == 0:
            for peer in list(self.watchers):
                self.tell(peer)


class Mailer:
    """
    Sends batches of mails through taskd's background jobs (or, for
    contrast, inline).

    @param client: a L{taskd.reconnecting.ReconnectingClient} (or L{TaskClient}).
    @param inline: send in the reactor thread instead, blocking it: what
        taskd is there to avoid.
    @param retryDelay: seconds before a submit or a wait cut by a daemon
        restart is tried again.
    """

    def __init__(
        self, client: Any, smtpPort: int, smtpHost: str = "127.0.0.1", inline: bool = False,
        reactor: Any = None, retryDelay: float = 0.5,
    ) -> None:
        self.client = client
        self.smtp = {"smtpHost": smtpHost, "smtpPort": smtpPort}
        self.inline = inline
        self.retryDelay = retryDelay
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.batches: dict[str, Batch] = {}

    def send(self, peer: MailerProtocol, users: int, batchId: str | None = None) -> None:
        """
        Start a batch of C{users} mails, or (given its id) watch one: the
        peer gets where it is at once, then its progress.
        """
        if batchId is None:
            batchId = uuid.uuid4().hex[:12]
        batch = self.batches.get(batchId)
        peer.send({"type": "batch", "batch": batchId, "total": users})
        if batch is None:
            batch = self.batches[batchId] = Batch(batchId, users)
            self._start(batch)
        batch.watchers.add(peer)
        peer.watching.add(batch)
        batch.tell(peer)

    def _start(self, batch: Batch) -> None:
        addresses = [f"user{i:04d}@example.com" for i in range(batch.users)]
        if self.inline:
            from mailer_tasks import send_mail

            for to in addresses:
                try:
                    send_mail(to, "hello", "Hello from taskd.", **self.smtp)
                except Exception as e:
                    batch.ended(False, to, f"{type(e).__name__}: {e}")
                else:
                    batch.ended(True, to)
            return

        slots = DeferredSemaphore(100)

        def one(n: int, to: str) -> Deferred[None]:
            done: Deferred[None] = Deferred()

            def submit() -> None:
                kwargs = {"to": to, "subject": "hello", "body": "Hello from taskd.", **self.smtp}
                self.client.submitWith(
                    "send_mail", (), kwargs, key=f"mailer:{batch.batch}:{n}"
                ).addCallbacks(wait, lambda f: failed(f, submit))

            def wait(handle: Any) -> None:
                handle.result().addCallbacks(
                    lambda _: finish(True), lambda f: failed(f, lambda: wait(handle))
                )

            def failed(f: Failure, again: Callable[[], None]) -> None:
                if getattr(f.value, "type", None) in AGAIN:
                    self.reactor.callLater(self.retryDelay, again)
                else:
                    finish(False, str(f.value))

            def finish(ok: bool, error: str = "") -> None:
                batch.ended(ok, to, error)
                done.callback(None)

            submit()
            return done

        for n, to in enumerate(addresses):
            slots.run(one, n, to)


class MailerProtocol:
    """
    One WebSocket client of the mailer.
    """

    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer
        self.transport: Any = None
        self.gone = False
        self.watching: set[Batch] = set()

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
            self.mailer.send(self, int(request["users"]), request.get("batch"))

    def bytesMessageReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.gone = True
        for batch in self.watching:
            batch.watchers.discard(self)

    def send(self, message: dict[str, Any]) -> None:
        if self.gone:
            return
        try:
            self.transport.sendTextMessage(json.dumps(message))
        except LocalProtocolError:
            # The page closed the WebSocket; its connection is not yet
            # lost (connectionLost comes later): nobody to tell.
            self.gone = True


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

    d = TCP4ServerEndpoint(reactor, int(port), interface="127.0.0.1").listen(
        makeSite(Mailer(client, int(smtpPort), reactor=reactor))
    )
    d.addCallback(listening)
    return d.addCallback(lambda _: Deferred())


if __name__ == "__main__":
    from twisted.internet.task import react

    react(main, sys.argv[1:])
