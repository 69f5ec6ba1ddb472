# -*- test-case-name: tests.test_web -*-
"""
The daemon's HTTP side (C{--http}): C{/metrics} for Prometheus,
C{/healthz} for load balancers and systemd, C{/} a live status page for
people and C{/events}, the Server-Sent Events stream that keeps it up to
date.

The status page is one static file, C{taskd/status.html} (no build
step, nothing fetched from elsewhere); it opens C{/events} and redraws
itself from each snapshot (L{taskd.activity.Activity.snapshot}) sent
every L{UPDATE_INTERVAL} seconds while someone watches.

With a token (C{--http-token-file}), every path but C{/healthz} needs it,
as C{Authorization: Bearer TOKEN} or C{?token=TOKEN} (a browser's
C{EventSource} cannot send headers; the status page passes on the one in
its own address).  C{/healthz} tells only whether the daemon takes calls.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from importlib import resources
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from taskd.activity import Activity
from taskd.listeners import isLoopback, splitDescription

#: Seconds between two updates of the status page.
UPDATE_INTERVAL = 1.0


def httpExposureWarnings(description: str, token: bool) -> list[str]:
    """
    @param token: whether the HTTP side needs a token.
    @return: what is unsafe about serving C{--http} on C{description}: a
        network address beyond loopback without a token (anyone who can
        reach it sees the daemon's calls, their peers and its metrics) or
        without TLS (the token crosses the network in clear text).
    """
    kind, _, kwargs = splitDescription(description)
    if kind not in ("tcp", "tcp6", "ssl"):
        return []
    interface = kwargs.get("interface", "")
    if isLoopback(interface):
        return []
    where = interface or "all interfaces"
    warnings = []
    if not token:
        warnings.append(
            f"--http {description} listens on {where} without a token: anyone "
            "who can reach it sees the daemon's metrics, its running calls and "
            "their peers; set --http-token-file or listen on loopback"
        )
    elif kind != "ssl":
        warnings.append(
            f"--http {description} listens on {where} without TLS: the HTTP "
            "token crosses the network in clear text; use ssl:"
        )
    return warnings


def httpDescription(value: str) -> str:
    """
    @return: the endpoint string that C{--http VALUE} means: a bare port
        is C{tcp:PORT:interface=127.0.0.1}.
    """
    return f"tcp:{value}:interface=127.0.0.1" if value.isdigit() else value


def statusPage() -> bytes:
    """
    @return: the status page, as shipped in the package.
    """
    return resources.files("taskd").joinpath("status.html").read_bytes()


class _Page(Resource):
    isLeaf = True

    def __init__(self, body: bytes, contentType: bytes) -> None:
        super().__init__()
        self._body = body
        self._contentType = contentType

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", self._contentType)
        request.setHeader(b"Cache-Control", b"no-store")
        return self._body


class HealthResource(Resource):
    """
    C{/healthz}: C{200 ok} when the pool has a ready worker and the daemon
    is not draining; C{503} and why otherwise.
    """

    isLeaf = True

    def __init__(self, problem: Callable[[], str | None]) -> None:
        """
        @param problem: returns why the daemon is not healthy, or C{None}.
        """
        super().__init__()
        self._problem = problem

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        problem = self._problem()
        if problem is None:
            return b"ok\n"
        request.setResponseCode(503)
        return problem.encode("utf-8") + b"\n"


class EventsResource(Resource):
    """
    C{/events}: a Server-Sent Events stream of the status page's
    snapshots, one at once and one every L{UPDATE_INTERVAL} seconds.  One
    timer serves every watcher, and runs only while someone watches.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, clock: IReactorTime, snapshot: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._snapshot = snapshot
        self._watchers: set[Request] = set()
        self._loop = LoopingCall(self._send)
        self._loop.clock = clock

    def render_GET(self, request: Request) -> object:
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.write(b"retry: 2000\n\n")
        self._watchers.add(request)
        request.notifyFinish().addBoth(lambda _: self._gone(request))
        if not self._loop.running:
            self._loop.start(UPDATE_INTERVAL, now=True)
        else:
            request.write(self._event())
        return NOT_DONE_YET

    @property
    def watchers(self) -> int:
        """
        How many streams are open.
        """
        return len(self._watchers)

    def _event(self) -> bytes:
        data = json.dumps(self._snapshot(), separators=(",", ":"))
        return b"event: status\ndata: " + data.encode("utf-8") + b"\n\n"

    def _send(self) -> None:
        if not self._watchers:
            return
        try:
            event = self._event()
        except Exception:
            self.log.failure("the status page's snapshot failed")
            return
        for request in list(self._watchers):
            request.write(event)

    def _gone(self, request: Request) -> None:
        self._watchers.discard(request)
        if not self._watchers and self._loop.running:
            self._loop.stop()

    def closeAll(self) -> None:
        """
        End every stream (the daemon is stopping).
        """
        for request in list(self._watchers):
            self._watchers.discard(request)
            request.finish()
        if self._loop.running:
            self._loop.stop()


class TokenGuard(Resource):
    """
    The root of the HTTP side: hands each path to its resource, after
    checking the token where one is needed.
    """

    def __init__(self, token: str | None, open: set[bytes]) -> None:
        """
        @param token: the token requests must carry, or C{None}.
        @param open: the paths (first segments) that need no token.
        """
        super().__init__()
        self._digest = None if token is None else hashlib.sha256(token.encode("utf-8")).digest()
        self._open = open

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if self._digest is not None and path not in self._open and not self._allowed(request):
            return _Refused()
        child: IResource = super().getChildWithDefault(path, request)
        return child

    def _allowed(self, request: Request) -> bool:
        assert self._digest is not None
        header = request.getHeader(b"authorization") or b""
        given: bytes | None = header[7:] if header.startswith(b"Bearer ") else None
        if given is None:
            values = (request.args or {}).get(b"token")
            given = values[0] if values else None
        if given is None:
            return False
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._digest)


class _Refused(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="taskd"')
        return b"this needs the HTTP token: Authorization: Bearer TOKEN, or ?token=TOKEN\n"


class Web:
    """
    The HTTP side of a daemon: its resources, and the C{Site} serving them.

    @ivar site: the C{Site} to listen with.
    @ivar events: the status page's event stream.
    @ivar activity: what it shows.
    @ivar hasToken: whether its paths need a token.
    """

    def __init__(
        self,
        clock: IReactorTime,
        activity: Activity,
        stats: Callable[[], dict[str, Any]],
        problem: Callable[[], str | None],
        token: str | None = None,
        metrics: Resource | None = None,
    ) -> None:
        """
        @param stats: returns the daemon's counters (the C{stats} reply).
        @param problem: returns why the daemon is not healthy, or C{None}.
        @param metrics: serves C{/metrics}, if given.
        """
        self.activity = activity
        self.hasToken = token is not None
        root = TokenGuard(token, {b"healthz"})
        root.putChild(b"", _Page(statusPage(), b"text/html; charset=utf-8"))
        root.putChild(b"healthz", HealthResource(problem))
        self.events = EventsResource(
            clock, lambda: {**activity.snapshot(stats()), "health": problem() or "ok"}
        )
        root.putChild(b"events", self.events)
        if metrics is not None:
            root.putChild(b"metrics", metrics)
        self.site = StatusSite(root)
        self.site.displayTracebacks = False

    def close(self) -> None:
        """
        End the status page's streams and the activity's timer (the daemon
        is stopping).
        """
        self.events.closeAll()
        self.activity.stop()


class StatusSite(Site):
    """
    A C{Site} that keeps no access log: a scrape every few seconds and a
    status page's stream would fill the daemon's log.
    """

    noisy = False

    def log(self, request: Any) -> None:
        """
        Log nothing.
        """
