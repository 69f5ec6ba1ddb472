"""
A Twisted web server that stays responsive while it mails many users.

    GET /mail?users=1000   hands one pretend_mail call per user to taskd and
                           answers, when every call has ended, with
                           {"sent": ..., "failed": [...]}
    GET /ping              answers at once, even while mail is going out

Run (with a daemon serving mail_tasks on 127.0.0.1:12345):

    PYTHONPATH=docs/examples twistd -n taskd --tasks mail_tasks &
    PYTHONPATH=docs/examples python docs/examples/webapp.py 8080
    curl 'http://127.0.0.1:8080/mail?users=100'
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from taskd.reconnecting import ReconnectingClient


class Mail(Resource):
    isLeaf = True

    def __init__(self, client: ReconnectingClient) -> None:
        super().__init__()
        self.client = client

    def render_GET(self, request: Request) -> Any:
        users = int(request.args.get(b"users", [b"10"])[0])
        calls = [
            self.client.call("pretend_mail", to=f"user{i}@example.com" if i % 50 else f"user{i}", subject="hello")
            for i in range(users)
        ]
        gone: list[bool] = []

        def clientLeft(_: object) -> None:
            gone.append(True)
            for call in calls:
                call.cancel()  # frees the daemon's workers

        request.notifyFinish().addErrback(clientLeft)
        done = DeferredList(calls, consumeErrors=True)
        done.addCallback(self.finished, request, gone)
        # The reactor is free meanwhile: other requests are served.
        return NOT_DONE_YET

    def finished(self, results: list[tuple[bool, Any]], request: Request, gone: list[bool]) -> None:
        if gone:
            return
        failed = [f.value.message for ok, f in results if not ok]
        request.setHeader(b"content-type", b"application/json")
        request.write(json.dumps({"sent": len(results) - len(failed), "failed": failed}).encode())
        request.finish()


class Ping(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"pong"


def makeSite(client: ReconnectingClient) -> Site:
    root = Resource()
    root.putChild(b"mail", Mail(client))
    root.putChild(b"ping", Ping())
    return Site(root)


def main(reactor: Any, port: str = "8080", daemon: str = "tcp:127.0.0.1:12345") -> Deferred[None]:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    client = ReconnectingClient(reactor, [daemon])
    client.startService()
    TCP4ServerEndpoint(reactor, int(port), interface="127.0.0.1").listen(makeSite(client))
    return Deferred()  # run until interrupted


if __name__ == "__main__":
    from twisted.internet.task import react

    react(main, sys.argv[1:])
