# -*- test-case-name: tests.test_tap -*-
"""
C{twistd taskd}: command-line options and the daemon's service tree.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, Callable, MutableMapping, Sequence

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python import usage

from taskd.config import PoolConfig
from taskd.pool import PoolService, ProcessPool
from taskd.registry import loadTaskModules
from taskd.server import DEFAULT_MAX_LINE, TaskServerFactory
from taskd.server import DEFAULT_IDLE_TIMEOUT, DEFAULT_LINE_TIMEOUT, TRACEBACK_MODES

DEFAULT_LISTEN = "tcp:12345:interface=127.0.0.1"
DEFAULT_TASKS = "taskd.examples"


def _positiveInt(value: str) -> int:
    n = int(value)
    if n < 1:
        raise ValueError(f"must be at least 1, not {n}")
    return n


def _nonNegativeInt(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"must not be negative, not {n}")
    return n


def _seconds(value: str) -> float:
    n = float(value)
    if not n >= 0 or n == float("inf"):
        raise ValueError(f"must be a number of seconds, not {value!r}")
    return n


def _tracebackMode(value: str) -> str:
    if value not in TRACEBACK_MODES:
        raise ValueError(f"must be one of {', '.join(TRACEBACK_MODES)}, not {value!r}")
    return value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run registered Python tasks in a pool of worker processes and serve "
        "them over a JSON-lines protocol (see docs/protocol.md). With no "
        f"options it runs the example tasks ({DEFAULT_TASKS}) on "
        f"{DEFAULT_LISTEN} with one worker per CPU."
    )

    optParameters = [
        ["workers", "w", None, "Worker processes [default: CPU count].", _positiveInt],
        ["max-queue", None, 1000, "Calls that may wait for a worker.", _nonNegativeInt],
        ["timeout", "t", None, "Default (and longest) run time of a call, in seconds [default: none].", _seconds],
        ["max-tasks-per-worker", None, None, "Replace a worker after this many calls [default: never].", _positiveInt],
        ["max-line-length", None, DEFAULT_MAX_LINE, "Longest request line, in bytes.", _positiveInt],
        ["max-connections", None, 1000, "Connections accepted at once.", _positiveInt],
        ["max-in-flight", None, 100, "Unanswered requests per connection before it stops being read.", _positiveInt],
        ["grace", None, 10.0, "On shutdown, seconds running calls may go on.", _seconds],
        ["kill-grace", None, 5.0, "Seconds between SIGTERM and SIGKILL for a worker.", _seconds],
        ["prefetch", None, 1, "Calls a worker may hold at once (more than 1 sends the next calls ahead: faster for short tasks; a long task delays those behind it).", _positiveInt],
        ["max-memory", None, None, "Address-space limit of each worker, in MiB [default: none].", _positiveInt],
        ["max-worker-rss", None, None, "Replace a worker whose resident memory is above this many MiB after a call; the call is answered as usual [default: no limit].", _positiveInt],
        ["auth-token-file", None, None, "A file holding the shared secret clients must send in their hello [default: no authentication]."],
        ["auth-timeout", None, 10.0, "Seconds a connection may take to authenticate.", _seconds],
        ["idle-timeout", None, DEFAULT_IDLE_TIMEOUT, "Close a connection with no call in flight that sent nothing for this many seconds (0: never).", _seconds],
        ["line-timeout", None, DEFAULT_LINE_TIMEOUT, "Close a connection that started a request line and did not finish it within this many seconds (0: never).", _seconds],
        ["tracebacks", None, None, "How much of a failed task's traceback clients get: full, short (innermost frame and exception, no directories) or none [default: full when every listener is loopback or unix:, short otherwise].", _tracebackMode],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["tasks"] = []

    def opt_listen(self, endpoint: str) -> None:
        """A Twisted server endpoint to listen on (tcp:, ssl:, unix: ...); repeatable [default: tcp:12345:interface=127.0.0.1]."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_tasks(self, module: str) -> None:
        """A task module to load; repeatable [default: taskd.examples]."""
        self["tasks"].append(module)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if not self["tasks"]:
            self["tasks"] = [DEFAULT_TASKS]
        if self["tracebacks"] is None:
            self["tracebacks"] = defaultTracebacks(self["listen"])
        if self["workers"] is None:
            self["workers"] = os.cpu_count() or 1
        self["auth-token"] = None
        if self["auth-token-file"] is not None:
            self["auth-token"] = _readToken(self["auth-token-file"])
        try:
            loadTaskModules(self["tasks"])
        except Exception as e:
            raise usage.UsageError(
                f"cannot load task module: {type(e).__name__}: {e}"
            ) from e


def _readToken(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"cannot read the auth token file: {e}") from e
    if not token:
        raise usage.UsageError(f"the auth token file {path} is empty")
    return token


def _splitDescription(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    Split an endpoint description (C{tcp:80:interface=127.0.0.1}) into its
    type, positional arguments and keyword arguments, honouring C{\\:}.
    """
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    kind, args, kwargs = parts[0], [], {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            kwargs[key] = value
        else:
            args.append(part)
    return kind, args, kwargs


_LOOPBACK = ("127.", "::1", "localhost", "0:0:0:0:0:0:0:1")

#: The mode of a C{unix:} listener's socket file when C{mode=} is not given:
#: the daemon's user and group may connect, no one else.
DEFAULT_UNIX_MODE = "660"


def _local(description: str) -> bool:
    """
    @return: whether only processes on this host can reach C{description}
        (a C{unix:} socket, or a TCP or TLS listener on a loopback address).
    """
    kind, _, kwargs = _splitDescription(description)
    if kind == "unix":
        return True
    return kind in ("tcp", "tcp6", "ssl", "mtls") and kwargs.get("interface", "").startswith(_LOOPBACK)


def defaultTracebacks(listen: Sequence[str]) -> str:
    """
    @return: the C{--tracebacks} default for these listeners: C{"full"} when
        every one is local (whoever connects can read the install anyway),
        C{"short"} when any may be reached from other hosts (paths, library
        versions and source lines are not theirs to see).
    """
    return "full" if all(_local(d) for d in listen) else "short"


def listenDescription(description: str) -> str:
    """
    @return: C{description} as the daemon listens on it: a C{unix:} socket
        without C{mode=} gets L{DEFAULT_UNIX_MODE} (Twisted's default lets
        every local user connect).
    """
    kind, _, kwargs = _splitDescription(description)
    if kind == "unix" and "mode" not in kwargs:
        return f"{description}:mode={DEFAULT_UNIX_MODE}"
    return description


def exposureWarnings(description: str, token: bool) -> list[str]:
    """
    @return: what is unsafe about listening on C{description}: a network
        address beyond loopback without TLS (calls, results and the token
        travel in clear text) or without authentication (anyone who can
        reach it runs tasks); a C{unix:} socket every local user may
        connect to, without authentication.
    """
    kind, _, kwargs = _splitDescription(description)
    if kind == "unix":
        try:
            mode = int(kwargs.get("mode", DEFAULT_UNIX_MODE), 8)
        except ValueError:
            return []  # Twisted refuses it when it listens
        if mode & 0o002 and not token:
            return [
                f"{description} lets every local user connect (mode "
                f"{mode:o}) and there is no authentication: any of them can "
                "run tasks; leave mode= out (660) or set --auth-token-file"
            ]
        return []
    if kind not in ("tcp", "tcp6", "ssl", "mtls"):
        return []  # the like of systemd: sockets: their owner sets access
    interface = kwargs.get("interface", "")
    if interface.startswith(_LOOPBACK):
        return []
    where = interface or ("all interfaces" if kind != "tcp6" else "all IPv6 interfaces")
    warnings = []
    if kind in ("tcp", "tcp6"):
        warnings.append(
            f"{description} listens on {where} without TLS: calls, results"
            + (" and the auth token" if token else "")
            + " cross the network in clear text; use ssl: or mtls:"
        )
    if not token and kind != "mtls":
        warnings.append(
            f"{description} listens on {where} without authentication: "
            "anyone who can reach it can run tasks; set --auth-token-file "
            "or use mtls:"
        )
    return warnings


class TaskdService(MultiService):
    """
    The daemon: the pool and its listeners, stopped in order: stop
    listening, drain the pool (see L{ProcessPool.stop}), then close the
    connections once their last replies are written.

    @ivar exitStatus: what the process should exit with: C{0}, or C{1} once
        the pool could not start.
    """

    log = Logger()
    exitStatus = 0

    def __init__(
        self,
        reactor: Any,
        pool: ProcessPool,
        factory: TaskServerFactory,
        listen: Sequence[str],
        atExit: Callable[[Callable[[], object]], object] = atexit.register,
    ) -> None:
        """
        @param atExit: registers a function to run when the process exits
            (C{atexit.register}; tests pass their own).
        """
        super().__init__()
        self.pool = pool
        self.factory = factory
        self.listen = list(listen)
        self._reactor = reactor
        self._atExit = atExit
        # A daemon whose workers cannot start has nothing to serve: exit.
        self.poolService = PoolService(pool, onStartFailure=self._poolFailed)
        self.poolService.setServiceParent(self)
        self.listeners: list[IService] = []

    def addListener(self, service: IService) -> None:
        self.listeners.append(service)
        service.setServiceParent(self)

    def _poolFailed(self) -> None:
        """
        The pool could not start: stop the reactor, then exit non-zero.

        twistd has no way to set its exit status: it returns normally once
        its reactor has stopped.  So the status is set at the very end, in
        an exit handler: by then the stop has run (workers reaped, pid file
        removed, log observers stopped) and only the process is left.  A
        supervisor (systemd's C{Restart=on-failure}) sees status 1.
        """
        self.exitStatus = 1
        self._atExit(self._exit)
        self._reactor.stop()

    def _exit(self) -> None:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass  # closed already: nothing left to flush
        # Exit handlers registered before this one (the standard library's
        # logging flush) are skipped: taskd logs through twisted.logger,
        # which flushes every line.
        os._exit(self.exitStatus)

    def startService(self) -> None:
        for description in self.listen:
            for warning in exposureWarnings(description, self.factory.authToken is not None):
                self.log.warn("SECURITY: {problem}", problem=warning)
        self.log.info(
            "taskd starting: {workers} workers running {tasks}, listening on {listen}",
            workers=self.pool.config.workers,
            tasks=", ".join(self.pool.config.tasks),
            listen=", ".join(self.listen),
        )
        super().startService()

    def stopService(self) -> Deferred[Any]:
        Service.stopService(self)
        d: Deferred[Any] = DeferredList(
            [maybeDeferred(s.stopService) for s in self.listeners]
        )
        d.addCallback(lambda _: self.poolService.stopService())
        d.addCallback(lambda _: self.factory.closeConnections())
        d.addCallback(lambda _: self.log.info("taskd stopped"))
        return d


# Listeners that never need TLS.
_PLAIN_ENDPOINTS = ("tcp", "tcp6", "unix", "systemd")


def _skipTLSImports(
    listen: Sequence[str], modules: MutableMapping[str, Any] = sys.modules
) -> None:
    """
    Twisted imports pyOpenSSL and cryptography (about 13 MB of memory) when
    its TCP transport is first imported, if they are installed, whether any
    connection uses TLS or not.  A daemon with no TLS listener marks them
    unavailable before that, so Twisted takes the path it takes where
    pyOpenSSL is not installed.  Once anything has imported either, this
    does nothing.  Tasks are unaffected: they run in worker processes.
    """
    if any(_splitDescription(d)[0] not in _PLAIN_ENDPOINTS for d in listen):
        return
    if "OpenSSL" not in modules and "twisted.internet.tcp" not in modules:
        modules["OpenSSL"] = None


def poolConfig(options: Options) -> PoolConfig:
    """
    @return: the pool's configuration that parsed L{Options} describe.
    """
    return PoolConfig(
        tasks=options["tasks"],
        workers=options["workers"],
        maxQueue=options["max-queue"],
        timeout=options["timeout"],
        maxTasksPerWorker=options["max-tasks-per-worker"],
        grace=options["grace"],
        killGrace=options["kill-grace"],
        maxMemory=_mebibytes(options["max-memory"]),
        maxWorkerRSS=_mebibytes(options["max-worker-rss"]),
        prefetch=options["prefetch"],
    )


def _mebibytes(value: int | None) -> int | None:
    return None if value is None else value * 1024 * 1024


def makeService(options: Options, reactor: Any = None) -> TaskdService:
    """
    Build the daemon's service tree from parsed L{Options}.
    """
    _skipTLSImports(options["listen"])
    from twisted.application import strports

    if reactor is None:
        from twisted.internet import reactor
    pool = ProcessPool(reactor, config=poolConfig(options))
    factory = TaskServerFactory(
        pool,
        maxLineLength=options["max-line-length"],
        maxConnections=options["max-connections"],
        maxInFlight=options["max-in-flight"],
        authToken=options["auth-token"],
        authTimeout=options["auth-timeout"],
        idleTimeout=options["idle-timeout"],
        lineTimeout=options["line-timeout"],
        tracebacks=options["tracebacks"],
    )
    service = TaskdService(reactor, pool, factory, options["listen"])
    for description in options["listen"]:
        service.addListener(strports.service(listenDescription(description), factory, reactor=reactor))
    return service
