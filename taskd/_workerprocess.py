# -*- test-case-name: tests.test_pool_unit,tests.test_pool -*-
"""
One worker process, seen from the pool: its spawn, the frames it sends,
its output, its kill escalation, and how it ended.

A L{WorkerProcess} knows which calls it was handed and in what order (the
first is the one running; the others wait in its request pipe), because
replies come back in that order.  It decides nothing about them: it tells
its owner, a L{WorkerEvents}, what happened, and the owner (the scheduler,
L{taskd.pool.ProcessPool}) decides.

Its lifecycle (L{WorkerState}, L{WORKER_TRANSITIONS})::

    STARTING --ready--> READY --retire--> RETIRING
        |                 |                  |
        +---terminate-----+-----terminate----+--> TERMINATING
    (any state) --end--> ENDED

C{retire} closes the request pipe: the worker exits when it has answered
what it holds.  C{terminate} sends SIGTERM, then SIGKILL after the kill
grace.  A retiring worker that has not exited after the kill grace is
terminated.  C{end} is taken when the process has exited I{and} every
reply it wrote has been read, so the owner knows exactly which calls it
answered.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from enum import Enum
from typing import Any, Generic, Mapping, Protocol, Sequence, TypeVar

from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd import _json, errors
from taskd._frames import (
    ERROR,
    PROGRESS,
    READY,
    REPLY_FD,
    REQUEST_FD,
    RESULT,
    FrameDecoder,
    maxReplyFrame,
    requestFrame,
)
from taskd._lifecycle import Lifecycle
from taskd._pipes import ReplyPipe, RequestPipe, makePipe

#: Longest line of a worker's stdout/stderr logged as one event.
MAX_OUTPUT_LINE = 64 * 1024


class WorkerState(Enum):
    """
    Where a worker process is in its life.
    """

    #: Spawned; importing its task modules.
    STARTING = "starting"
    #: Said it is ready; takes calls.
    READY = "ready"
    #: Let go gracefully: its request pipe is closed.
    RETIRING = "retiring"
    #: Signalled: SIGTERM sent, SIGKILL to follow.
    TERMINATING = "terminating"
    #: Exited, every reply read.
    ENDED = "ended"


_S = WorkerState

#: Every transition of a worker's lifecycle: its name, the states it may be
#: taken from, and the state it leads to.
WORKER_TRANSITIONS = {
    "ready": (frozenset({_S.STARTING}), _S.READY),
    "retire": (frozenset({_S.READY}), _S.RETIRING),
    "terminate": (frozenset({_S.STARTING, _S.READY, _S.RETIRING}), _S.TERMINATING),
    "end": (frozenset({_S.STARTING, _S.READY, _S.RETIRING, _S.TERMINATING}), _S.ENDED),
}

#: The states of a worker that its owner has let go.
LEAVING = frozenset({_S.RETIRING, _S.TERMINATING})


class Runnable(Protocol):
    """
    What a worker process needs of a call: the task's name and its
    arguments as a JSON object.
    """

    @property
    def name(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


C = TypeVar("C", bound=Runnable)


class WorkerEvents(Protocol[C]):
    """
    What a L{WorkerProcess} tells its owner.
    """

    def workerReady(self, worker: WorkerProcess[C]) -> None:
        """
        C{worker} has loaded its tasks and takes calls.
        """

    def workerReplied(
        self, worker: WorkerProcess[C], call: C, ok: bool, body: bytes
    ) -> None:
        """
        C{worker} answered C{call}, the first of its calls: with its result
        as JSON if C{ok}, else with an error object as JSON.
        """

    def workerProgress(self, worker: WorkerProcess[C], call: C, report: bytes) -> None:
        """
        C{call}, which C{worker} runs, reported its progress (as JSON).
        """

    def workerMisbehaved(
        self, worker: WorkerProcess[C], error: errors.TaskdError | None
    ) -> None:
        """
        C{worker} broke the frame protocol; it must be stopped.

        @param error: what to fail the running call with, or C{None} to let
            it end as the worker's crash.
        """

    def workerEnded(
        self, worker: WorkerProcess[C], reason: Failure, previous: WorkerState
    ) -> None:
        """
        C{worker} has exited and every reply it wrote has been read: the
        calls still in its L{WorkerProcess.inFlight} were not answered,
        and only the first of them ever started.

        @param previous: the state it was in when it ended.
        """


class WorkerConfig(Protocol):
    """
    How to start a worker (L{taskd.pool.PoolConfig} is one).
    """

    @property
    def tasks(self) -> Sequence[str]: ...

    @property
    def python(self) -> str: ...

    @property
    def env(self) -> Mapping[str, str] | None: ...

    @property
    def maxResult(self) -> int: ...

    @property
    def maxMemory(self) -> int | None: ...

    @property
    def killGrace(self) -> float: ...


class OutputLogger:
    """
    Log one stream of a worker's output line by line.
    """

    def __init__(self, log: Logger, pid: int | None, stream: str) -> None:
        self._log = log
        self._pid = pid
        self._stream = stream
        self._pending = b""

    def feed(self, data: bytes) -> None:
        """
        Log the lines C{data} completes.
        """
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        while len(self._pending) > MAX_OUTPUT_LINE:
            lines.append(self._pending[:MAX_OUTPUT_LINE])
            self._pending = self._pending[MAX_OUTPUT_LINE:]
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        """
        Log what is left, as a last line.
        """
        if self._pending:
            self._emit(self._pending)
            self._pending = b""

    def _emit(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        emit = self._log.warn if self._stream == "stderr" else self._log.info
        emit("worker {pid} {stream}: {line}", pid=self._pid, stream=self._stream, line=text)


def describeExit(reason: Failure) -> str:
    """
    @return: how a process ended, for error messages and logs.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    sig = getattr(value, "signal", None)
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', None)}"


class WorkerProcess(ProcessProtocol, Generic[C]):
    """
    The parent's side of one worker process.

    @ivar inFlight: the calls written to it and not yet answered, in order;
        the first is the one running (or about to).
    @ivar calls: how many calls it has answered.
    @ivar pid: its process id, once spawned.
    @ivar startError: why it could not start, if it said so.
    """

    log = Logger()
    transport: IProcessTransport | None

    def __init__(
        self,
        reactor: Any,
        events: WorkerEvents[C],
        killGrace: float,
        maxReply: int,
        requests: RequestPipe,
        replies: int,
    ) -> None:
        self._reactor = reactor
        self._events = events
        self._killGrace = killGrace
        self._lifecycle = Lifecycle(WORKER_TRANSITIONS, WorkerState.STARTING)
        self.requests = requests
        self.inFlight: deque[C] = deque()
        self.calls = 0
        self.pid: int | None = None
        self.startError: errors.WorkerStartError | None = None
        self._frames = FrameDecoder(self._frameReceived, self._frameTooLong, maxReply)
        self.replies = ReplyPipe(reactor, replies, self._frames.feed, self._repliesEnded)
        self._output: dict[int, OutputLogger] = {}
        self._killTimer: IDelayedCall | None = None
        self._exit: Failure | None = None

    @classmethod
    def spawn(
        cls, reactor: Any, events: WorkerEvents[C], config: WorkerConfig
    ) -> WorkerProcess[C]:
        """
        Start a worker process.

        @raise Exception: whatever C{spawnProcess} raises; no pipe is left
            open then.
        """
        requestRead, requestWrite = makePipe()
        replyRead, replyWrite = makePipe()
        worker = cls(
            reactor,
            events,
            config.killGrace,
            maxReplyFrame(config.maxResult),
            RequestPipe(reactor, requestWrite),
            replyRead,
        )
        args = [config.python, "-u", "-m", "taskd.worker", "--max-result", str(config.maxResult)]
        if config.maxMemory:
            args += ["--max-memory", str(config.maxMemory)]
        args += ["--parent", str(os.getpid()), *config.tasks]
        env = dict(os.environ if config.env is None else config.env)
        # The workers import what the parent can import.
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        try:
            reactor.spawnProcess(
                worker,
                config.python,
                args,
                env=env,
                childFDs={0: "w", 1: "r", 2: "r", REQUEST_FD: requestRead, REPLY_FD: replyWrite},
            )
        except BaseException:
            worker.requests.abort()
            worker.replies.close()
            raise
        finally:
            # The worker has its own copies now.
            os.close(requestRead)
            os.close(replyWrite)
        return worker

    @property
    def state(self) -> WorkerState:
        """
        Where the worker is in its life.
        """
        return self._lifecycle.state

    @property
    def leaving(self) -> bool:
        """
        Whether its owner has let it go (it is retiring or terminating).
        """
        return self._lifecycle.state in LEAVING

    @property
    def call(self) -> C | None:
        """
        The call running in the worker, if any.
        """
        return self.inFlight[0] if self.inFlight else None

    # -- the process ------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        self._output = {
            1: OutputLogger(self.log, self.pid, "stdout"),
            2: OutputLogger(self.log, self.pid, "stderr"),
        }
        # A task that reads stdin gets end of file, not a hang.
        self.transport.closeStdin()
        self.replies.startReading()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        output = self._output.get(childFD)
        if output is not None:
            output.feed(data)

    def processEnded(self, reason: Failure) -> None:
        # Every reply the worker wrote is read before its end is handled:
        # the owner relies on it to know which calls it answered.
        self._exit = reason
        if not self.replies.open:
            self._allEnded()

    def _repliesEnded(self) -> None:
        if self._exit is not None:
            self._allEnded()

    def _allEnded(self) -> None:
        assert self._exit is not None
        previous = self._lifecycle.go("end")
        self.requests.abort()
        self._cancelKill()
        for output in self._output.values():
            output.flush()
        self._events.workerEnded(self, self._exit, previous)

    # -- frames -----------------------------------------------------------

    def _frameReceived(self, frame: bytes) -> None:
        kind = frame[:1]
        if kind == RESULT or kind == ERROR:
            if self._lifecycle.state is WorkerState.STARTING:
                if kind == ERROR:
                    # The worker could not load its task modules; it exits next.
                    error = errors.errorFromDict(_json.loads(frame[1:]))
                    self.startError = errors.WorkerStartError(
                        error.message, getattr(error, "remoteTraceback", "")
                    )
                    return
            elif self.inFlight:
                call = self.inFlight.popleft()
                self.calls += 1
                self._events.workerReplied(self, call, kind == RESULT, frame[1:])
                return
            self.log.error(
                "worker {pid} replied with no call running; stopping it", pid=self.pid
            )
            self._events.workerMisbehaved(self, None)
        elif kind == PROGRESS:
            if self.inFlight:
                self._events.workerProgress(self, self.inFlight[0], frame[1:])
        elif kind == READY and self._lifecycle.can("ready"):
            self._lifecycle.go("ready")
            self._events.workerReady(self)
        else:
            self.log.error(
                "worker {pid} sent an unknown frame kind {kind!r}; stopping it",
                pid=self.pid,
                kind=kind,
            )
            self._events.workerMisbehaved(self, None)

    def _frameTooLong(self, length: int) -> None:
        self.log.error(
            "worker {pid} sent a {length}-byte frame, over the limit; stopping it",
            pid=self.pid,
            length=length,
        )
        call = self.call
        self._events.workerMisbehaved(
            self,
            None
            if call is None
            else errors.ResultTooLarge(
                f"task {call.name!r} sent a {length}-byte reply, over the pool's limit"
            ),
        )

    # -- what the owner does ----------------------------------------------

    def run(self, call: C) -> None:
        """
        Hand C{call} to the worker: it runs when the calls before it have
        been answered.
        """
        self.inFlight.append(call)
        self.requests.write(requestFrame(call.name, call.payload))

    def retire(self) -> None:
        """
        Let the worker go gracefully: close its request pipe, so that it
        exits once it has answered what it holds.  If it has not exited
        after the kill grace, terminate it.
        """
        self._lifecycle.go("retire")
        self.requests.close()
        if self.transport is not None:
            self._scheduleKill(self.terminate)

    def terminate(self) -> None:
        """
        Send SIGTERM now and SIGKILL after the kill grace.
        """
        self._lifecycle.go("terminate")
        if self._signal(signal.SIGTERM):
            self._scheduleKill(lambda: self._signal(signal.SIGKILL))

    def _scheduleKill(self, action: Any) -> None:
        self._cancelKill()
        self._killTimer = self._reactor.callLater(self._killGrace, action)

    def _cancelKill(self) -> None:
        if self._killTimer is not None and self._killTimer.active():
            self._killTimer.cancel()
        self._killTimer = None

    def _signal(self, number: int) -> bool:
        if self.transport is None:
            return False
        try:
            self.transport.signalProcess(number)
        except ProcessExitedAlready:
            return False
        return True
