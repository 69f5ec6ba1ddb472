# -*- test-case-name: tests.test_pool -*-
"""
The loop inside each worker process.

The pool starts a worker as C{python -u -m taskd.worker [options] MODULE...}
with two extra pipes: it writes request frames to the worker's fd 3 and
reads reply frames from its fd 4 (L{taskd._frames} has the format).
Standard output and error are left to the tasks; the parent logs whatever
appears there, tagged with the worker.

The worker runs one call at a time with no reactor, so a task may block as
it likes.  End of file on fd 3 means the parent is done with it (or gone):
the worker exits.  On Linux a worker is also killed when its parent dies,
even in the middle of a task.

Each reply is written as soon as its call ends, before the next call
starts, even when more calls wait in the pipe (C{--prefetch}): the parent
learns that a call started from the reply of the call before it, so a
reply held back while the next call runs would hide that start.  A worker
killed then would lose the held reply (its call reported as crashed,
though it ran) and the parent would put the next call back in the queue
as never started, though it ran: it could run twice.  Requests are read
in batches (one read takes every frame waiting in the pipe).

This module imports nothing from Twisted: workers start fast and small.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from contextvars import ContextVar
from typing import IO, Any, Callable

from taskd import _json, errors

try:
    from orjson import loads as _orjsonLoads
except ImportError:  # pragma: no cover - the fast extra is not installed
    _orjsonLoads = None  # type: ignore[assignment]
from taskd._frames import (
    DEFAULT_MAX_RESULT,
    ERROR,
    GOODBYE,
    HEADER,
    MAX_ERROR_TEXT,
    MAX_PROGRESS,
    PROGRESS,
    READY,
    REPLY_FD,
    REQUEST_FD,
    RESULT,
    splitArguments,
)
from taskd.registry import Registry, loadTaskModules, registry as _registry
from taskd._workerio import frameWriters

# Where progress reports of the running call go: nowhere outside a call.
_progressLock = threading.Lock()
_progressOut: IO[bytes] | None = None
# The number of the call running now (0: none), and, on threads started
# during a call, the number of that call (see _ownCalls).
_call = 0
_CALL_ATTRIBUTE = "_taskdCall"
# This worker's pid: a process a task forks inherits the call, not the pipe's
# right to it.
_pid = os.getpid()

#: In a worker that runs several calls at once: the tag of the call the
#: current thread or asyncio task runs (0: none).
currentTag: ContextVar[int] = ContextVar("currentTag", default=0)
# Where reports of tagged calls go (see reportTaggedProgressTo).
_taggedProgress: Callable[[int, bytes], None] | None = None


def _reportingCall() -> int:
    """
    @return: the number of the call a report made now belongs to: the
        running call, for the thread that runs it and for threads started
        outside any call (a thread pool made at import); for a thread a
        call started, that call.
    """
    thread = threading.current_thread()
    return getattr(thread, _CALL_ATTRIBUTE, 0) or currentTag.get() or _call


def _ownCalls() -> None:
    """
    Mark every thread started from now on with the call it was started
    during, so that a report from a thread a task left running is counted
    for its own call (and dropped, since that call has ended), not for the
    call that runs when it reports.
    """
    start = threading.Thread.start

    def startOwned(thread: threading.Thread) -> None:
        owner = _reportingCall()
        if owner:
            setattr(thread, _CALL_ATTRIBUTE, owner)
        start(thread)

    threading.Thread.start = startOwned  # type: ignore[method-assign, assignment]


def progress(value: Any) -> None:
    """
    Report how the running call is doing, from inside a task::

        from taskd import progress, task

        @task
        def send_mails(addresses):
            for i, address in enumerate(addresses):
                send_one(address)
                progress({"sent": i + 1, "of": len(addresses)})

    Callers that asked for progress receive each C{value} at once, before
    the result; others never see it.  Reports are for people watching, not
    for data: a slow reader may miss some.  Outside a call (in a unit test
    of the task, say) this does nothing.  It may be called from threads the
    task started: a report counts for the call during which its thread was
    started, and goes nowhere once that call has returned (a thread the
    task left running never reports into a later call).  Threads started
    outside any call (a thread pool made when the module was imported)
    report for the call running when they report.

    @param value: any JSON value, at most L{MAX_PROGRESS} bytes of it.
    @raise TypeError: if C{value} is not JSON (C{ValueError} for NaN or an
        infinity).
    @raise ValueError: if it is too large.
    """
    encoded = _json.encode(value)
    if len(encoded) > MAX_PROGRESS:
        raise ValueError(
            f"a progress report holds at most {MAX_PROGRESS} bytes of JSON, "
            f"not {len(encoded)}"
        )
    with _progressLock:
        if _progressOut is not None and _reportingCall() == _call and os.getpid() == _pid:
            _send(_progressOut, PROGRESS + encoded)
            return
    sink = _taggedProgress
    if sink is not None and os.getpid() == _pid:
        tag = _reportingCall()
        if tag:
            sink(tag, encoded)


def reportTaggedProgressTo(sink: Callable[[int, bytes], None] | None) -> None:
    """
    In a worker that runs several calls at once, send L{progress} reports
    to C{sink}, with the tag of the call they are for (see L{currentTag});
    C{sink} drops those of calls that have ended.
    """
    global _taggedProgress
    _taggedProgress = sink


def _reportProgressTo(out: IO[bytes] | None) -> None:
    """
    Start a call whose reports go to C{out}, or (C{None}) end it.
    """
    global _progressOut, _call
    with _progressLock:
        _progressOut = out
        if out is not None:
            _call += 1


def _typeName(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _safeStr(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {_typeName(exc)}>"


def _clip(text: str) -> str:
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return text[:MAX_ERROR_TEXT] + " [... truncated]"


def _error(error: errors.TaskdError) -> bytes:
    fields = {k: _clip(v) if isinstance(v, str) else v for k, v in error.toDict().items()}
    return ERROR + _json.encodeASCII(fields)


def prepareCall(
    reg: Registry, body: bytes
) -> tuple[str, Callable[..., Any], list[Any], dict[str, Any]] | bytes:
    """
    Read one call from a request frame's body (without its tag).

    @return: the task's name, its function and its arguments; or, if it
        cannot run, the payload of its C{E} frame.
    """
    rawName, _, payload = body.partition(b"\n")
    name = rawName.decode("utf-8", "replace")
    function = reg.get(name)
    if function is None:
        return _error(errors.UnknownTask(f"no task named {name!r}"))
    try:
        request = _json.loads(payload) if payload else {}
        if not isinstance(request, dict):
            raise ValueError("the request is not a JSON object")
        args, kwargs = splitArguments(request.get("args"), request.get("kwargs"))
    except (ValueError, RecursionError) as e:
        return _error(errors.BadRequest(_safeStr(e)))
    return name, function, args, kwargs


def failed(exc: BaseException) -> bytes:
    """
    @return: the payload of the C{E} frame of a call whose task raised
        C{exc} (call it in the C{except} block: it reads the traceback).
    """
    return _error(errors.TaskFailed(_safeStr(exc), _typeName(exc), traceback.format_exc()))


def stopped(name: str) -> bytes:
    """
    @return: the payload of the C{E} frame answering a call of task
        C{name} that was stopped (its caller was answered already).
    """
    return _error(errors.TaskCancelled(f"the call of task {name!r} was stopped"))


def encodeResult(name: str, result: Any, maxResult: int) -> bytes:
    """
    @return: the payload of the C{R} frame carrying what task C{name}
        returned, or of the C{E} frame saying why it cannot be sent.
    """
    try:
        # An exact int encodes as its digits, whatever its size (json's
        # encoder writes int.__repr__): no need to ask the codec.
        encoded = b"%d" % (result,) if type(result) is int else _json.encode(result)
    except (TypeError, ValueError) as e:
        return _error(
            errors.ResultNotSerializable(
                f"task {name!r} returned a value JSON cannot hold: {_safeStr(e)}"
            )
        )
    except RecursionError:
        return _error(
            errors.ResultNotSerializable(f"task {name!r} returned a value nested too deeply")
        )
    if len(encoded) > maxResult:
        return _error(
            errors.ResultTooLarge(
                f"task {name!r} returned {len(encoded)} bytes of JSON; "
                f"the limit is {maxResult}"
            )
        )
    return RESULT + encoded


def runCall(
    reg: Registry, body: bytes, maxResult: int, progressOut: IO[bytes] | None = None
) -> bytes:
    """
    Run one request frame's call.

    @param progressOut: where the task's L{progress} reports go, as C{P}
        frames, while it runs.
    @return: the reply frame's payload (an C{R} or C{E} frame).
    """
    call = prepareCall(reg, body)
    if isinstance(call, bytes):
        return call
    name, function, args, kwargs = call
    _reportProgressTo(progressOut)
    try:
        result = function(*args, **kwargs)
    except BaseException as e:
        return failed(e)
    finally:
        # No report may follow the reply: it would count for the next call.
        _reportProgressTo(None)
    return encodeResult(name, result, maxResult)


def _send(out: IO[bytes], data: bytes) -> None:
    out.write(HEADER.pack(len(data)) + data)
    out.flush()


class StopRequested(Exception):
    """
    Raised by the SIGTERM handler in a worker waiting for its next call.
    """


class StopSignal:
    """
    What SIGTERM does to a worker: it finishes the call it runs, if any,
    then leaves.  (The pool kills a worker with SIGKILL when it means it;
    a SIGTERM comes from outside, e.g. systemd stopping the whole control
    group, and the daemon's own stop lets running calls finish.)

    @ivar asked: whether SIGTERM arrived.
    """

    def __init__(self) -> None:
        self.asked = False
        self._waiting = False
        self._pid = os.getpid()

    def install(self) -> None:
        """
        Handle SIGTERM in this process.
        """
        self._pid = os.getpid()
        signal.signal(signal.SIGTERM, self._received)

    def _received(self, number: int, frame: object) -> None:
        if os.getpid() != self._pid:
            # A process a task forked: SIGTERM ends it, as it would have.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.asked = True
        if self._waiting:
            raise StopRequested()


class MemoryLimit:
    """
    Tells whether this process's resident memory is over a limit.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        try:
            self._statm: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._statm = None

    def resident(self) -> int:
        """
        @return: the resident memory now, in bytes (the peak, where
            C{/proc} is not there).
        """
        if self._statm is not None:
            return int(os.pread(self._statm, 128, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE")
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024

    def exceeded(self) -> bool:
        """
        @return: whether the resident memory is over the limit.
        """
        return self.resident() > self.limit


def serve(
    reg: Registry,
    inp: IO[bytes],
    out: IO[bytes],
    maxResult: int,
    stop: StopSignal | None = None,
    memory: MemoryLimit | None = None,
) -> str | None:
    """
    Answer request frames from C{inp} on C{out} until end of file, or
    until asked to leave.

    @param stop: the SIGTERM handler, if one is installed.
    @param memory: the limit on resident memory, checked after each call.
    @return: why the worker leaves of its own accord (C{"signal"},
        C{"memory"}), or C{None} at end of file.
    """
    global _progressOut, _call
    read = inp.read
    # Whatever is waiting in the pipe, up to this much, in one read.
    readSome = getattr(inp, "read1", read)
    write, writeParts = frameWriters(out)
    fast, long, digits = _json.FAST, _LONG, _DIGITS
    unpack = HEADER.unpack_from
    pack = HEADER.pack
    getTask = reg.get
    # The call's JSON: orjson's values are the standard library's for what
    # it takes (taskd._json says which), with the check of long integers
    # made below; it refuses the rest.  (Bytes, or with orjson a memoryview.)
    decode: Callable[[Any], Any] = _orjsonLoads if _json.FAST else _json.stdlibLoadsUTF8
    if stop is None:
        stop = StopSignal()
    data, at = b"", 0
    while True:
        # The next frame: from what the last read brought, or read more.
        while len(data) - at < 4:
            try:
                stop._waiting = True
                if stop.asked:
                    raise StopRequested()
                chunk = readSome(_READ_SIZE)
                stop._waiting = False
            except StopRequested:
                return "signal"
            if not chunk:
                return None
            data, at = data[at:] + chunk, 0
        (length,) = unpack(data, at)
        end = at + 4 + length
        if end > len(data):
            # The rest of a long frame, in one read.
            rest = read(end - len(data))
            if len(rest) < end - len(data):
                return None
            data, at, end = data[at:] + rest, 0, 4 + length
        start, at = at + 4, end

        # The usual call (a known task, positional arguments only) is run
        # here; anything else by runCall, which says what is wrong with it.
        newline = data.find(b"\n", start, end)
        name = data[start:newline].decode("utf-8", "replace") if newline >= 0 else ""
        function = getTask(name) if newline >= 0 else None
        request = None
        if function is not None and end > newline + 1 and data[newline + 1] == 123:  # "{"
            if length <= long:
                payload = data[newline + 1 : end]
                try:
                    request = decode(payload)
                except (ValueError, RecursionError):
                    pass
                # 19 digits or more may be an integer orjson made a float
                # of: such a call goes runCall's way (see taskd._json).
                if len(payload) - len(payload.translate(None, digits)) >= 19:
                    request = None
            else:
                # A long payload: decoded where it lies (orjson reads a
                # memoryview), no copy of it; and looked at for integers
                # orjson made floats of as taskd._json does (counting its
                # digits costs more than decoding a long string).
                view = memoryview(data)[newline + 1 : end] if fast else data[newline + 1 : end]
                try:
                    request = decode(view)
                except (ValueError, RecursionError):
                    pass
                if request is not None and fast and _json.mayHoldBigInteger(view, request):
                    request = None
        args = request.get("args") if type(request) is dict and "kwargs" not in request else None
        if type(args) is list:
            with _progressLock:
                _progressOut = out
                _call += 1
            try:
                result = function(*args)  # type: ignore[misc]
            except BaseException as e:
                reply = failed(e)
            else:
                reply = b""
            finally:
                # No report may follow the reply: it would count for the next call.
                with _progressLock:
                    _progressOut = None
            if not reply:
                # (An int's digits are written there, in its try: an int too
                # long for text is an error reply, not the loop's end.)
                reply = encodeResult(name, result, maxResult)
        else:
            reply = runCall(reg, data[start:end], maxResult, out)
        if len(reply) <= long:
            write(pack(len(reply)) + reply)
        else:
            # A long reply is written from where it lies, beside its
            # frame's header: no copy of it.
            writeParts(pack(len(reply)), reply)
        if stop.asked:
            return "signal"
        if memory is not None and memory.exceeded():
            return "memory"


# How much the worker reads from its request pipe at once.
_READ_SIZE = 65536
# From this many bytes on, a payload is decoded and a result written
# without copying it: below, the copy costs less than avoiding it.
_LONG = 4096
_DIGITS = b"0123456789"


def _dieWithParent(parent: int) -> bool:
    """
    On Linux, have the kernel send SIGKILL to this worker when its parent
    dies: without that, a worker whose daemon was killed (SIGKILL, the OOM
    killer) runs its task to the end, however long, before it reads end of
    file and exits.

    @return: C{False} if the parent is already gone.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before the request was made.
    return os.getppid() == parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskd.worker")
    parser.add_argument("--max-result", type=int, default=DEFAULT_MAX_RESULT)
    parser.add_argument("--max-memory", type=int, default=0)
    parser.add_argument("--max-rss", type=int, default=0)
    parser.add_argument("--parent", type=int, default=0, help="the parent's pid")
    parser.add_argument(
        "--threads", type=int, default=0, help="run several calls at once (tagged frames)"
    )
    parser.add_argument("--async-concurrency", type=int, default=100)
    parser.add_argument("modules", nargs="*")
    options = parser.parse_args(argv)
    # A process group of its own: signals to the daemon's group (Ctrl-C in
    # a terminal, kill %1, timeout) are the daemon's to handle, and the
    # pool can signal this worker together with every process its tasks
    # start.
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    if options.parent and not _dieWithParent(options.parent):
        return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol pipes must not leak into processes a task starts, or a
    # lingering grandchild would keep them open after this worker is gone.
    os.set_inheritable(REQUEST_FD, False)
    os.set_inheritable(REPLY_FD, False)
    if options.max_memory:
        # A task that allocates without end gets MemoryError, not the host.
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (options.max_memory, options.max_memory))
    inp = os.fdopen(REQUEST_FD, "rb")
    out = os.fdopen(REPLY_FD, "wb")
    try:
        loadTaskModules(options.modules)
    except BaseException as e:
        _send(
            out,
            _error(
                errors.WorkerStartError(
                    f"cannot load task modules: {_typeName(e)}: {_safeStr(e)}",
                    traceback.format_exc(),
                )
            ),
        )
        return 3
    _ownCalls()
    stop = StopSignal()
    stop.install()
    hello = {"pid": os.getpid(), "tasks": list(_registry)}
    _send(out, READY + _json.encodeASCII(hello))
    memory = MemoryLimit(options.max_rss) if options.max_rss else None
    if options.threads:
        from taskd import _multicall

        reason = _multicall.serveConcurrently(
            _registry, inp, out, options.max_result, options.threads,
            options.async_concurrency, stop, memory,
        )
        if reason is not None:
            _send(out, GOODBYE + _json.encodeASCII({"reason": reason}))
        # Threads running calls that would not stop must not hold the exit.
        _multicall.leave(0)
    reason = serve(_registry, inp, out, options.max_result, stop, memory)
    if reason is not None:
        _send(out, GOODBYE + _json.encodeASCII({"reason": reason}))
    return 0


if __name__ == "__main__":
    # Serve from the module tasks import (for progress), not from this
    # copy of it that runs as __main__.
    from taskd import worker

    sys.exit(worker.main())
