# -*- test-case-name: tests.test_tap,tests.test_readiness -*-
"""
The daemon's service tree: L{TaskdService} holds the pool, the jobs, the
listeners and the HTTP side, starts them in order (the listeners accept
once the jobs' journal is open) and stops them in order (stop listening,
say goodbye, drain the pool, close the connections once their last
replies are written).  L{taskd.tap} builds it from the command line.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd.gate import ListeningGate
from taskd.jobs import JobService
from taskd._pipes import holdEachTurn
from taskd.listeners import describeListenError, exposureWarnings
from taskd.pool import PoolService, ProcessPool
from taskd.server import TaskServerFactory

if TYPE_CHECKING:
    from taskd.web import Web

#: The exit status of a usage error, as for any Unix command.
EXIT_USAGE = 2


def exitWithUsageError(message: str) -> NoReturn:
    """
    Print C{taskd: message} on the process's original stderr (twistd may
    have redirected C{sys.stderr} into its log) and exit with status 2.
    """
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"taskd: {message}\n")
    stream.flush()
    raise SystemExit(EXIT_USAGE)


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
    #: Whether to freeze the heap once started (see L{_jobsStarted}): a
    #: daemon in a process of its own does (L{makeService} without a
    #: reactor, as twistd calls it), one in a test's process does not.
    freezeHeap = False
    #: Whether to hold the pool's writes over each whole reactor turn (see
    #: L{taskd._pipes.holdEachTurn}): a daemon in a process of its own
    #: does, as for L{freezeHeap}.
    holdTurns = False
    _releaseTurns: Callable[[], None] | None = None

    def __init__(
        self,
        reactor: Any,
        pool: ProcessPool,
        factory: TaskServerFactory,
        listen: Sequence[str],
        atExit: Callable[[Callable[[], object]], object] = atexit.register,
        jobs: JobService | None = None,
    ) -> None:
        """
        @param atExit: registers a function to run when the process exits
            (C{atexit.register}; tests pass their own).
        @param jobs: the background jobs: started with the pool (a journal
            that cannot be opened stops the daemon, exit status 1), stopped
            with it.
        """
        super().__init__()
        self.pool = pool
        self.factory = factory
        self.jobs = jobs
        self.listen = list(listen)
        self._reactor = reactor
        self._atExit = atExit
        # A daemon whose workers cannot start has nothing to serve: exit.
        self.poolService = PoolService(pool, onStartFailure=self._poolFailed)
        self.poolService.setServiceParent(self)
        self.listeners: list[IService] = []
        #: Holds the listeners' ports unread until the journal is open.
        self.gate = ListeningGate()
        #: Whether the daemon drains: see L{drain}.
        self.draining = False
        #: The HTTP side (C{--http}), if any: see L{addHTTP}.
        self.web: Web | None = None
        self.httpService: IService | None = None
        self.httpDescription: str | None = None

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
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass  # a stop was already under way

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
                if child is self.httpService:
                    prefix = f"--http {self.httpDescription!r}: "
                exitWithUsageError(prefix + describeListenError(e))

    def startService(self) -> None:
        for description in self.listen:
            for warning in exposureWarnings(description, self.factory.authToken is not None):
                self.log.warn("SECURITY: {problem}", problem=warning)
        if self.httpDescription is not None and self.web is not None:
            from taskd.web import httpExposureWarnings

            for warning in httpExposureWarnings(self.httpDescription, self.web.hasToken):
                self.log.warn("SECURITY: {problem}", problem=warning)
        self.log.info(
            "taskd {version} starting: {workers} running {tasks}, listening on {listen}",
            version=self.factory.version,
            workers=plural(self.pool.config.workers, "worker"),
            tasks=", ".join(self.pool.config.tasks),
            listen=", ".join(self.listen),
        )
        super().startService()
        if self.holdTurns:
            self._releaseTurns = holdEachTurn(self._reactor, self.pool.writes)
        if self.jobs is not None:
            self.jobs.start().addCallbacks(self._jobsStarted, self._jobsFailed)
        else:
            self._ready()

    def _jobsStarted(self, _: object) -> None:
        """
        The jobs' journal is open and its jobs picked up: the daemon has
        started.  If it is a process of its own (L{freezeHeap}), what it
        allocated to start (modules, classes, the jobs it picked up) is
        moved out of the garbage collector's sight (C{gc.freeze}), so that
        a full collection scans only what was made since: without it, one
        took ~90 ms during a burst of submits (the jobs in memory make
        full collections come), the worst of the daemon's lateness.
        """
        if self.freezeHeap:
            gc.freeze()
        self._ready()

    def _ready(self) -> None:
        """
        The jobs' journal is open: accept connections (see L{taskd.gate}).
        """
        self.log.info("taskd ready: accepting connections")
        self.gate.open()

    def _jobsFailed(self, failure: Failure) -> None:
        self.log.error("taskd: {error}", error=failure.getErrorMessage())
        self._poolFailed()

    def stopService(self) -> Deferred[Any]:
        Service.stopService(self)
        # While the pool drains, /healthz says so (503).
        self.draining = True
        d: Deferred[Any] = DeferredList(
            [maybeDeferred(s.stopService) for s in self.listeners]
        )
        d.addCallback(lambda _: self._stopPoolAndJobs())
        # Even if stopping the pool failed, the connections are closed.
        d.addBoth(lambda _: self.factory.finishConnections())
        d.addBoth(lambda _: self._stopHTTP())
        d.addBoth(self._stopHoldingTurns)
        d.addCallback(lambda _: self.log.info("taskd stopped"))
        return d

    def _stopHoldingTurns(self, result: object) -> object:
        if self._releaseTurns is not None:
            self._releaseTurns()
            self._releaseTurns = None
        return result

    # -- the HTTP side and draining ------------------------------------------

    def addHTTP(self, service: IService, description: str, web: Web) -> None:
        """
        Serve the HTTP side (C{--http}) with C{service}, listening on
        C{description}.  It stops last, so that C{/healthz} answers 503
        while the pool drains.
        """
        self.web = web
        self.httpService = service
        self.httpDescription = description
        service.setServiceParent(self)

    def _stopHTTP(self) -> Deferred[Any] | None:
        if self.web is not None:
            self.web.close()
        if self.httpService is None:
            return None
        return maybeDeferred(self.httpService.stopService)

    def healthProblem(self) -> str | None:
        """
        @return: why the daemon should get no new calls (it drains, it has no
            ready worker), or C{None}.
        """
        if self.draining:
            return "draining"
        if not self.gate.isOpen:
            return "starting: the jobs' journal is not open yet"
        if self.web is not None and not self.web.activity.workers:
            return "no ready worker"
        return None

    def drain(self) -> Deferred[Any]:
        """
        Drain: stop listening for new connections and fail the health check
        (C{/healthz} answers 503), while open connections are served and
        running and queued calls finish.  Stop the daemon (SIGTERM) when it
        is idle.

        @return: a C{Deferred} that fires when the listeners are closed.
        """
        if self.draining:
            return DeferredList([])
        self.draining = True
        self.factory.sayGoodbye()
        self.log.info("draining: no new connections; /healthz answers 503")
        return DeferredList([maybeDeferred(s.stopService) for s in self.listeners])


    def _stopPoolAndJobs(self) -> Deferred[Any]:
        """
        Stop feeding jobs, stop the pool, and close the journal once the
        jobs the pool held have ended.
        """
        if self.jobs is None:
            d = self.poolService.stopService()
        else:
            jobsStopped = self.jobs.stop()
            d = self.poolService.stopService().addBoth(lambda _: jobsStopped)
        # Now that the pool answers new calls with "stopping": see
        # TaskServerFactory.sayGoodbye.
        self.factory.sayGoodbye()
        return d


def plural(n: int, noun: str) -> str:
    """
    @return: C{"1 worker"}, C{"2 workers"}.
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


