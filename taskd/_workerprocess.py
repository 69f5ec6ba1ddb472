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
what it holds.  C{terminate} kills it (SIGKILL: its call is over) and sends
SIGTERM to the rest of its process group.  A retiring worker that has not
exited after the kill grace is terminated.  C{end} is taken when the
process has exited and every reply it wrote has been read, so the owner
knows exactly which calls it answered.  It does not wait for copies of the
worker's pipes that processes started by its tasks may hold.

Each worker leads a process group of its own (it calls C{setpgid} first
thing), so a task's child processes are in it too.  When the worker has
ended, what is left of its group gets SIGTERM, then SIGKILL after the
kill grace; the owner hears L{WorkerEvents.workerGone} when nothing is
left.  Signals sent to the daemon's own process group (Ctrl-C, C{kill
%1}, C{timeout}) do not reach the workers.  A worker that receives SIGTERM
anyway (systemd signals the whole control group) finishes its call, says
goodbye (a C{G} frame) and exits; its owner tells that from a crash.

Its states and the interfaces it offers its owner (L{WorkerEvents},
L{WorkerConfig}) are in L{taskd._workerstate}.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from typing import Any, Generic

from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd import _json, errors
from taskd._children import OutputLogger, ProcessGroups
from taskd._frames import (
    ERROR,
    GOODBYE,
    PROGRESS,
    READY,
    REPLY_FD,
    REQUEST_FD,
    RESULT,
    TAG,
    TAGGED_ERROR,
    TAGGED_PROGRESS,
    TAGGED_RESULT,
    FrameDecoder,
    cancelFrame,
    maxReplyFrame,
    requestFrame,
    taggedRequestFrame,
)
from taskd._lifecycle import Lifecycle
from taskd._pipes import ReplyPipe, RequestPipe, WriteBatch, makePipe
from taskd._slots import CallBook, Slots
from taskd._workerstate import (
    WORKER_TRANSITIONS,
    C,
    Runnable,
    WorkerConfig,
    WorkerEvents,
    WorkerState,
)
from taskd.registry import THREAD

__all__ = [
    "WORKER_TRANSITIONS",
    "Runnable",
    "WorkerConfig",
    "WorkerEvents",
    "WorkerProcess",
    "WorkerState",
]

#: How often, in seconds, a process group left by an ended worker is
#: looked at until it is empty.
SWEEP_INTERVAL = 0.1

#: How long, after SIGKILL, a process group is looked at before it is
#: taken as gone (a process stuck in the kernel cannot be waited for).
SWEEP_KILLED = 1.0


def _protocolError(worker: WorkerProcess[Any], what: str) -> errors.WorkerProtocolError:
    return errors.WorkerProtocolError(
        f"worker {worker.pid} broke the frame protocol: {what}; it was replaced"
    )


class WorkerProcess(ProcessProtocol, Lifecycle[WorkerState], Generic[C]):
    """
    The parent's side of one worker process.

    @ivar inFlight: the calls written to it and not yet answered, in order;
        the first is the one running (or about to), unless it runs several
        calls at once (L{concurrent}): then they all run.
    @ivar concurrent: whether it runs several calls at once (it was given
        L{Slots}).
    @ivar calls: how many calls it has answered.
    @ivar expected: the seconds the pool expects its L{inFlight} to run.
    @ivar pid: its process id, once spawned; also its process group's.
    @ivar startError: why it could not start, if it said so.
    @ivar leavingBecause: why it said goodbye, if it did.
    @ivar state: where it is in its life (L{WORKER_TRANSITIONS}).
    """

    log = Logger()
    transport: IProcessTransport | None
    transitions = WORKER_TRANSITIONS

    def __init__(
        self,
        reactor: Any,
        events: WorkerEvents[C],
        killGrace: float,
        maxReply: int,
        requests: RequestPipe,
        replies: int,
        groups: Any = None,
        slots: Slots | None = None,
        drainGrace: float = 10.0,
        batch: WriteBatch | None = None,
    ) -> None:
        """
        @param groups: signals process groups (a L{ProcessGroups}, the
            default).
        @param batch: holds the frames written to workers while a chunk of
            this worker's replies is handled (the pool's; see
            L{taskd._pipes.WriteBatch}).
        @param slots: how many calls it runs at once, if several.
        @param drainGrace: how long a worker let go because a call did not
            stop (see L{WorkerEvents.workerLeaving}) has for its other
            calls.
        """
        self._reactor = reactor
        self._events = events
        self._killGrace = killGrace
        self._groups = ProcessGroups() if groups is None else groups
        self.state = WorkerState.STARTING
        self.requests = requests
        self.inFlight: deque[C] = deque()
        self.calls = 0
        self.expected = 0.0
        self.pid: int | None = None
        self.startError: errors.WorkerStartError | None = None
        self.leavingBecause: str | None = None
        self.slots = slots
        self.concurrent = slots is not None
        self._drainGrace = drainGrace
        # A worker running several calls: its calls by tag, and the timers
        # of the calls asked to stop.
        self._book: CallBook[C] | None = None if slots is None else CallBook(slots)
        self._stopTimers: dict[int, IDelayedCall] = {}
        self._frames = FrameDecoder(
            self._taggedFrameReceived if self.concurrent else self._frameReceived,
            self._frameTooLong,
            maxReply,
        )
        self._batch = WriteBatch() if batch is None else batch
        self.replies = ReplyPipe(reactor, replies, self._repliesReceived, self._repliesClosed)
        self._output: dict[int, OutputLogger] = {}
        self._killTimer: IDelayedCall | None = None
        self._sweepTimer: IDelayedCall | None = None
        self._exit: Failure | None = None

    @classmethod
    def spawn(
        cls, reactor: Any, events: WorkerEvents[C], config: WorkerConfig,
        slots: Slots | None = None, batch: WriteBatch | None = None,
    ) -> WorkerProcess[C]:
        """
        Start a worker process.  The reactor's C{processGroups}, if it has
        one (test doubles do), is used instead of a L{ProcessGroups}.

        @param slots: how many calls it runs at once, if several.
        @param batch: see L{__init__}; its request pipe's writes are held in
            it too.

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
            RequestPipe(reactor, requestWrite, batch),
            replyRead,
            getattr(reactor, "processGroups", None),
            slots,
            config.grace,
            batch,
        )
        # -P: the worker imports what the daemon imports, in the same order,
        # not first from its current directory.
        args = [config.python, "-P", "-u", "-m", "taskd.worker", "--max-result", str(config.maxResult)]
        if config.maxMemory:
            args += ["--max-memory", str(config.maxMemory)]
        if config.maxWorkerRSS:
            args += ["--max-rss", str(config.maxWorkerRSS)]
        if slots is not None:
            args += ["--threads", str(slots.threads), "--async-concurrency", str(max(slots.asyncCalls, 1))]
        args += ["--parent", str(os.getpid()), *config.tasks]
        env = dict(os.environ if config.env is None else config.env)
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
    def exited(self) -> bool:
        """
        Whether the process has exited (its last replies may still be
        being read).
        """
        return self._exit is not None

    @property
    def leaving(self) -> bool:
        """
        Whether its owner has let it go (it is retiring or terminating).
        """
        state = self.state
        return state is WorkerState.RETIRING or state is WorkerState.TERMINATING

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

    def processExited(self, reason: Failure) -> None:
        # Everything the worker wrote is in its reply pipe now: read it all,
        # and end without waiting for an end of file that a process forked
        # by a task (holding a copy of the pipe) could put off forever.
        self._exit = reason
        self.replies.drain()
        if self.replies.open:
            self.replies.close()
        elif self.state is not WorkerState.ENDED:
            self._ended()

    def processEnded(self, reason: Failure) -> None:
        # Every copy of the worker's stdout and stderr is closed.
        for output in self._output.values():
            output.flush()

    def _repliesClosed(self) -> None:
        if self._exit is not None:
            self._ended()

    def _ended(self) -> None:
        assert self._exit is not None
        previous = self._go("end")
        self.requests.abort()
        self._cancelKill()
        for timer in self._stopTimers.values():
            timer.cancel()
        self._stopTimers.clear()
        self._events.workerEnded(self, self._exit, previous)
        if self.pid is not None and self._groups.alive(self.pid):
            self._signalGroup(signal.SIGTERM)
            self.log.info(
                "processes left behind by worker {pid} get SIGTERM, and SIGKILL "
                "in {grace} seconds",
                pid=self.pid,
                grace=self._killGrace,
            )
        self._sweep(self._reactor.seconds() + self._killGrace)

    def _sweep(self, deadline: float) -> None:
        """
        Look at what is left of the worker's process group every
        L{SWEEP_INTERVAL} seconds until it is empty; from C{deadline} on,
        send it SIGKILL each time, and give up L{SWEEP_KILLED} seconds
        later.
        """
        self._sweepTimer = None
        now = self._reactor.seconds()
        if self.pid is None or not self._groups.alive(self.pid):
            self._events.workerGone(self)
            return
        if now >= deadline:
            if now >= deadline + SWEEP_KILLED:
                self.log.warn(
                    "processes left behind by worker {pid} survive SIGKILL", pid=self.pid
                )
                self._events.workerGone(self)
                return
            self._signalGroup(signal.SIGKILL)
        delay = SWEEP_INTERVAL if now >= deadline else min(SWEEP_INTERVAL, deadline - now)
        self._sweepTimer = self._reactor.callLater(delay, self._sweep, deadline)

    # -- frames -----------------------------------------------------------

    def _repliesReceived(self, data: bytes) -> None:
        # The calls its replies let start go out together, once handled.
        batch = self._batch
        batch.hold()
        try:
            self._frames.feed(data)
        finally:
            batch.release()

    def _frameReceived(self, kind: bytes, body: bytes) -> None:
        try:
            if kind == RESULT or kind == PROGRESS:
                # Relayed as they are: only checked.
                _json.checkFrame(body)
                value = None
            else:
                value = _json.loadsFrame(body)
        except (ValueError, RecursionError):
            self._misbehaved(f"a {kind!r} frame that is not one JSON value")
            return
        if kind == RESULT or kind == ERROR:
            if self.state is WorkerState.STARTING:
                if kind == ERROR and isinstance(value, dict):
                    # The worker could not load its task modules; it exits next.
                    error = errors.errorFromDict(value)
                    self.startError = errors.WorkerStartError(
                        error.message, getattr(error, "remoteTraceback", "")
                    )
                    return
            elif self.inFlight:
                if kind == RESULT:
                    reply: bytes | errors.TaskdError = body
                elif isinstance(value, dict):
                    reply = errors.errorFromDict(value)
                else:
                    self._misbehaved("an error that is not a JSON object")
                    return
                call = self.inFlight.popleft()
                self.calls += 1
                self._events.workerReplied(self, call, reply)
                return
            self._misbehaved("a reply with no call running")
        elif kind == PROGRESS:
            if self.inFlight:
                self._events.workerProgress(self, self.inFlight[0], body)
        elif kind == READY and self._can("ready"):
            self._go("ready")
            self._events.workerReady(self)
        elif self.leaving and (kind == READY or kind == ERROR):
            pass  # let go while it started: what it says no longer matters
        elif kind == GOODBYE and self.state is WorkerState.READY and self.leavingBecause is None and isinstance(value, dict):
            self.leavingBecause = str(value.get("reason", ""))
            self.log.info(
                "worker {pid} is leaving: {reason}", pid=self.pid, reason=self.leavingBecause
            )
            self._events.workerLeaving(self, self.leavingBecause)
        else:
            self._misbehaved(f"an unexpected frame {kind + body[:15]!r}")

    def _taggedFrameReceived(self, kind: bytes, rest: bytes) -> None:
        """
        A frame from a worker that runs several calls at once: replies and
        progress name their call by its tag.
        """
        if kind != TAGGED_RESULT and kind != TAGGED_ERROR and kind != TAGGED_PROGRESS:
            if kind == RESULT or kind == PROGRESS or (kind == ERROR and self.state is not WorkerState.STARTING):
                self._misbehaved(f"an untagged frame {kind + rest[:15]!r}")
            else:
                self._frameReceived(kind, rest)
            return
        if len(rest) < 4:
            self._misbehaved(f"a {kind!r} frame without a tag")
            return
        (tag,) = TAG.unpack_from(rest)
        body = rest[4:]
        try:
            # Results and progress are relayed as they are: only checked.
            value = _json.loadsFrame(body) if kind == TAGGED_ERROR else _json.checkFrame(body)
        except (ValueError, RecursionError):
            self._misbehaved(f"a {kind!r} frame that is not one JSON value")
            return
        assert self._book is not None
        call = self._book.get(tag)
        if call is None:
            self._misbehaved(f"a {kind!r} frame for call {tag}, which it does not hold")
            return
        if kind == TAGGED_PROGRESS:
            self._events.workerProgress(self, call, body)
            return
        if kind == TAGGED_RESULT:
            reply: bytes | errors.TaskdError = body
        elif isinstance(value, dict):
            reply = errors.errorFromDict(value)
        else:
            self._misbehaved("an error that is not a JSON object")
            return
        self._forgetTag(tag)
        self.inFlight.remove(call)
        self.calls += 1
        self._events.workerReplied(self, call, reply)

    def _forgetTag(self, tag: int) -> None:
        assert self._book is not None
        self._book.remove(tag)
        timer = self._stopTimers.pop(tag, None)
        if timer is not None:
            timer.cancel()

    def _misbehaved(self, what: str) -> None:
        self.log.error("worker {pid} sent {what}; stopping it", pid=self.pid, what=what)
        self._events.workerMisbehaved(self, _protocolError(self, what))

    def _frameTooLong(self, length: int) -> None:
        self.log.error(
            "worker {pid} sent a {length}-byte frame, over the limit; stopping it",
            pid=self.pid,
            length=length,
        )
        call = self.call
        self._events.workerMisbehaved(
            self,
            _protocolError(self, f"a {length}-byte frame")
            if call is None
            else errors.ResultTooLarge(
                f"task {call.name!r} sent a {length}-byte reply, over the pool's limit"
            ),
        )

    # -- what the owner does ----------------------------------------------

    def run(self, call: C, mode: str = THREAD) -> None:
        """
        Hand C{call} to the worker: it runs when the calls before it have
        been answered, or at once in a worker that runs several calls
        (which must have room for it: see L{fits}).

        @param mode: how the task runs (C{THREAD}, C{ASYNC}, C{PROCESS}),
            for a worker that runs several calls at once.
        """
        self.inFlight.append(call)
        if not self.concurrent:
            self.requests.write(requestFrame(call.name, call.payload))
            return
        assert self._book is not None
        tag = self._book.add(call, mode)
        self.requests.write(taggedRequestFrame(tag, call.name, call.payload))

    def fits(self, call: C, mode: str) -> bool:
        """
        @return: whether this worker, which runs several calls at once, has
            room for C{call}, of C{mode}, now: a free slot, and no earlier
            attempt of the same call still stopping in it (a retry waits
            for that, or goes to another worker).
        """
        book = self._book
        return book is not None and book.fits(mode) and book.tagOf(call) is None

    def cancel(self, call: C) -> None:
        """
        Ask the worker, which runs several calls at once, to stop C{call}
        (its caller has been answered).  The worker answers it when it has
        stopped; if it has not within the kill grace, the worker is let go
        (its owner hears L{WorkerEvents.workerLeaving} with C{"stuck"}).
        """
        tag = None if self._book is None else self._book.tagOf(call)
        if tag is None or tag in self._stopTimers or self.leaving:
            return
        self.requests.write(cancelFrame(tag))
        self._stopTimers[tag] = self._reactor.callLater(self._killGrace, self._stuck, tag)

    def _stuck(self, tag: int) -> None:
        del self._stopTimers[tag]
        assert self._book is not None
        call = self._book.get(tag)
        assert call is not None
        self.log.warn(
            "worker {pid}: task {name!r} did not stop within {grace} seconds of being "
            "asked to; the worker takes no more calls, and is replaced",
            pid=self.pid,
            name=call.name,
            grace=self._killGrace,
        )
        if self.state is WorkerState.READY and self.leavingBecause is None:
            self.leavingBecause = "stuck"
            self._events.workerLeaving(self, "stuck")

    def started(self) -> int:
        """
        @return: how many of the calls in L{inFlight}, from the first, ever
            started (as far as can be told once the worker has ended).
        """
        if not self.inFlight:
            return 0
        if not self.concurrent:
            return 1 if self.leavingBecause is None else 0
        # One that said goodbye answered every call it started.
        return len(self.inFlight) if self.leavingBecause in (None, "stuck") else 0

    @property
    def waiting(self) -> list[C]:
        """
        The calls sent ahead into its pipe that have not started.
        """
        return [] if self.concurrent else list(self.inFlight)[1:]

    def retire(self) -> None:
        """
        Let the worker go gracefully: close its request pipe, so that it
        exits once it has answered what it holds.  If it has not exited
        after the kill grace, terminate it.
        """
        self._go("retire")
        self.requests.close()
        if self.transport is not None:
            self._cancelKill()
            bound = self._drainGrace if self.leavingBecause == "stuck" else self._killGrace
            self._killTimer = self._reactor.callLater(bound, self.terminate)

    def terminate(self) -> None:
        """
        Kill the worker now (SIGKILL), and send SIGTERM to the processes
        its tasks started; what is left of them when it has ended gets
        SIGKILL after the kill grace.
        """
        self._go("terminate")
        self._cancelKill()
        if self.transport is None:
            return
        self._signalGroup(signal.SIGTERM)
        try:
            self.transport.signalProcess(signal.SIGKILL)
        except ProcessExitedAlready:
            pass

    def _cancelKill(self) -> None:
        if self._killTimer is not None and self._killTimer.active():
            self._killTimer.cancel()
        self._killTimer = None

    def _signalGroup(self, number: int) -> None:
        """
        Send signal C{number} to the worker's process group, if it has one
        (it may not have called C{setpgid} yet, or be gone).
        """
        assert self.pid is not None
        try:
            self._groups.signal(self.pid, number)
        except (ProcessLookupError, PermissionError):
            pass
