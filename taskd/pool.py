# -*- test-case-name: tests.test_pool,tests.test_pool_unit -*-
"""
A pool of long-lived worker processes that runs registered tasks.

L{ProcessPool} starts its workers with C{reactor.spawnProcess}; each is
driven by a L{WorkerProcess} protocol that talks to the worker on dedicated
pipes (see L{taskd.worker} for the framing) and logs the worker's standard
output and error.  Calls wait in a bounded FIFO queue; each idle worker takes
the next one.  The pool knows nothing of sockets or JSON lines: it takes a
task name and a JSON-encoded argument object, and gives back the task's
JSON-encoded result, so a server can pass bytes from the network to a
worker and back without decoding and encoding them again.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import sys
from collections import deque
from typing import Any, Callable, Sequence

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReadDescriptor,
    IWriteDescriptor,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from taskd import errors
from taskd.registry import Registry, loadTaskModules, registry as _defaultRegistry
from taskd.worker import DEFAULT_MAX_RESULT, MAX_ERROR_TEXT, REPLY_FD, REQUEST_FD

_header = struct.Struct("!I")
_encodeArgs = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

#: Marks "use the pool's default" where C{None} means "no limit".
_DEFAULT: Any = object()

#: Longest line of a worker's stdout/stderr logged as one event.
MAX_OUTPUT_LINE = 64 * 1024

#: Most bytes read from a reply pipe at once.
_READ_SIZE = 64 * 1024

#: What the protocol pipes are asked to hold (Linux; the default is 64 KiB),
#: so that a large request or result rarely waits for the other side.  No
#: more: a user's pipes share a quota (fs.pipe-user-pages-soft, 64 MiB by
#: default), and 1 MiB measured no faster.
_PIPE_SIZE = 256 * 1024


def _pipe() -> tuple[int, int]:
    readEnd, writeEnd = os.pipe()
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        try:
            fcntl.fcntl(writeEnd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # over the user's pipe quota: the default size works too
    return readEnd, writeEnd


def _decodeResult(encoded: bytes) -> Any:
    return json.loads(encoded)


class _FrameDecoder:
    """
    Split a byte stream into length-prefixed frames.

    Not C{twisted.protocols.basic.Int32StringReceiver}: that joins its whole
    buffer to every new chunk, which is quadratic in the size of a large
    result arriving in 64 KiB pipe reads.  Here whole frames are sliced
    straight out of each chunk read; only the start of a frame that a read
    cut short is kept, in a C{bytearray} that grows in place until the
    frame is complete.
    """

    def __init__(
        self,
        frameReceived: Callable[[bytes], None],
        tooLong: Callable[[int], None],
        maxLength: int,
    ) -> None:
        self._buffer = bytearray()
        self._wanted = 4
        self._frameReceived = frameReceived
        self._tooLong = tooLong
        self._maxLength = maxLength

    def feed(self, data: bytes) -> None:
        buf = self._buffer
        if buf:
            buf += data
            if len(buf) < self._wanted:
                return
            data = bytes(buf)
            buf.clear()
        offset, size = 0, len(data)
        self._wanted = 4
        while size - offset >= 4:
            (length,) = _header.unpack_from(data, offset)
            if length > self._maxLength:
                self._tooLong(length)
                return
            end = offset + 4 + length
            if end > size:
                self._wanted = 4 + length
                break
            self._frameReceived(data[offset + 4 : end])
            offset = end
        if offset < size:
            buf += memoryview(data)[offset:]


@implementer(IWriteDescriptor)
class _RequestPipe:
    """
    The parent's end of a worker's request pipe.

    Not a C{"w"} entry of C{childFDs}: Twisted's process writer buffers
    every write until the reactor reports the pipe writable, which costs a
    reactor turn and two C{epoll_ctl} calls per request.  A request frame
    almost always fits in the pipe at once, so this writes it straight away
    and only asks the reactor for help with what the pipe cannot take.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        os.set_blocking(fd, False)
        self._reactor = reactor
        self._fd: int | None = fd
        self._pending = bytearray()
        self._closeWhenDrained = False

    def write(self, data: bytes) -> None:
        if self._fd is None:
            return
        if not self._pending:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                self.abort()  # the worker is gone; processEnded says why
                return
            if written == len(data):
                return
            data = data[written:]
            self._reactor.addWriter(self)
        self._pending += data

    def doWrite(self) -> None:
        if self._fd is None:
            return
        try:
            written = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except OSError:
            self.abort()
            return
        del self._pending[:written]
        if not self._pending:
            self._reactor.removeWriter(self)
            if self._closeWhenDrained:
                self.abort()

    def close(self) -> None:
        """
        Close once everything written has reached the pipe: the worker then
        reads end of file and exits.
        """
        if self._pending:
            self._closeWhenDrained = True
        else:
            self.abort()

    def abort(self) -> None:
        """
        Close now, dropping anything not yet written.
        """
        if self._fd is None:
            return
        if self._pending:
            self._reactor.removeWriter(self)
            self._pending.clear()
        os.close(self._fd)
        self._fd = None

    def fileno(self) -> int:
        return -1 if self._fd is None else self._fd

    def connectionLost(self, reason: Failure) -> None:
        self.abort()

    def logPrefix(self) -> str:
        return "taskd-request-pipe"


@implementer(IReadDescriptor)
class _ReplyPipe:
    """
    The parent's end of a worker's reply pipe.

    Not an C{"r"} entry of C{childFDs}: Twisted's process reader reads 8 KiB
    per reactor turn, so a 64 KiB result took eight.  This reads up to
    L{_READ_SIZE} at once.  Twisted waits for its own pipes to close before
    it reports a process's end; L{WorkerProcess} does the same for this one.
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        dataReceived: Callable[[bytes], None],
        closed: Callable[[], None],
    ) -> None:
        os.set_blocking(fd, False)
        self._reactor = reactor
        self._fd: int | None = fd
        self._dataReceived = dataReceived
        self._closed = closed
        self._reading = False

    @property
    def open(self) -> bool:
        return self._fd is not None

    def startReading(self) -> None:
        if self._fd is not None and not self._reading:
            self._reading = True
            self._reactor.addReader(self)

    def doRead(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._dataReceived(data)
        else:
            self.close()

    def close(self) -> None:
        if self._fd is None:
            return
        if self._reading:
            self._reactor.removeReader(self)
        os.close(self._fd)
        self._fd = None
        self._closed()

    def fileno(self) -> int:
        return -1 if self._fd is None else self._fd

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def logPrefix(self) -> str:
        return "taskd-reply-pipe"


class _OutputLogger:
    """
    Log one stream of a worker's output line by line.
    """

    def __init__(self, worker: WorkerProcess, stream: str) -> None:
        self._worker = worker
        self._stream = stream
        self._pending = b""

    def feed(self, data: bytes) -> None:
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        while len(self._pending) > MAX_OUTPUT_LINE:
            lines.append(self._pending[:MAX_OUTPUT_LINE])
            self._pending = self._pending[MAX_OUTPUT_LINE:]
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = b""

    def _emit(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        emit = (
            self._worker.log.warn if self._stream == "stderr" else self._worker.log.info
        )
        emit(
            "worker {pid} {stream}: {line}",
            pid=self._worker.pid,
            stream=self._stream,
            line=text,
        )


@define(eq=False)
class _Call:
    """
    One submitted call, from L{ProcessPool.submitEncoded} to its end.
    """

    name: str
    payload: bytes
    timeout: float | None
    progress: Callable[[bytes], object] | None = None
    deferred: Deferred[bytes] = field(init=False)
    worker: WorkerProcess | None = None
    timer: IDelayedCall | None = None
    done: bool = False


class WorkerProcess(ProcessProtocol):
    """
    The parent's side of one worker process.

    @ivar state: C{"starting"} until the worker says it is ready, then
        C{"idle"} or C{"busy"}; C{"leaving"} once the pool has let it go
        (retired, timed out, cancelled, stopping); C{"ended"} after exit.
    @ivar inFlight: the calls written to it and not yet answered; the
        first is the one running.
    @ivar calls: how many calls it has answered.
    """

    log = Logger()
    transport: IProcessTransport | None

    def __init__(self, pool: ProcessPool, requests: _RequestPipe, replies: int) -> None:
        self._pool = pool
        self.requests = requests
        self.state = "starting"
        # Calls written to the worker and not yet answered, in order: the
        # first is running (or about to), the rest wait in its pipe.
        self.inFlight: deque[_Call] = deque()
        self.calls = 0
        self.pid: int | None = None
        self.startError: errors.WorkerStartError | None = None
        self._frames = _FrameDecoder(
            self._frameReceived,
            self._frameTooLong,
            pool.maxResult + 4 * MAX_ERROR_TEXT + 1024,
        )
        self.replies = _ReplyPipe(pool._reactor, replies, self._frames.feed, self._repliesEnded)
        self._output = {1: _OutputLogger(self, "stdout"), 2: _OutputLogger(self, "stderr")}
        self._killTimer: IDelayedCall | None = None
        self._exit: Failure | None = None

    @property
    def call(self) -> _Call | None:
        """
        The call running in the worker, if any.
        """
        return self.inFlight[0] if self.inFlight else None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        # A task that reads stdin gets end of file, not a hang.
        self.transport.closeStdin()
        self.replies.startReading()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD in self._output:
            self._output[childFD].feed(data)

    def _frameReceived(self, frame: bytes) -> None:
        kind = frame[:1]
        if kind == b"E" and self.state == "starting":
            # The worker could not load its task modules; it exits next.
            error = errors.errorFromDict(json.loads(frame[1:]))
            self.startError = errors.WorkerStartError(
                error.message, getattr(error, "remoteTraceback", "")
            )
        elif kind == b"R" or kind == b"E":
            self._pool._replied(self, kind == b"R", frame[1:])
        elif kind == b"P":
            call = self.call
            if call is not None and call.progress is not None and not call.done:
                try:
                    call.progress(frame[1:])
                except Exception:
                    self.log.failure("a progress callback of task {name!r} failed", name=call.name)
        elif kind == b"H":
            self._pool._workerReady(self)
        else:
            self.log.error(
                "worker {pid} sent an unknown frame kind {kind!r}; stopping it",
                pid=self.pid,
                kind=kind,
            )
            self._pool._discard(self)

    def _frameTooLong(self, length: int) -> None:
        self.log.error(
            "worker {pid} sent a {length}-byte frame, over the limit; stopping it",
            pid=self.pid,
            length=length,
        )
        call = self.call
        self._pool._discard(self)
        if call is not None:
            self._pool._finish(
                call,
                Failure(
                    errors.ResultTooLarge(
                        f"task {call.name!r} sent a {length}-byte reply, "
                        f"over the pool's limit"
                    )
                ),
            )

    def run(self, call: _Call) -> None:
        """
        Hand C{call} to the worker.
        """
        assert self.transport is not None
        self.state = "busy"
        self.inFlight.append(call)
        call.worker = self
        name = call.name.encode("utf-8")
        size = len(name) + 1 + len(call.payload)
        self.requests.write(b"".join((_header.pack(size), name, b"\n", call.payload)))

    def retire(self) -> None:
        """
        Ask the worker to exit once it is idle: close its request pipe.  If
        it has not exited after the pool's kill grace, terminate it.
        """
        self.state = "leaving"
        self.requests.close()
        if self.transport is not None:
            self._scheduleKill(self.terminate)

    def terminate(self) -> None:
        """
        Send SIGTERM now and SIGKILL after the pool's kill grace.
        """
        self.state = "leaving"
        if self._signal(signal.SIGTERM):
            self._scheduleKill(lambda: self._signal(signal.SIGKILL))

    def _scheduleKill(self, action: Callable[[], object]) -> None:
        if self._killTimer is not None and self._killTimer.active():
            self._killTimer.cancel()
        self._killTimer = self._pool._reactor.callLater(self._pool.killGrace, action)

    def _signal(self, number: int) -> bool:
        if self.transport is None:
            return False
        try:
            self.transport.signalProcess(number)
        except ProcessExitedAlready:
            return False
        return True

    def processEnded(self, reason: Failure) -> None:
        # Every reply the worker wrote is read before its end is handled:
        # the pool relies on it to know which calls it answered.
        self._exit = reason
        if not self.replies.open:
            self._allEnded()

    def _repliesEnded(self) -> None:
        if self._exit is not None:
            self._allEnded()

    def _allEnded(self) -> None:
        assert self._exit is not None
        self.requests.abort()
        if self._killTimer is not None and self._killTimer.active():
            self._killTimer.cancel()
        self._killTimer = None
        for output in self._output.values():
            output.flush()
        self._pool._ended(self, self._exit)

    def describeExit(self, reason: Failure) -> str:
        """
        @return: how the worker ended, for error messages and logs.
        """
        value = reason.value
        if isinstance(value, ProcessDone):
            return "exited with status 0"
        status = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        if sig is not None:
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            return f"was killed by {name}"
        return f"exited with status {status}"


class ProcessPool:
    """
    A pool of worker processes running registered tasks.

    @ivar workers: how many worker processes to keep running.
    @ivar maxQueue: how many calls may wait for a worker; past it,
        submitting fails at once with L{errors.PoolBusy}.
    @ivar timeout: the default limit, in seconds, on the time a call runs in
        its worker, or C{None} for no limit.  Time spent queued is not
        counted.
    @ivar maxTasksPerWorker: replace a worker after it has answered this
        many calls (C{None}: never).
    @ivar grace: on L{stop}, how long running calls may go on.
    @ivar killGrace: how long a worker has between SIGTERM and SIGKILL (and
        between being asked to exit and SIGTERM).
    @ivar maxResult: the largest JSON-encoded result, in bytes.
    @ivar prefetch: how many calls a worker may hold at once: the one it
        runs and, while calls are queued and no worker is idle, the next
        ones waiting in its pipe, so it never waits for the parent between
        calls.  1 (the default) sends a call only to an idle worker; more
        speeds up short tasks but lets a long task delay the calls behind
        it.
    @ivar maxMemory: each worker's address-space limit in bytes
        (C{RLIMIT_AS}), or C{None}; a task past it gets C{MemoryError}.
    @ivar minRestartDelay: the first delay before replacing a worker that
        failed to start; it doubles for each further failure in a row, up
        to C{maxRestartDelay}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        tasks: Sequence[str] = ("taskd.examples",),
        workers: int | None = None,
        *,
        maxQueue: int = 1000,
        timeout: float | None = None,
        maxTasksPerWorker: int | None = None,
        grace: float = 10.0,
        killGrace: float = 5.0,
        maxResult: int = DEFAULT_MAX_RESULT,
        maxMemory: int | None = None,
        prefetch: int = 1,
        minRestartDelay: float = 0.5,
        maxRestartDelay: float = 30.0,
        registry: Registry | None = None,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        if workers is None:
            workers = os.cpu_count() or 1
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        if maxQueue < 0:
            raise ValueError("maxQueue must not be negative")
        if maxTasksPerWorker is not None and maxTasksPerWorker < 1:
            raise ValueError("maxTasksPerWorker must be at least 1")
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._reactor = reactor
        self.tasks = list(tasks)
        self.workers = workers
        self.maxQueue = maxQueue
        self.timeout = timeout
        self.maxTasksPerWorker = maxTasksPerWorker
        self.grace = grace
        self.killGrace = killGrace
        self.maxResult = maxResult
        self.maxMemory = maxMemory
        self.prefetch = prefetch
        self.minRestartDelay = minRestartDelay
        self.maxRestartDelay = maxRestartDelay
        self.registry = _defaultRegistry if registry is None else registry
        self._python = python
        self._env = env

        self.state = "new"
        self._queue: deque[_Call] = deque()
        self._idle: list[WorkerProcess] = []
        # Workers counted against capacity: starting, idle or busy.
        self._live: set[WorkerProcess] = set()
        # Every worker process not yet ended, leaving ones included.
        self._processes: set[WorkerProcess] = set()
        self._restartDelay = minRestartDelay
        self._restartTimers: set[IDelayedCall] = set()
        self._startError: errors.WorkerStartError | None = None
        self._starting: Deferred[None] | None = None
        self._stopping: list[Deferred[None]] = []
        self._graceTimer: IDelayedCall | None = None

    # -- public API -------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Import the task modules here, start the workers and wait until all
        of them are ready.

        @return: a C{Deferred} that fires with C{None} once every worker is
            ready, or fails with the import error or
            L{errors.WorkerStartError} (after which the pool is stopped).
        """
        if self.state != "new":
            return fail(RuntimeError(f"cannot start a pool that is {self.state}"))
        try:
            loadTaskModules(self.tasks)
        except Exception:
            self.state = "stopped"
            return fail()
        self.state = "starting"
        starting = self._starting = Deferred()
        for _ in range(self.workers):
            if self.state != "starting":
                break  # a spawn failed and stopped the pool
            self._spawn()
        return starting

    def submit(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = _DEFAULT,
        progress: Callable[[Any], object] | None = None,
    ) -> Deferred[Any]:
        """
        Run task C{name} with C{args} and C{kwargs} in a worker.

        @param timeout: seconds the call may run in its worker; the pool's
            default if not given, no limit if C{None}.
        @param progress: called with each value the task reports with
            L{taskd.worker.progress}, before the result.
        @return: a C{Deferred} firing with the task's result (decoded from
            JSON), or failing with an L{errors.TaskdError} (or
            C{twisted.internet.defer.CancelledError} if cancelled).
        """
        try:
            payload = _encodeArgs({"args": list(args), "kwargs": kwargs or {}})
        except (TypeError, ValueError) as e:
            return fail(errors.BadRequest(f"arguments cannot be sent as JSON: {e}"))
        encodedProgress = None
        if progress is not None:
            encodedProgress = lambda value: progress(json.loads(value))  # noqa: E731
        d = self.submitEncoded(
            name, payload.encode("ascii"), timeout=timeout, progress=encodedProgress
        )
        return d.addCallback(_decodeResult)

    def submitEncoded(
        self,
        name: str,
        payload: bytes,
        *,
        timeout: float | None = _DEFAULT,
        progress: Callable[[bytes], object] | None = None,
    ) -> Deferred[bytes]:
        """
        Like L{submit}, with the arguments already encoded and the result
        (and progress reports) left encoded.

        @param payload: a UTF-8 JSON object whose C{"args"} is an array
            (positional arguments) or an object (keyword arguments) and
            whose optional C{"kwargs"} is an object; other keys are ignored,
            so a whole request line from the wire will do.
        @return: a C{Deferred} firing with the result as JSON bytes.
        """
        if self.state not in ("starting", "running"):
            return fail(
                errors.PoolStopping(f"the pool is not running (it is {self.state})")
            )
        if name not in self.registry:
            return fail(errors.UnknownTask(f"no task named {name!r}"))
        if self._startError is not None and not self._anyReady():
            return fail(self._startError)
        if not self._idle and len(self._queue) >= self.maxQueue:
            return fail(
                errors.PoolBusy(
                    f"the queue is full ({self.maxQueue} calls waiting); "
                    "try again later"
                )
            )
        call = _Call(name, payload, self.timeout if timeout is _DEFAULT else timeout, progress)
        call.deferred = Deferred(lambda d: self._cancel(call))
        if self._idle:
            self._run(self._idle.pop(), call)
        else:
            worker = self._sendAheadTo()
            if worker is not None:
                self._run(worker, call)
            else:
                self._queue.append(call)
        return call.deferred

    def stop(self) -> Deferred[None]:
        """
        Stop: refuse new calls, fail queued ones with L{errors.PoolStopping},
        give running calls C{grace} seconds to finish (then fail them with
        L{errors.PoolStopping} and terminate their workers), and end every
        worker.

        @return: a C{Deferred} that fires when every worker process has
            exited.
        """
        if self.state == "new":
            self.state = "stopped"
        if self.state == "stopped" and not self._processes:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stopping.append(d)
        if self.state == "stopping":
            return d
        self.state = "stopping"
        for timer in self._restartTimers:
            timer.cancel()
        self._restartTimers.clear()
        if self._starting is not None:
            starting, self._starting = self._starting, None
            starting.errback(errors.PoolStopping("the pool was stopped while starting"))
        self._failQueue(errors.PoolStopping("the pool is stopping"))
        for worker in list(self._processes):
            # Calls waiting in a worker's pipe count as queued.
            for call in list(worker.inFlight)[1:]:
                self._finish(call, Failure(errors.PoolStopping("the pool is stopping")))
            if worker.state == "idle":
                self._release(worker)
            elif worker.state == "starting":
                self._discard(worker)
        if any(w.state == "busy" for w in self._processes):
            self._graceTimer = self._reactor.callLater(self.grace, self._graceOver)
        self._checkStopped()
        return d

    def stats(self) -> dict[str, int]:
        """
        @return: counts of workers and calls, for monitoring.
        """
        busy = sum(1 for w in self._live if w.state == "busy")
        return {
            "workers": len(self._live),
            "idle": len(self._idle),
            "busy": busy,
            "queued": len(self._queue),
            "processes": len(self._processes),
        }

    def pids(self) -> set[int]:
        """
        @return: the process ids of every worker process not yet ended.
        """
        return {w.pid for w in self._processes if w.pid is not None}

    # -- workers ----------------------------------------------------------

    def _spawn(self) -> None:
        requestRead, requestWrite = _pipe()
        replyRead, replyWrite = _pipe()
        worker = WorkerProcess(self, _RequestPipe(self._reactor, requestWrite), replyRead)
        args = [self._python, "-u", "-m", "taskd.worker", "--max-result", str(self.maxResult)]
        if self.maxMemory:
            args += ["--max-memory", str(self.maxMemory)]
        args += ["--parent", str(os.getpid())]
        args.extend(self.tasks)
        env = dict(os.environ if self._env is None else self._env)
        # The workers import what the parent can import.
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self._live.add(worker)
        self._processes.add(worker)
        try:
            self._reactor.spawnProcess(
                worker,
                self._python,
                args,
                env=env,
                childFDs={0: "w", 1: "r", 2: "r", REQUEST_FD: requestRead, REPLY_FD: replyWrite},
            )
        except Exception as e:
            worker.requests.abort()
            worker.replies.close()
            self._live.discard(worker)
            self._processes.discard(worker)
            self._startFailed(errors.WorkerStartError(f"cannot spawn a worker: {e}"))
        finally:
            # The worker has its own copies now.
            os.close(requestRead)
            os.close(replyWrite)

    def _anyReady(self) -> bool:
        return any(w.state in ("idle", "busy") for w in self._live)

    def _workerReady(self, worker: WorkerProcess) -> None:
        self.log.info("worker {pid} started", pid=worker.pid)
        self._restartDelay = self.minRestartDelay
        self._startError = None
        if self.state == "stopping":
            self._release(worker)
            return
        self._feed(worker)
        if self._starting is not None and all(w.state != "starting" for w in self._live):
            starting, self._starting = self._starting, None
            self.state = "running"
            starting.callback(None)

    def _capacity(self, worker: WorkerProcess) -> int:
        """
        @return: how many calls C{worker} may hold now.
        """
        depth = self.prefetch
        if self.maxTasksPerWorker is not None:
            depth = min(depth, self.maxTasksPerWorker - worker.calls)
        return depth

    def _sendAheadTo(self) -> WorkerProcess | None:
        """
        @return: a busy worker that may take one more call in its pipe, if
            sending ahead is on.
        """
        if self.prefetch == 1:
            return None
        best = None
        for worker in self._live:
            if worker.state == "busy" and len(worker.inFlight) < self._capacity(worker):
                if best is None or len(worker.inFlight) < len(best.inFlight):
                    best = worker
        return best

    def _feed(self, worker: WorkerProcess) -> None:
        """
        Give C{worker} queued calls up to its capacity; idle it if none.
        """
        capacity = self._capacity(worker)
        while self._queue and len(worker.inFlight) < capacity:
            self._run(worker, self._queue.popleft())
        if not worker.inFlight:
            worker.state = "idle"
            self._idle.append(worker)

    def _run(self, worker: WorkerProcess, call: _Call) -> None:
        worker.run(call)
        if len(worker.inFlight) == 1:
            self._started(worker)

    def _started(self, worker: WorkerProcess) -> None:
        """
        The first call in C{worker}'s pipe is now the one it runs: start its
        clock.  A call cancelled (or failed by a stop) while it waited in
        the pipe is not let run: the worker is stopped, and the calls behind
        it go back to the queue when the worker has ended.
        """
        call = worker.inFlight[0]
        if call.done:
            self._discard(worker)
        elif call.timeout is not None:
            call.timer = self._reactor.callLater(call.timeout, self._timedOut, call)

    def _release(self, worker: WorkerProcess) -> None:
        """
        Let a worker go gracefully: it exits when its request pipe closes.
        """
        self._forget(worker)
        worker.retire()

    def _discard(self, worker: WorkerProcess) -> None:
        """
        Let a worker go at once: terminate it.  The call it runs must have
        been finished by the caller; the calls waiting in its pipe are
        settled when it has ended (see L{_ended}).
        """
        if worker.state == "leaving":
            return
        self._forget(worker)
        worker.terminate()
        self._replace()

    def _forget(self, worker: WorkerProcess) -> None:
        self._live.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)

    def _replace(self, delay: float = 0.0) -> None:
        if self.state not in ("starting", "running"):
            return
        if len(self._live) + len(self._restartTimers) >= self.workers:
            return
        if delay <= 0:
            self._spawn()
            return

        def restart() -> None:
            self._restartTimers.discard(timer)
            self._spawn()

        timer = self._reactor.callLater(delay, restart)
        self._restartTimers.add(timer)

    def _replied(self, worker: WorkerProcess, ok: bool, body: bytes) -> None:
        if not worker.inFlight:
            self.log.error(
                "worker {pid} replied with no call running; stopping it", pid=worker.pid
            )
            self._discard(worker)
            return
        call = worker.inFlight.popleft()
        worker.calls += 1
        if ok:
            self._finish(call, body)
        else:
            self._finish(call, Failure(errors.errorFromDict(json.loads(body))))
        if worker.state == "leaving":
            return  # being stopped; _ended settles the rest
        if worker.inFlight:
            self._started(worker)
            if worker.state == "leaving":
                return
        if self.state != "running" and self.state != "starting":
            if not worker.inFlight:
                self._release(worker)
                self._checkStopped()
        elif self.maxTasksPerWorker is not None and worker.calls >= self.maxTasksPerWorker:
            self._release(worker)
            self._replace()
        else:
            self._feed(worker)

    def _ended(self, worker: WorkerProcess, reason: Failure) -> None:
        wasLive = worker in self._live
        self._processes.discard(worker)
        self._forget(worker)
        how = worker.describeExit(reason)
        neverReady = worker.state == "starting"
        worker.state = "ended"
        inFlight, worker.inFlight = worker.inFlight, deque()
        if inFlight:
            # Every reply the worker wrote has been read by now, so the
            # first call was the one running; the others never started.
            call = inFlight.popleft()
            self._finish(
                call,
                Failure(
                    errors.WorkerCrashed(
                        f"the worker running task {call.name!r} "
                        f"(pid {worker.pid}) {how}"
                    )
                ),
            )
            self._requeue(inFlight)
        if neverReady and wasLive:
            error = worker.startError or errors.WorkerStartError(
                f"worker {worker.pid} {how} before it was ready"
            )
            self.log.error(
                "worker {pid} could not start: {message}\n{traceback}",
                pid=worker.pid,
                message=error.message,
                traceback=error.remoteTraceback,
            )
            self._startFailed(error)
        else:
            self.log.info("worker {pid} {how}", pid=worker.pid, how=how)
            if wasLive:
                self._replace()
        self._checkStopped()

    def _startFailed(self, error: errors.WorkerStartError) -> None:
        if self._starting is not None:
            # Fail start() only once every worker is gone again.
            starting, self._starting = self._starting, None
            self.stop().addBoth(lambda _: starting.errback(error))
            return
        self._startError = error
        if not self._anyReady():
            self._failQueue(error)
        delay = self._restartDelay
        self._restartDelay = min(delay * 2, self.maxRestartDelay)
        self._replace(delay)

    # -- calls ------------------------------------------------------------

    def _finish(self, call: _Call, result: bytes | Failure) -> None:
        if call.done:
            return
        call.done = True
        call.worker = None
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.deferred.callback(result)

    def _requeue(self, calls: deque[_Call]) -> None:
        """
        Put calls that never started back at the front of the queue.
        """
        for call in reversed(calls):
            if not call.done:
                call.worker = None
                self._queue.appendleft(call)
        if self.state not in ("starting", "running"):
            self._failQueue(errors.PoolStopping("the pool is stopping"))
        while self._idle and self._queue:
            self._feed(self._idle.pop())

    def _failQueue(self, error: Exception) -> None:
        queue, self._queue = self._queue, deque()
        for call in queue:
            self._finish(call, Failure(error))

    def _timedOut(self, call: _Call) -> None:
        worker = call.worker
        call.timer = None
        self._finish(
            call,
            Failure(
                errors.TaskTimeout(
                    f"task {call.name!r} did not finish within {call.timeout} seconds"
                )
            ),
        )
        if worker is not None:
            self._discard(worker)

    def _cancel(self, call: _Call) -> None:
        if call.done:
            return
        worker = call.worker
        call.done = True
        call.worker = None
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        if worker is None:
            self._queue.remove(call)
        elif worker.call is call:
            self._discard(worker)
        # else it waits in the worker's pipe: see _started.

    # -- stopping ---------------------------------------------------------

    def _graceOver(self) -> None:
        self._graceTimer = None
        for worker in list(self._processes):
            call = worker.call
            if call is not None:
                self._finish(
                    call,
                    Failure(
                        errors.PoolStopping(
                            f"task {call.name!r} did not finish within the "
                            f"{self.grace}-second shutdown grace period"
                        )
                    ),
                )
                self._discard(worker)

    def _checkStopped(self) -> None:
        if self.state != "stopping" or self._processes:
            return
        self.state = "stopped"
        if self._graceTimer is not None and self._graceTimer.active():
            self._graceTimer.cancel()
        self._graceTimer = None
        waiting, self._stopping = self._stopping, []
        for d in waiting:
            d.callback(None)


class PoolService(Service):
    """
    A L{ProcessPool} as a service: started with its parent, and stopping
    (with the pool's grace period) before its parent's C{stopService} is
    done.
    """

    log = Logger()

    def __init__(
        self, pool: ProcessPool, onStartFailure: Callable[[], object] | None = None
    ) -> None:
        """
        @param onStartFailure: called (after the failure is logged) if the
            pool cannot start; the daemon stops its reactor.
        """
        self.pool = pool
        self._onStartFailure = onStartFailure

    def startService(self) -> None:
        super().startService()
        self.pool.start().addCallbacks(self._started, self._startFailed)

    def _started(self, _: None) -> None:
        self.log.info(
            "pool ready: {n} worker{s} running {tasks}",
            n=self.pool.workers,
            s="" if self.pool.workers == 1 else "s",
            tasks=", ".join(self.pool.tasks),
        )

    def _startFailed(self, failure: Failure) -> None:
        self.log.failure("the pool could not start", failure)
        if self._onStartFailure is not None:
            self._onStartFailure()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.pool.stop()
