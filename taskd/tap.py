# -*- test-case-name: tests.test_tap -*-
"""
C{twistd taskd}: command-line options and the daemon's service tree.

Run by twistd, a bad option value or endpoint string and a listener that
cannot start (a port in use) end the process with one line on stderr
naming the option and what is wrong, and exit status 2.

This module is the daemon's top: L{Options} (what each option means and
its default) and L{makeService} (what runs, built from them); the service
tree it builds, what starts when and in which order it stops, is
L{taskd.daemon.TaskdService}.  What a C{--listen} value means as a listener (valid or
not, who can reach it, the socket mode, what to warn about) is in
L{taskd.listeners}; the coercers of option values are in
L{taskd.coercers}.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from twisted.internet.interfaces import IReactorFromThreads
from twisted.python import usage

import taskd
from taskd.coercers import (
    namingErrors,
    nonNegativeInt,
    positiveInt,
    positiveSeconds,
    seconds,
    tracebackMode,
)
from taskd.config import PoolConfig, parseTaskLimit
from taskd.jobs import DEFAULT_JOB_TTL, DEFAULT_MAX_JOBS, JobService
from taskd.journal import DEFAULT_JOURNAL, IN_MEMORY, SQLiteJournal
from taskd.listeners import (
    checkEndpoint,
    defaultTracebacks,
    listenDescription,
    nameSystemdSockets,
    skipTLSImports,
)
from taskd.admin import AdminCommands
from taskd.jsonlog import logFormat, useJSONLog
from taskd.pool import ProcessPool
from taskd.registry import loadTaskModules
from taskd.server import DEFAULT_MAX_LINE, TaskServerFactory
from taskd.timeouts import DEFAULT_IDLE_TIMEOUT, DEFAULT_LINE_TIMEOUT
from taskd.daemon import TaskdService, exitWithUsageError

if TYPE_CHECKING:
    # Imported when --http is given: twisted.web is not small.
    from taskd.activity import Activity
    from taskd.web import Web

DEFAULT_LISTEN = "tcp:12345:interface=127.0.0.1"
DEFAULT_TASKS = "taskd.examples"



class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run registered Python tasks in a pool of worker processes and serve "
        "them over a JSON-lines protocol (see docs/protocol.md). With no "
        f"options it runs the example tasks ({DEFAULT_TASKS}) on "
        f"{DEFAULT_LISTEN} with one worker per CPU."
    )

    optParameters = namingErrors([
        ["workers", "w", None, "Worker processes [default: CPU count].", positiveInt],
        ["max-queue", None, 1000, "Calls that may wait for a worker.", nonNegativeInt],
        ["timeout", "t", None, "Default (and longest) run time of a call, in seconds [default: none].", positiveSeconds],
        ["max-tasks-per-worker", None, None, "Replace a worker after this many calls [default: never].", positiveInt],
        ["max-line-length", None, DEFAULT_MAX_LINE, "Longest request line, in bytes.", positiveInt],
        ["max-connections", None, 1000, "Connections accepted at once.", positiveInt],
        ["max-in-flight", None, 100, "Unanswered requests per connection before it stops being read.", positiveInt],
        ["grace", None, 10.0, "On shutdown, seconds running calls may go on.", seconds],
        ["kill-grace", None, 5.0, "Seconds a retired worker has to exit, and processes a task left behind have between SIGTERM and SIGKILL.", seconds],
        ["prefetch", None, 1, "Calls a worker may hold at once (more than 1 sends the next calls ahead: faster for short tasks; a long task delays those behind it).", positiveInt],
        ["prefetch-time", None, 0.005, "With --prefetch above 1: send a call ahead only if the calls the worker holds, with it, are expected to run within this many seconds, each as long as its task's calls have been taking (0: no such limit).", seconds],
        ["threads", None, 1, "Calls each worker may run at once, on threads of its own (for tasks that wait on I/O; see docs/tasks.md).", positiveInt],
        ["async-concurrency", None, 100, "Calls of async def tasks each worker may run at once on its event loop.", positiveInt],
        ["max-memory", None, None, "Address-space limit of each worker, in MiB [default: none].", positiveInt],
        ["max-worker-rss", None, None, "Replace a worker whose resident memory is above this many MiB after a call; the call is answered as usual [default: no limit].", positiveInt],
        ["auth-token-file", None, None, "A file holding the shared secret clients must send in their hello [default: no authentication]."],
        ["auth-timeout", None, 10.0, "Seconds a connection may take to authenticate.", positiveSeconds],
        ["idle-timeout", None, DEFAULT_IDLE_TIMEOUT, "Close a connection with no call in flight that sent nothing for this many seconds (0: never).", seconds],
        ["line-timeout", None, DEFAULT_LINE_TIMEOUT, "Close a connection that started a request line and did not finish it within this many seconds (0: never).", seconds],
        ["journal", None, None, f"The background jobs' journal, an SQLite file [default: {DEFAULT_JOURNAL} in the working directory]; {IN_MEMORY} keeps jobs in memory only (lost when the daemon stops)."],
        ["job-ttl", None, DEFAULT_JOB_TTL, "Seconds a job that ended is kept, with its result.", positiveSeconds],
        ["job-lease", None, 30.0, "With a PostgreSQL journal: seconds a daemon's claim on a running job lasts unless renewed (every third of it); once it expires (the daemon died), another daemon requeues or interrupts the job.", positiveSeconds],
        ["job-poll", None, 1.0, "With a PostgreSQL journal: seconds between two polls of the database (delayed jobs, expired leases; the fallback of LISTEN/NOTIFY).", positiveSeconds],
        ["max-jobs", None, DEFAULT_MAX_JOBS, "Jobs the journal keeps at most (the ones that ended first make room); past it in jobs not yet ended, a submit is refused as busy.", positiveInt],
        ["tracebacks", None, None, "How much of a failed task's traceback clients get: full, short (innermost frame and exception, no directories) or none [default: full when every listener is loopback or unix:, short otherwise].", tracebackMode],
        # The HTTP side (see docs/operations.md).
        ["http", None, None, "Serve /metrics (Prometheus), /healthz and a live status page at / on this endpoint; a bare port means tcp:PORT:interface=127.0.0.1 [default: off]. Needs pip install 'taskd[http]'."],
        ["http-token-file", None, None, "A file holding the token every HTTP path but /healthz needs (Authorization: Bearer, or ?token=) [default: none]."],
        ["log-format", None, "text", "text, or json: one JSON object per line, for log shippers (see docs/operations.md).", logFormat],
        ["admin-token-file", None, None, "A file holding the token admin requests (running, cancel, workers, drain, restart) must carry; they are then taken on every listener [default: no token: taken only on loopback and unix: listeners]."],
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
        """NAME:concurrency=N,rate=N/s|m|h,priority=N,retries=N,backoff=S: set or override a task's scheduling options (see docs/scheduling.md); repeatable."""
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
            exitWithUsageError(str(e))

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
        if self["journal"] is None:
            self["journal"] = DEFAULT_JOURNAL
        if self["journal"] != IN_MEMORY and not isPostgreSQL(self["journal"]):
            # twistd may change directory when it daemonizes.
            self["journal"] = os.path.abspath(self["journal"])
        # Before Twisted's endpoints module is imported (see skipTLSImports
        # and nameSystemdSockets).
        skipTLSImports(self["listen"])
        nameSystemdSockets(os.environ)
        for description in self["listen"]:
            problem = checkEndpoint(description)
            if problem is not None:
                raise usage.UsageError(f"--listen {description!r}: {problem}")
        self["auth-token"] = None
        if self["auth-token-file"] is not None:
            self["auth-token"] = _readToken(self["auth-token-file"])
        self._checkHTTP()
        if self["log-format"] == "json" and self.parent is not None and not self.parent.get("logger"):
            # twistd imports its --logger by name, after this.
            self.parent["logger"] = useJSONLog(
                self.parent.get("logfile"), not self.parent.get("nodaemon")
            )
        self["admin-token"] = None
        if self["admin-token-file"] is not None:
            self["admin-token"] = _readToken(self["admin-token-file"], "--admin-token-file")
        for module in self["tasks"]:
            try:
                loadTaskModules([module])
            except Exception as e:
                raise usage.UsageError(
                    f"--tasks {module!r}: cannot load task module: {type(e).__name__}: {e}"
                ) from e


    def _checkHTTP(self) -> None:
        """
        Check C{--http} and C{--http-token-file}: the endpoint string, that
        C{prometheus_client} is installed, the token.
        """
        self["http-token"] = None
        if self["http"] is None:
            if self["http-token-file"] is not None:
                raise usage.UsageError("--http-token-file needs --http")
            return
        from taskd.web import httpDescription

        self["http"] = description = httpDescription(self["http"])
        problem = checkEndpoint(description)
        if problem is not None:
            raise usage.UsageError(f"--http {description!r}: {problem}")
        if importlib.util.find_spec("prometheus_client") is None:
            raise usage.UsageError(
                "--http needs the prometheus_client package, which is not "
                "installed: pip install 'taskd[http]'"
            )
        if self["http-token-file"] is not None:
            self["http-token"] = _readToken(self["http-token-file"], "--http-token-file")


def _readToken(path: str, option: str = "--auth-token-file") -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise usage.UsageError(f"{option} {path!r}: cannot read it: {reason}") from e
    if not token:
        raise usage.UsageError(f"{option} {path!r}: the file is empty")
    return token


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
        prefetchTime=options["prefetch-time"] or None,
        taskLimits=options["task-limits"],
        threads=options["threads"],
        asyncConcurrency=options["async-concurrency"],
    )


def isPostgreSQL(journal: str) -> bool:
    """
    @return: whether a C{--journal} names a PostgreSQL database
        (C{postgresql://...} or C{postgres://...}) rather than a file.
    """
    return journal.startswith(("postgresql://", "postgres://"))


def _mebibytes(value: int | None) -> int | None:
    return None if value is None else value * 1024 * 1024


def makeService(options: Options, reactor: Any = None) -> TaskdService:
    """
    Build the daemon's service tree from parsed L{Options}.
    """
    skipTLSImports(options["listen"])
    from twisted.application import strports

    # Only a daemon of its own (twistd's global reactor) freezes its heap.
    ownProcess = reactor is None
    if reactor is None:
        from twisted.internet import reactor
    pool = ProcessPool(reactor, config=poolConfig(options))
    # On a thread of its own, unless it is in memory (no disk to wait
    # for) or the reactor takes no calls from threads (a test's fake).
    threaded = options["journal"] != IN_MEMORY and IReactorFromThreads.providedBy(reactor)
    jobs: JobService
    if isPostgreSQL(options["journal"]):
        # A journal shared with other daemons (see docs/cluster.md).
        from taskd.pgjournal import PostgreSQLJournal
        from taskd.sharedjobs import SharedJobService

        shared = PostgreSQLJournal(
            options["journal"], reactor, maxJobs=options["max-jobs"], lease=options["job-lease"]
        )
        jobs = SharedJobService(
            pool, shared, ttl=options["job-ttl"], maxJobs=options["max-jobs"],
            pollInterval=options["job-poll"],
        )
    else:
        journal = SQLiteJournal(
            options["journal"], reactor, maxJobs=options["max-jobs"], threaded=threaded
        )
        jobs = JobService(pool, journal, ttl=options["job-ttl"], maxJobs=options["max-jobs"])
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
        jobs=jobs,
    )
    service = TaskdService(reactor, pool, factory, options["listen"], jobs=jobs)
    service.freezeHeap = service.holdTurns = ownProcess
    for description in options["listen"]:
        listener = strports.service(listenDescription(description), factory, reactor=reactor)
        # Bound now, accepting once the daemon is ready (see taskd.gate).
        listener.endpoint = service.gate.hold(listener.endpoint)
        service.addListener(listener)
    factory.admin = AdminCommands(pool, service.drain, options.get("admin-token"))
    if options.get("http") is not None:
        from taskd.activity import Activity

        # Counts, histograms and rates, for the HTTP side.
        activity = pool.observer = Activity(reactor, running=pool.running, served=pool.served)
        web = makeWeb(reactor, activity, factory, service, options["http-token"])
        service.addHTTP(strports.service(options["http"], web.site, reactor=reactor), options["http"], web)
    return service


def makeWeb(
    reactor: Any, activity: Activity, factory: TaskServerFactory, service: TaskdService, token: str | None
) -> Web:
    """
    Build the HTTP side of the daemon (C{--http}) on the pool's observer
    C{activity}: its metrics, the status page and the health check.
    """
    from taskd.metrics import DaemonMetrics, MetricsResource
    from taskd.web import Web

    def stats() -> dict[str, Any]:
        return {**factory.stats().fields, "draining": service.draining}

    metrics = DaemonMetrics(activity, stats, lambda: service.draining)
    return Web(
        reactor,
        activity,
        stats,
        service.healthProblem,
        token,
        MetricsResource(metrics),
    )
