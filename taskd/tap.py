# -*- test-case-name: tests.test_tap -*-
"""
C{twistd taskd}: command-line options and the daemon's service tree.

Run by twistd, a bad option value or endpoint string and a listener that
cannot start (a port in use) end the process with one line on stderr
naming the option and what is wrong, and exit status 2.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
from typing import Any, Callable, Mapping, MutableMapping, NoReturn, Sequence

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

import taskd
from taskd.config import PoolConfig, parseTaskLimit
from taskd.pool import PoolService, ProcessPool
from taskd.registry import loadTaskModules
from taskd.server import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LINE_TIMEOUT,
    DEFAULT_MAX_LINE,
    TRACEBACK_MODES,
    TaskServerFactory,
)

DEFAULT_LISTEN = "tcp:12345:interface=127.0.0.1"
DEFAULT_TASKS = "taskd.examples"

#: The exit status of a usage error, as for any Unix command.
EXIT_USAGE = 2


def _whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _positiveInt(value: str) -> int:
    if _whole(value) < 1:
        raise ValueError("must be a whole number of at least 1")
    return int(value)


def _nonNegativeInt(value: str) -> int:
    if _whole(value) < 0:
        raise ValueError("must be a whole number of at least 0")
    return int(value)


def _seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        n = float("nan")
    if not n >= 0 or n == float("inf"):
        raise ValueError("must be a number of seconds (0 or more)")
    return n


def _tracebackMode(value: str) -> str:
    if value not in TRACEBACK_MODES:
        raise ValueError(f"must be one of {', '.join(TRACEBACK_MODES)}, not {value!r}")
    return value


def _naming(option: str, coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    """
    Wrap an option's coercer so that its error names the option and the
    value: C{--workers '0': must be a whole number of at least 1}.
    (twistd's own message names neither.)
    """

    def coerced(value: str) -> Any:
        try:
            return coerce(value)
        except ValueError as e:
            raise usage.UsageError(f"--{option} {value!r}: {e}") from None

    coerced.coerceDoc = getattr(coerce, "coerceDoc", "")  # type: ignore[attr-defined]
    return coerced


def _named(rows: list[list[Any]]) -> list[list[Any]]:
    return [row[:4] + [_naming(row[0], row[4])] if len(row) > 4 else row for row in rows]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run registered Python tasks in a pool of worker processes and serve "
        "them over a JSON-lines protocol (see docs/protocol.md). With no "
        f"options it runs the example tasks ({DEFAULT_TASKS}) on "
        f"{DEFAULT_LISTEN} with one worker per CPU."
    )

    optParameters = _named([
        ["workers", "w", None, "Worker processes [default: CPU count].", _positiveInt],
        ["max-queue", None, 1000, "Calls that may wait for a worker.", _nonNegativeInt],
        ["timeout", "t", None, "Default (and longest) run time of a call, in seconds [default: none].", _seconds],
        ["max-tasks-per-worker", None, None, "Replace a worker after this many calls [default: never].", _positiveInt],
        ["max-line-length", None, DEFAULT_MAX_LINE, "Longest request line, in bytes.", _positiveInt],
        ["max-connections", None, 1000, "Connections accepted at once.", _positiveInt],
        ["max-in-flight", None, 100, "Unanswered requests per connection before it stops being read.", _positiveInt],
        ["grace", None, 10.0, "On shutdown, seconds running calls may go on.", _seconds],
        ["kill-grace", None, 5.0, "Seconds a retired worker has to exit, and processes a task left behind have between SIGTERM and SIGKILL.", _seconds],
        ["prefetch", None, 1, "Calls a worker may hold at once (more than 1 sends the next calls ahead: faster for short tasks; a long task delays those behind it).", _positiveInt],
        ["max-memory", None, None, "Address-space limit of each worker, in MiB [default: none].", _positiveInt],
        ["max-worker-rss", None, None, "Replace a worker whose resident memory is above this many MiB after a call; the call is answered as usual [default: no limit].", _positiveInt],
        ["auth-token-file", None, None, "A file holding the shared secret clients must send in their hello [default: no authentication]."],
        ["auth-timeout", None, 10.0, "Seconds a connection may take to authenticate.", _seconds],
        ["idle-timeout", None, DEFAULT_IDLE_TIMEOUT, "Close a connection with no call in flight that sent nothing for this many seconds (0: never).", _seconds],
        ["line-timeout", None, DEFAULT_LINE_TIMEOUT, "Close a connection that started a request line and did not finish it within this many seconds (0: never).", _seconds],
        ["tracebacks", None, None, "How much of a failed task's traceback clients get: full, short (innermost frame and exception, no directories) or none [default: full when every listener is loopback or unix:, short otherwise].", _tracebackMode],
    ])

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["tasks"] = []
        self["task-limits"] = {}

    def opt_listen(self, endpoint: str) -> None:
        """A Twisted server endpoint to listen on (tcp:, ssl:, unix: ...); repeatable [default: tcp:12345:interface=127.0.0.1]."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_tasks(self, module: str) -> None:
        """A task module to load; repeatable [default: taskd.examples]."""
        self["tasks"].append(module)

    def opt_task_limit(self, limit: str) -> None:
        """NAME:concurrency=N,rate=N/s|m|h,priority=N: set or override a task's scheduling options (see docs/scheduling.md); repeatable."""
        try:
            name, options = parseTaskLimit(limit)
        except ValueError as e:
            raise usage.UsageError(f"--task-limit {limit!r}: {e}") from None
        previous = self["task-limits"].get(name)
        self["task-limits"][name] = options if previous is None else previous.merged(options)

    def opt_version(self) -> NoReturn:
        """
        Show taskd's and Twisted's versions, and exit.
        """
        from twisted import __version__ as twistedVersion

        print(f"taskd {taskd.version()} (Twisted {twistedVersion})")
        sys.exit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse the options; see L{postOptions} for the checks.

        @raise usage.UsageError: for a bad option, if this is not a
            subcommand (of C{twistd}).  As a subcommand, print the error as
            one line on stderr and exit with status 2 instead: twistd would
            print the whole usage text above it and exit 1.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            _exitWithUsageError(str(e))

    def postOptions(self) -> None:
        """
        Fill in defaults and check what cannot be checked option by option:
        each C{--listen} endpoint string (with Twisted's own parser, without
        listening), the token file, and the task modules (imported here, so
        that one that does not import stops the daemon at once).
        """
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if not self["tasks"]:
            self["tasks"] = [DEFAULT_TASKS]
        if self["tracebacks"] is None:
            self["tracebacks"] = defaultTracebacks(self["listen"])
        if self["workers"] is None:
            self["workers"] = os.cpu_count() or 1
        # Before Twisted's endpoints module is imported (see _skipTLSImports
        # and _systemdNames).
        _skipTLSImports(self["listen"])
        _systemdNames(os.environ)
        for description in self["listen"]:
            problem = checkEndpoint(description)
            if problem is not None:
                raise usage.UsageError(f"--listen {description!r}: {problem}")
        self["auth-token"] = None
        if self["auth-token-file"] is not None:
            self["auth-token"] = _readToken(self["auth-token-file"])
        for module in self["tasks"]:
            try:
                loadTaskModules([module])
            except Exception as e:
                raise usage.UsageError(
                    f"--tasks {module!r}: cannot load task module: {type(e).__name__}: {e}"
                ) from e


def _exitWithUsageError(message: str) -> NoReturn:
    """
    Print C{taskd: message} on the process's original stderr (twistd may
    have redirected C{sys.stderr} into its log) and exit with status 2.
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"taskd: {message}\n")
    stream.flush()
    raise SystemExit(EXIT_USAGE)


def _readToken(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise usage.UsageError(f"--auth-token-file {path!r}: cannot read it: {reason}") from e
    if not token:
        raise usage.UsageError(f"--auth-token-file {path!r}: the file is empty")
    return token


_PORT_ENDPOINTS = ("tcp", "tcp6", "ssl", "mtls")


def _serverEndpointTypes() -> list[str]:
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    plugins = {p.prefix for p in getPlugins(IStreamServerEndpointStringParser)}
    return ["tcp", "tcp6", "ssl", "unix", "systemd", *sorted(plugins - {"tcp", "tcp6", "ssl", "unix", "systemd"})]


def checkEndpoint(description: str) -> str | None:
    """
    Check a server endpoint string as C{--listen} takes it, without
    listening: parse it with Twisted's own parser, giving it a stand-in
    for the reactor (parsers only store it; C{twisted.internet.testing}'s
    C{MemoryReactor} would cost the daemon 2 MB of memory).

    @return: what is wrong with it, in words (C{"port must be a number from
        0 to 65535, not 'abc'"}), or C{None} if it is valid.
    """
    kind, args, kwargs = _splitDescription(description)
    if not args and not kwargs and kind.isdigit():
        return f"not an endpoint; for TCP port {kind} on loopback write tcp:{kind}:interface=127.0.0.1"
    if kind in _PORT_ENDPOINTS:
        port = args[0] if args else kwargs.get("port")
        if port is None:
            return f"{kind} needs a port: {kind}:PORT"
        if not port.isdigit() or int(port) > 65535:
            return f"port must be a number from 0 to 65535, not {port!r}"
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(_ParsingOnly(), description)
    except AttributeError:
        # A plugin's parser that uses the reactor at once: the real
        # listener will tell.
        return None
    except ValueError as e:
        if str(e).startswith("Unknown endpoint type"):
            return f"unknown endpoint type {kind!r}; valid types: " + ", ".join(t + ":" for t in _serverEndpointTypes())
        return _plain(str(e))
    except TypeError as e:
        m = re.search(r"unexpected keyword argument '([^']*)'", str(e))
        if m:
            return f"{kind} endpoints take no parameter {m.group(1)!r}"
        m = re.search(r"missing \d+ required positional arguments?: (.*)", str(e))
        if m:
            return f"{kind} endpoints need {m.group(1)}"
        return _plain(str(e))
    except OSError as e:
        return f"cannot read {e.filename}: {e.strerror}" if e.filename else str(e)
    except (IndexError, KeyError):
        if kind == "systemd":
            return _systemdProblem(kwargs)
        raise
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


class _ParsingOnly:
    """
    Stands for the reactor while an endpoint string is parsed, never
    used to listen.
    """


def _plain(message: str) -> str:
    # "invalid literal for int() with base 10: 'x'" means: not a number.
    m = re.fullmatch(r"invalid literal for int\(\) with base 10: (.*)", message)
    return f"{m.group(1)} is not a whole number" if m else message


def _systemdProblem(kwargs: Mapping[str, str]) -> str:
    from twisted.python.systemd import ListenFDs

    fds = ListenFDs.fromEnvironment()
    have = len(fds.inheritedDescriptors())
    if "name" in kwargs:
        names = sorted(fds.inheritedNamedDescriptors())
        return f"systemd passed no socket named {kwargs['name']!r} (names: {', '.join(names) or 'none'})"
    return (
        f"there is no socket number {kwargs.get('index')} from systemd: it passed "
        f"{plural(have, 'socket')} to this process (LISTEN_FDS, LISTEN_PID)"
    )


def _systemdNames(environ: MutableMapping[str, str], pid: int | None = None) -> None:
    """
    Sockets passed without names (C{systemd-socket-activate} without
    C{--fdname}: C{LISTEN_FDS} set, C{LISTEN_FDNAMES} not) are named
    C{unknown}, as C{sd_listen_fds_with_names(3)} does; Twisted instead
    ignores them all, and C{systemd:domain=INET:index=0} then fails.  To
    take effect this must run before Twisted's endpoints module is imported.
    """
    if pid is None:
        pid = os.getpid()
    if environ.get("LISTEN_PID") != str(pid) or "LISTEN_FDNAMES" in environ:
        return
    try:
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return
    if count > 0:
        environ["LISTEN_FDNAMES"] = ":".join(["unknown"] * count)


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

    def privilegedStartService(self) -> None:
        """
        Start listening.  A listener that cannot (a port in use, a UNIX
        socket path that cannot be created) ends the process with one line
        naming the C{--listen} value and the address, and exit status 2.
        """
        Service.privilegedStartService(self)
        descriptions = {id(s): d for s, d in zip(self.listeners, self.listen)}
        for child in self:
            try:
                child.privilegedStartService()
            except (CannotListenError, OSError) as e:
                where = descriptions.get(id(child))
                prefix = "" if where is None else f"--listen {where!r}: "
                _exitWithUsageError(prefix + describeListenError(e))

    def startService(self) -> None:
        for description in self.listen:
            for warning in exposureWarnings(description, self.factory.authToken is not None):
                self.log.warn("SECURITY: {problem}", problem=warning)
        self.log.info(
            "taskd {version} starting: {workers} running {tasks}, listening on {listen}",
            version=self.factory.version,
            workers=plural(self.pool.config.workers, "worker"),
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


def plural(n: int, noun: str) -> str:
    """
    @return: C{"1 worker"}, C{"2 workers"}.
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def describeListenError(error: CannotListenError | OSError) -> str:
    """
    @return: C{"cannot listen on 127.0.0.1:12345: address already in
        use"}: the address and the reason, without Twisted's decoration.
    """
    if not isinstance(error, CannotListenError):
        # Adopting a socket passed by systemd that is not one, say.
        where = f" on {error.filename}" if error.filename else ""
        return f"cannot listen{where}: {error.strerror or error}"
    reason = error.socketError
    why = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    if error.port is None or error.port == "":
        where = str(error.interface)
    elif isinstance(error.port, int):
        where = f"{error.interface or '0.0.0.0'}:{error.port}"
    else:
        where = str(error.port)  # a UNIX socket's path
    return f"cannot listen on {where}: {why[:1].lower() + why[1:]}"


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
        taskLimits=options["task-limits"],
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
