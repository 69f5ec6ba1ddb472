# -*- test-case-name: tests.test_multicall -*-
"""
A worker that runs several calls at once: plain tasks on a pool of
threads, C{async def} tasks on one asyncio event loop.

The pool starts a worker with C{--threads N} (see L{taskd.worker}) when
its C{--threads} is above 1 or a task module holds an C{async def} task.
Such a worker reads tagged frames (L{taskd._frames} has the format) in its
main thread and hands each call to:

  - one of its C{N} threads, for a task of mode C{THREAD} or C{PROCESS}
    (the pool sends a C{PROCESS} call only to a worker running nothing
    else, and sends it nothing else meanwhile);
  - its event loop, for a task of mode C{ASYNC}: at most
    C{--async-concurrency} of them run at once.

Each call is answered, exactly once, with a frame carrying its tag, in
the order the calls end.  A C{C} (cancel) frame stops a call as well as
Python allows:

  - an C{async def} task gets C{asyncio.CancelledError} where it awaits,
    its C{finally} blocks run;
  - a thread gets L{CallCancelled} raised in it the next time it runs
    Python code (a thread blocked in C, in C{time.sleep} or a socket
    read, sees it when that returns);
  - a call that has not started does not start.

The stopped call is answered with its error (nobody waits for it: the
pool answered its caller already).  A call that ignores the stop is
never answered; the pool, after its kill grace, lets the worker go and
starts another.

At end of file on its request pipe, or on SIGTERM, the worker reads no
more calls, waits for the ones it runs (not for those it was asked to
stop) and leaves.

Imported only by such a worker: nothing from Twisted, and C{asyncio} only
if a task needs it.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
import threading
from typing import IO, Any, Callable

from taskd import worker
from taskd._frames import (
    CALL,
    CANCEL,
    HEADER,
    RESULT,
    TAG,
    TAGGED_ERROR,
    TAGGED_PROGRESS,
    TAGGED_RESULT,
)
from taskd.registry import ASYNC, Registry


class CallCancelled(BaseException):
    """
    Raised inside a task's thread when its call timed out or was
    cancelled.  A C{BaseException}, like C{asyncio.CancelledError}, so
    that C{except Exception} in a task does not swallow it.
    """


def _setAsyncExc(ident: int, exc: type[BaseException] | None) -> None:
    """
    Raise C{exc} in thread C{ident} when it next runs Python code (or, for
    C{None}, take back one not yet raised).
    """
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc) if exc is not None else None
    )


class _Running:
    """
    One call a L{MultiCallServer} has read and not yet answered.

    @ivar ident: the thread running it, while it runs on one.
    @ivar task: its asyncio task, once it has one.
    @ivar cancelled: whether the parent asked to stop it.
    @ivar stopping: whether L{CallCancelled} was sent to its thread.
    """

    __slots__ = ("tag", "name", "mode", "ident", "task", "cancelled", "stopping")

    def __init__(self, tag: int, name: str, mode: str) -> None:
        self.tag = tag
        self.name = name
        self.mode = mode
        self.ident: int | None = None
        self.task: Any = None
        self.cancelled = False
        self.stopping = False


class MultiCallServer:
    """
    Serve tagged request frames with several calls running at once.
    """

    def __init__(
        self,
        reg: Registry,
        out: IO[bytes],
        maxResult: int,
        threads: int,
        asyncConcurrency: int,
        stop: worker.StopSignal,
        memory: worker.MemoryLimit | None = None,
    ) -> None:
        """
        @param threads: how many threads run plain tasks.
        @param asyncConcurrency: how many C{async def} calls may run at once.
        @param stop: the SIGTERM handler (installed).
        @param memory: the limit on resident memory, checked after each call.
        """
        self._registry = reg
        self._out = out
        self._maxResult = maxResult
        self._threadCount = threads
        self._asyncConcurrency = asyncConcurrency
        self._stop = stop
        self._memory = memory
        self._reason: str | None = None
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._calls: dict[int, _Running] = {}
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop: Any = None
        self._semaphore: Any = None

    def start(self) -> None:
        """
        Start the threads, and the event loop if a task is C{async def}.
        """
        for number in range(self._threadCount):
            threading.Thread(target=self._threadMain, name=f"taskd-{number}", daemon=True).start()
        if any(self._registry.mode(name) == ASYNC for name in self._registry):
            import asyncio

            loop = self._loop = asyncio.new_event_loop()
            self._semaphore = asyncio.Semaphore(self._asyncConcurrency)
            threading.Thread(target=loop.run_forever, name="taskd-loop", daemon=True).start()
        worker.reportTaggedProgressTo(self.progress)

    # -- the main thread: reading -----------------------------------------

    def serve(self, inp: IO[bytes]) -> str | None:
        """
        Read and start calls from C{inp} until end of file or SIGTERM, then
        wait for the calls running (except those asked to stop).

        @return: why the worker leaves (C{"signal"}, C{"memory"}), or
            C{None} at end of file.
        """
        read = inp.read
        stop = self._stop
        reason: str | None = None
        while True:
            try:
                stop._waiting = True
                if stop.asked:
                    raise worker.StopRequested()
                head = read(4)
                stop._waiting = False
            except worker.StopRequested:
                reason = self._reason or "signal"
                break
            if len(head) < 4:
                break
            (length,) = HEADER.unpack(head)
            body = read(length)
            if len(body) < length:
                break
            self._frameReceived(body)
        stop._waiting = False
        with self._settled:
            while any(not running.cancelled for running in self._calls.values()):
                self._settled.wait()
        return reason

    def _frameReceived(self, body: bytes) -> None:
        kind = body[:1]
        (tag,) = TAG.unpack_from(body, 1)
        if kind == CALL:
            self._start(tag, body[5:])
        elif kind == CANCEL:
            self.cancel(tag)

    def _start(self, tag: int, body: bytes) -> None:
        call = worker.prepareCall(self._registry, body)
        if isinstance(call, bytes):
            self._write(tag, call)
            return
        name, function, args, kwargs = call
        mode = self._registry.mode(name)
        running = _Running(tag, name, mode)
        with self._lock:
            self._calls[tag] = running
        if mode == ASYNC:
            self._loop.call_soon_threadsafe(self._startAsync, running, function, args, kwargs)
        else:
            self._jobs.put((running, function, args, kwargs))

    def cancel(self, tag: int) -> None:
        """
        Stop call C{tag} as well as can be done (see the module's
        docstring).
        """
        with self._lock:
            running = self._calls.get(tag)
            if running is None or running.cancelled:
                return
            running.cancelled = True
            if running.mode == ASYNC:
                self._loop.call_soon_threadsafe(self._cancelAsync, running)
            elif running.ident is not None:
                running.stopping = True
                _setAsyncExc(running.ident, CallCancelled)
            # else it has not started: its thread will not start it.
        self._settledChanged()

    # -- answering (any thread) ---------------------------------------------

    def progress(self, tag: int, encoded: bytes) -> None:
        """
        Send a progress report of call C{tag}, if it is running.
        """
        with self._lock:
            running = self._calls.get(tag)
            if running is not None and not running.cancelled:
                self._send(TAGGED_PROGRESS + TAG.pack(tag) + encoded)

    def _answer(self, running: _Running, reply: bytes) -> None:
        """
        Answer C{running} with C{reply} (an C{R} or C{E} frame's payload),
        unless it was answered already.
        """
        with self._lock:
            if self._calls.pop(running.tag, None) is None:
                return
            self._writeLocked(running.tag, reply)
            self._settled.notify_all()
        memory = self._memory
        if memory is not None and self._reason is None and memory.exceeded():
            self._reason = "memory"
            self._stop.asked = True
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

    def _write(self, tag: int, reply: bytes) -> None:
        with self._lock:
            self._writeLocked(tag, reply)

    def _writeLocked(self, tag: int, reply: bytes) -> None:
        kind = TAGGED_RESULT if reply[:1] == RESULT else TAGGED_ERROR
        self._send(kind + TAG.pack(tag) + reply[1:])

    def _send(self, data: bytes) -> None:
        out = self._out
        out.write(HEADER.pack(len(data)) + data)
        out.flush()

    def _settledChanged(self) -> None:
        with self._settled:
            self._settled.notify_all()

    # -- threads ------------------------------------------------------------

    def _threadMain(self) -> None:
        while True:
            job = None
            try:
                job = self._jobs.get()
                self._runThreaded(*job)
            except CallCancelled:
                # A stop that arrived after the task had returned.
                if job is not None:
                    self._settle(job[0])
                    self._answer(job[0], worker.stopped(job[0].name))

    def _runThreaded(
        self, running: _Running, function: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        with self._lock:
            if running.cancelled:
                self._calls.pop(running.tag, None)
                self._writeLocked(running.tag, worker.stopped(running.name))
                self._settled.notify_all()
                return
            running.ident = threading.get_ident()
        token = worker.currentTag.set(running.tag)
        reply = None
        try:
            result = function(*args, **kwargs)
            reply = worker.encodeResult(running.name, result, self._maxResult)
        except BaseException as e:
            try:
                reply = worker.failed(e)
            except CallCancelled:
                pass
        self._settle(running)
        worker.currentTag.reset(token)
        if reply is None:
            reply = worker.stopped(running.name)
        self._answer(running, reply)

    def _settle(self, running: _Running) -> None:
        """
        The task of C{running} has returned: no L{CallCancelled} may reach
        its thread from now on (one sent and not yet raised is taken
        back).
        """
        while True:
            try:
                with self._lock:
                    if running.ident is not None and running.stopping:
                        _setAsyncExc(running.ident, None)
                    running.ident = None
                return
            except CallCancelled:
                continue

    # -- the event loop -------------------------------------------------------

    def _startAsync(
        self, running: _Running, function: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        if running.cancelled:
            self._answer(running, worker.stopped(running.name))
            return
        running.task = self._loop.create_task(self._runAsync(running, function, args, kwargs))

    def _cancelAsync(self, running: _Running) -> None:
        if running.task is None:
            self._answer(running, worker.stopped(running.name))
        else:
            running.task.cancel()

    async def _runAsync(
        self, running: _Running, function: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        worker.currentTag.set(running.tag)  # this task's own context
        try:
            async with self._semaphore:
                result = await function(*args, **kwargs)
            reply = worker.encodeResult(running.name, result, self._maxResult)
        except BaseException as e:
            reply = worker.failed(e)
        self._answer(running, reply)


def serveConcurrently(
    reg: Registry,
    inp: IO[bytes],
    out: IO[bytes],
    maxResult: int,
    threads: int,
    asyncConcurrency: int,
    stop: worker.StopSignal,
    memory: worker.MemoryLimit | None,
) -> str | None:
    """
    Run a L{MultiCallServer} until it is done.

    @return: as L{MultiCallServer.serve}.
    """
    server = MultiCallServer(reg, out, maxResult, threads, asyncConcurrency, stop, memory)
    server.start()
    return server.serve(inp)


def leave(code: int) -> None:
    """
    Exit now, without waiting for threads running calls that would not
    stop.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
