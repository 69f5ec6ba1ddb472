# -*- test-case-name: tests.test_testing -*-
"""
Test doubles for code that uses taskd, for your own unit tests: no
process, no socket, and time on a C{twisted.internet.task.Clock}.

L{FakeClient} has the calling API of L{taskd.client.TaskClient} and
L{taskd.client.ReconnectingClient}; L{FakePool} has the API of
L{taskd.pool.ProcessPool}.  Each call made through them is a L{FakeCall}
that the test answers by hand (L{FakeCall.succeed}, L{FakeCall.fail},
L{FakeCall.report}) or runs with your task functions, in this process,
as a worker would run them (L{FakeCall.run})::

    from twisted.internet.task import Clock
    from twisted.trial.unittest import SynchronousTestCase
    from taskd import errors
    from taskd.testing import FakeClient

    class NotifyTests(SynchronousTestCase):
        def test_refused(self):
            client = FakeClient(Clock())
            d = myapp.notify(client, "a@example.com")
            [call] = client.pending
            call.fail(errors.TaskFailed("mailbox full", "smtplib.SMTPRecipientsRefused"))
            self.assertEqual(self.successResultOf(d), "not sent: mailbox full")

A call run in this process goes through the worker's own code
(L{taskd.worker.runCall}): its arguments and result make the JSON round
trip they make through a daemon, an exception becomes
L{errors.TaskFailed} naming its type, a result JSON cannot hold becomes
L{errors.ResultNotSerializable}, and L{taskd.worker.progress} inside the task
reaches the caller's progress callback.

The daemon never imports this module.  It is one module, in sections
(calls and how they run, the fake client, the fake pool), so that users
import test doubles from one place; hence its length.
"""

from __future__ import annotations

import io
import json
import struct
from collections import deque
from enum import Enum
from typing import Any, Callable, Mapping, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd import errors
from taskd.registry import Registry, loadTaskModules, registry as defaultRegistry
from taskd.worker import DEFAULT_MAX_RESULT, MAX_PROGRESS, runCall

__all__ = ["CallState", "FakeCall", "FakeClient", "FakePool"]

# -- calls and how they run ---------------------------------------------------

_encodeJSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

#: The worker's frames (see L{taskd.worker}): a 4-byte big-endian length,
#: then the frame, whose first byte names its kind.
_frameHeader = struct.Struct("!I")

#: Marks "use the pool's default" where C{None} means "no limit".
_DEFAULT: Any = object()


def _progressReports(frames: bytes) -> list[bytes]:
    """
    @param frames: what a worker wrote while it ran a call.
    @return: the JSON of each progress report (C{P} frame) in C{frames}.
    """
    reports = []
    offset = 0
    while offset + _frameHeader.size <= len(frames):
        (length,) = _frameHeader.unpack_from(frames, offset)
        offset += _frameHeader.size
        frame = frames[offset : offset + length]
        offset += length
        if frame[:1] == b"P":
            reports.append(frame[1:])
    return reports


def _decodeResult(encoded: bytes) -> Any:
    return json.loads(encoded)


def _errorFromReply(payload: bytes) -> errors.TaskdError:
    return errors.errorFromDict(json.loads(payload))


def _arguments(payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """
    Decode a call's payload into the arguments its task would receive, by
    the worker's own rule (an C{"args"} object is keyword arguments).

    @raise errors.BadRequest: if a worker would refuse the payload.
    """
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    capture = Registry()
    capture.register(lambda *args, **kwargs: seen.append((args, kwargs)), "arguments")
    reply = runCall(capture, b"arguments\n" + payload, DEFAULT_MAX_RESULT)
    if not seen:
        raise _errorFromReply(reply[1:])
    return seen[0]


def _encodeArguments(args: Sequence[Any], kwargs: dict[str, Any] | None) -> bytes:
    """
    @raise errors.BadRequest: as the client and the pool do, if the
        arguments cannot be sent as JSON.
    """
    try:
        return _encodeJSON({"args": list(args), "kwargs": kwargs or {}}).encode("ascii")
    except (TypeError, ValueError) as e:
        raise errors.BadRequest(f"arguments cannot be sent as JSON: {e}")


class CallState(Enum):
    """
    Where a L{FakeCall} is in its life.

    @cvar QUEUED: waiting for a free worker (only on a L{FakePool} that
        holds its calls, with every worker taken).
    @cvar RUNNING: taken by a worker: waiting for the test to answer it or
        run it, or for the clock to pass its timeout.
    @cvar SUCCEEDED: answered with a result.
    @cvar FAILED: failed with a L{errors.TaskdError} (its timeout passed,
        the test failed it, its task raised, the fake was closed or
        stopped ...).
    @cvar CANCELLED: its C{Deferred} was cancelled by the caller.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


_WAITING = (CallState.QUEUED, CallState.RUNNING)


class FakeCall:
    """
    One call made through a L{FakeClient} or a L{FakePool}.

    @ivar name: the task's name.
    @ivar args: the positional arguments the task receives (after the JSON
        round trip: a tuple sent arrives as a list).
    @ivar kwargs: the keyword arguments the task receives.
    @ivar timeout: the seconds the call may run once a worker has taken it,
        or C{None} for no limit.
    @ivar wantsProgress: whether the caller asked for progress reports.
    @ivar state: where the call is now.
    @ivar result: the result the caller received, once L{CallState.SUCCEEDED}.
    @ivar error: the error the caller received, once L{CallState.FAILED}.
    @ivar reports: every progress report made for the call, in order
        (delivered to the caller only if it L{wantsProgress}).
    """

    def __init__(
        self,
        owner: _FakeCalls,
        name: str,
        payload: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        progress: Callable[[bytes], object] | None,
    ) -> None:
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self.wantsProgress = progress is not None
        self.state = CallState.QUEUED
        self.result: Any = None
        self.error: errors.TaskdError | None = None
        self.reports: list[Any] = []
        self._owner = owner
        self._payload = payload
        self._progress = progress
        self._timer: IDelayedCall | None = None
        self._deferred: Deferred[bytes] = Deferred(lambda d: owner._cancel(self))

    def __repr__(self) -> str:
        return f"<FakeCall {self.name}{self.args!r} {self.kwargs!r} {self.state.value}>"

    @property
    def cancelled(self) -> bool:
        """
        Whether the caller cancelled the call.
        """
        return self.state is CallState.CANCELLED

    def _mustBe(self, *states: CallState) -> None:
        if self.state not in states:
            raise RuntimeError(
                f"the call to {self.name!r} is {self.state.value}, "
                f"not {' or '.join(s.value for s in states)}"
            )

    def succeed(self, result: Any) -> None:
        """
        Answer the call with a result, as its task returning C{result}
        would: the caller receives C{result} after a JSON round trip.

        @raise TypeError: if JSON cannot hold C{result} (C{ValueError} for
            NaN or an infinity): a task returning it would fail with
            L{errors.ResultNotSerializable}; fail the call with that if
            you mean to.
        @raise RuntimeError: if the call is not L{CallState.RUNNING}.
        """
        self._mustBe(CallState.RUNNING)
        self._owner._finish(self, _encodeJSON(result).encode("ascii"))

    def fail(self, error: errors.TaskdError) -> None:
        """
        Fail the call with C{error}, any error taskd reports: for instance
        C{errors.TaskFailed("mailbox full", "smtplib.SMTPRecipientsRefused")},
        L{errors.WorkerCrashed}, L{errors.ConnectionLost}.

        @raise TypeError: if C{error} is not an L{errors.TaskdError}: the
            client fails a call with nothing else (but
            C{CancelledError}, when it is cancelled).
        @raise RuntimeError: if the call has already ended.
        """
        if not isinstance(error, errors.TaskdError):
            raise TypeError(f"a call fails with a taskd.errors.TaskdError, not {error!r}")
        self._mustBe(*_WAITING)
        self._owner._finish(self, Failure(error))

    def report(self, value: Any) -> None:
        """
        Report progress, as the task calling C{taskd.progress(value)} would:
        the caller's progress callback receives C{value} (after a JSON round
        trip) if it asked for progress.

        @raise TypeError: if JSON cannot hold C{value} (C{ValueError} for
            NaN or an infinity, or if it is over
            L{taskd.worker.MAX_PROGRESS} bytes of JSON).
        @raise RuntimeError: if the call is not L{CallState.RUNNING}.
        """
        self._mustBe(CallState.RUNNING)
        encoded = _encodeJSON(value).encode("ascii")
        if len(encoded) > MAX_PROGRESS:
            raise ValueError(
                f"a progress report holds at most {MAX_PROGRESS} bytes of JSON, "
                f"not {len(encoded)}"
            )
        self._owner._report(self, encoded)

    def run(self) -> None:
        """
        Run the call's task in this process, as a worker would (see
        L{taskd.worker.runCall}), and answer the call with its progress
        reports and its outcome.

        @raise RuntimeError: if the call is not L{CallState.RUNNING}, or
            the fake has no tasks to run it with.
        """
        self._mustBe(CallState.RUNNING)
        if self._owner.registry is None:
            raise RuntimeError(f"the fake has no tasks to run {self.name!r} with")
        self._owner._run(self, self._owner.registry)


class _FakeCalls:
    """
    The calls of one fake, on one clock: what L{FakeClient} and L{FakePool}
    share.  A call is taken by a free worker (L{CallState.RUNNING}: its
    timeout starts) or waits in the queue; past the queue's limit, or while
    L{busy}, calls fail with L{errors.PoolBusy}.  A running call is run at
    once with the fake's tasks, unless the fake L{hold}s its calls (or has
    no tasks).

    @ivar clock: the clock timeouts are measured on.
    @ivar registry: the tasks calls run, or C{None} for none (every call
        waits for the test to answer it).
    @ivar maxResult: the largest JSON-encoded result a task may return,
        in bytes; a larger one fails with L{errors.ResultTooLarge}.
    @ivar hold: if true, calls wait to be answered by the test or run with
        L{FakeCall.run}, rather than run at once.  It applies to calls made
        after it is set.
    @ivar busy: if true, every new call fails with L{errors.PoolBusy}, as
        when a daemon's queue is full.
    @ivar calls: every call made, in order.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        registry: Registry | None,
        slots: int | None,
        maxQueue: int,
        maxResult: int,
        hold: bool,
    ) -> None:
        self.clock = clock
        self.registry = registry
        self.maxResult = maxResult
        self.hold = hold
        self.busy = False
        self.calls: list[FakeCall] = []
        self._slots = slots
        self._maxQueue = maxQueue
        self._running: list[FakeCall] = []
        self._queue: deque[FakeCall] = deque()

    @property
    def pending(self) -> list[FakeCall]:
        """
        The calls that have not ended (queued or running), in the order
        they were made.
        """
        return [call for call in self.calls if call.state in _WAITING]

    def _submit(
        self,
        name: str,
        payload: bytes,
        timeout: float | None,
        progress: Callable[[bytes], object] | None,
    ) -> Deferred[bytes]:
        if self.registry is not None and name not in self.registry:
            return fail(errors.UnknownTask(f"no task named {name!r}"))
        free = not self._queue and (self._slots is None or len(self._running) < self._slots)
        if self.busy or (not free and len(self._queue) >= self._maxQueue):
            return fail(
                errors.PoolBusy(
                    f"the queue is full ({len(self.pending)} calls waiting); "
                    "try again later"
                )
            )
        try:
            args, kwargs = _arguments(payload)
        except errors.BadRequest as e:
            return fail(e)
        call = FakeCall(self, name, payload, args, kwargs, timeout, progress)
        self.calls.append(call)
        if free:
            self._start(call, self.hold)
        else:
            self._queue.append(call)
        return call._deferred

    def _start(self, call: FakeCall, hold: bool) -> None:
        call.state = CallState.RUNNING
        self._running.append(call)
        if call.timeout is not None:
            call._timer = self.clock.callLater(call.timeout, self._timedOut, call)
        if not hold and self.registry is not None:
            self._run(call, self.registry)

    def _run(self, call: FakeCall, registry: Registry) -> None:
        out = io.BytesIO()
        reply = runCall(
            registry, call.name.encode("utf-8") + b"\n" + call._payload, self.maxResult, out
        )
        if call.state is not CallState.RUNNING:
            return  # the task itself ended the call
        for report in _progressReports(out.getvalue()):
            self._report(call, report)
        if reply[:1] == b"R":
            self._finish(call, reply[1:])
        else:
            self._finish(call, Failure(_errorFromReply(reply[1:])))

    def _report(self, call: FakeCall, encoded: bytes) -> None:
        call.reports.append(json.loads(encoded))
        if call._progress is not None:
            try:
                call._progress(encoded)
            except Exception:
                self.log.failure("a progress callback failed")

    def _end(self, call: FakeCall, state: CallState) -> None:
        """
        Take C{call} out of the queue or its worker.
        """
        call.state = state
        if call._timer is not None and call._timer.active():
            call._timer.cancel()
        call._timer = None
        if call in self._running:
            self._running.remove(call)
        else:
            self._queue.remove(call)

    def _freed(self) -> None:
        """
        A worker may be free: let the next queued calls take it.
        """
        while self._queue and (self._slots is None or len(self._running) < self._slots):
            self._start(self._queue.popleft(), True)

    def _finish(self, call: FakeCall, outcome: bytes | Failure) -> None:
        if call.state not in _WAITING:
            return
        if isinstance(outcome, Failure):
            assert isinstance(outcome.value, errors.TaskdError)
            call.error = outcome.value
            self._end(call, CallState.FAILED)
        else:
            call.result = json.loads(outcome)
            self._end(call, CallState.SUCCEEDED)
        call._deferred.callback(outcome)
        self._freed()

    def _cancel(self, call: FakeCall) -> None:
        if call.state in _WAITING:
            self._end(call, CallState.CANCELLED)
            self._freed()

    def _timedOut(self, call: FakeCall) -> None:
        call._timer = None
        self._finish(
            call,
            Failure(
                errors.TaskTimeout(
                    f"task {call.name!r} did not finish within {call.timeout} seconds"
                )
            ),
        )


def _decoded(progress: Callable[[Any], object] | None) -> Callable[[bytes], object] | None:
    if progress is None:
        return None
    return lambda encoded: progress(json.loads(encoded))


def _registryOf(tasks: Registry | Mapping[str, Callable[..., Any]]) -> Registry:
    if isinstance(tasks, Registry):
        return tasks
    registry = Registry()
    for name, function in tasks.items():
        registry.register(function, name)
    return registry


# -- the fake client ----------------------------------------------------------


class FakeClient(_FakeCalls):
    """
    A stand-in for L{taskd.client.TaskClient} (or
    L{taskd.client.ReconnectingClient}) in unit tests, with the same
    calling API: L{call}, L{callWith}, cancelling, progress, L{close}.

    Without C{tasks}, every call waits (in L{pending}) for the test to
    answer it.  With C{tasks}, the fake behaves as a daemon serving them:
    each call runs its task at once (unless L{hold} is set), and a name
    that is not a task fails with L{errors.UnknownTask}.

    @ivar timeout: the daemon's limit on the time a call runs, in seconds,
        or C{None}: a call's own timeout may shorten it, not lengthen it.
    @ivar maxInFlight: at most this many calls wait at once (C{None}: no
        limit); past it, calls fail with L{errors.PoolBusy}, as from a
        daemon whose queue is full.
    @ivar closed: whether L{close} was called.
    """

    def __init__(
        self,
        clock: IReactorTime,
        tasks: Registry | Mapping[str, Callable[..., Any]] | None = None,
        *,
        timeout: float | None = None,
        maxInFlight: int | None = None,
        hold: bool = False,
        maxResult: int = DEFAULT_MAX_RESULT,
    ) -> None:
        """
        @param clock: the clock timeouts are measured on.
        @param tasks: the tasks calls run: a L{taskd.registry.Registry}
            (your task module's, or C{taskd.registry.registry}, which
            C{@taskd.task} fills), or a mapping of task names to plain
            functions.  C{None}: calls are answered by hand.
        @param hold: see L{hold}.
        @param maxResult: see L{maxResult}.
        """
        super().__init__(
            clock,
            None if tasks is None else _registryOf(tasks),
            maxInFlight,
            0,
            maxResult,
            hold,
        )
        self.timeout = timeout
        self.maxInFlight = maxInFlight
        self.closed = False

    def _send(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
        progress: Callable[[Any], object] | None,
    ) -> Deferred[Any]:
        if self.closed:
            return fail(errors.ConnectionLost("the connection is closed"))
        try:
            payload = _encodeArguments(args, kwargs)
        except errors.BadRequest as e:
            return fail(e)
        if timeout is None or (self.timeout is not None and self.timeout < timeout):
            timeout = self.timeout
        d = self._submit(name, payload, timeout, _decoded(progress))
        return d.addCallback(_decodeResult)

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Call task C{name} with these arguments, as
        L{taskd.client.TaskClient.call} does.

        @return: a C{Deferred} firing with the result, or failing with an
            L{errors.TaskdError}; cancelling it cancels the call (it fails
            with C{twisted.internet.defer.CancelledError}).
        """
        return self._send(name, args, kwargs, None, None)

    def callWith(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        progress: Callable[[Any], object] | None = None,
    ) -> Deferred[Any]:
        """
        Like L{call}, with call options kept apart from the task's
        arguments, as L{taskd.client.TaskClient.callWith} does.

        @param timeout: seconds the call may run (L{timeout}, the daemon's
            limit, still applies).
        @param progress: called with each progress report before the
            result.
        """
        return self._send(name, args, kwargs, timeout, progress)

    def close(self) -> Deferred[None]:
        """
        Close the fake connection, as L{taskd.client.TaskClient.close}
        does: pending calls fail with L{errors.ConnectionLost}, and so do
        later ones.

        @return: a C{Deferred} that has fired.
        """
        self.closed = True
        lost = errors.ConnectionLost(
            f"connection to taskd lost: {connectionDone.getErrorMessage()}"
        )
        for call in self.pending:
            self._finish(call, Failure(lost))
        return succeed(None)


# -- the fake pool ------------------------------------------------------------


class FakePool(_FakeCalls):
    """
    A stand-in for L{taskd.pool.ProcessPool} in unit tests of code that
    embeds the pool, with its API (L{start}, L{submit}, L{submitEncoded},
    L{stop}, L{stats}, L{pids}, L{state}).  Calls run their task in this
    process, at once, unless L{hold} is set: then each of the C{workers}
    fake workers takes one call, which waits for the test to answer it or
    L{FakeCall.run} it, and further calls queue (up to C{maxQueue}; past
    it, calls fail with L{errors.PoolBusy}).

    @ivar tasks: the task modules L{start} imports.
    @ivar workers: how many calls may run at once.
    @ivar maxQueue: how many calls may wait for a worker.
    @ivar timeout: the default limit on the time a call runs, in seconds.
    @ivar grace: on L{stop}, how long running calls may go on.
    @ivar state: C{"new"}, C{"starting"}, C{"running"}, C{"stopping"} or
        C{"stopped"}, as the real pool's.
    """

    def __init__(
        self,
        clock: IReactorTime,
        tasks: Sequence[str] = ("taskd.examples",),
        workers: int = 1,
        *,
        maxQueue: int = 1000,
        timeout: float | None = None,
        grace: float = 10.0,
        maxResult: int = DEFAULT_MAX_RESULT,
        registry: Registry | None = None,
        hold: bool = False,
    ) -> None:
        """
        @param clock: the clock timeouts and the grace period are measured
            on.
        @param registry: where the tasks are registered (the default
            registry, which C{@taskd.task} fills, by default).
        @param hold: see L{hold}.
        @param maxResult: see L{maxResult}.
        """
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        if maxQueue < 0:
            raise ValueError("maxQueue must not be negative")
        super().__init__(
            clock,
            defaultRegistry if registry is None else registry,
            workers,
            maxQueue,
            maxResult,
            hold,
        )
        self.tasks = list(tasks)
        self.workers = workers
        self.maxQueue = maxQueue
        self.timeout = timeout
        self.grace = grace
        self.state = "new"
        self._stopping: list[Deferred[None]] = []
        self._graceTimer: IDelayedCall | None = None

    def start(self) -> Deferred[None]:
        """
        Import the task modules, as L{taskd.pool.ProcessPool.start} does.

        @return: a C{Deferred} that has fired with C{None}, or failed with
            the import error (after which the pool is stopped).
        """
        if self.state != "new":
            return fail(RuntimeError(f"cannot start a pool that is {self.state}"))
        try:
            loadTaskModules(self.tasks)
        except Exception:
            self.state = "stopped"
            return fail()
        self.state = "running"
        return succeed(None)

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
        Run task C{name} with C{args} and C{kwargs}, as
        L{taskd.pool.ProcessPool.submit} does.

        @param timeout: seconds the call may run once a worker takes it;
            the pool's default if not given, no limit if C{None}.
        @param progress: called with each progress report before the
            result.
        @return: a C{Deferred} firing with the task's result, or failing
            with an L{errors.TaskdError} (or
            C{twisted.internet.defer.CancelledError} if cancelled).
        """
        try:
            payload = _encodeArguments(args, kwargs)
        except errors.BadRequest as e:
            return fail(e)
        d = self.submitEncoded(name, payload, timeout=timeout, progress=_decoded(progress))
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
        (and progress reports) left encoded, as
        L{taskd.pool.ProcessPool.submitEncoded} does.

        @param payload: a UTF-8 JSON object whose C{"args"} is an array or
            an object and whose optional C{"kwargs"} is an object.
        @return: a C{Deferred} firing with the result as JSON bytes.
        """
        if self.state not in ("starting", "running"):
            return fail(errors.PoolStopping(f"the pool is not running (it is {self.state})"))
        return self._submit(
            name, payload, self.timeout if timeout is _DEFAULT else timeout, progress
        )

    def stop(self) -> Deferred[None]:
        """
        Stop as L{taskd.pool.ProcessPool.stop} does: refuse new calls, fail
        queued ones with L{errors.PoolStopping}, give running ones C{grace}
        seconds on the clock to be answered (then fail them with
        L{errors.PoolStopping}).

        @return: a C{Deferred} that fires once no call runs.
        """
        if self.state == "new":
            self.state = "stopped"
        if self.state == "stopped":
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stopping.append(d)
        if self.state == "stopping":
            return d
        self.state = "stopping"
        for call in list(self._queue):
            self._finish(call, Failure(errors.PoolStopping("the pool is stopping")))
        if self._running:
            self._graceTimer = self.clock.callLater(self.grace, self._graceOver)
        self._checkStopped()
        return d

    def stats(self) -> dict[str, int]:
        """
        @return: the counts L{taskd.pool.ProcessPool.stats} gives, as a
            pool with C{workers} workers and these calls would show them.
        """
        if self.state in ("new", "stopped"):
            workers = 0
        elif self.state == "stopping":
            workers = len(self._running)
        else:
            workers = self.workers
        return {
            "workers": workers,
            "idle": workers - len(self._running),
            "busy": len(self._running),
            "queued": len(self._queue),
            "processes": workers,
        }

    def pids(self) -> set[int]:
        """
        @return: an empty set: the fake has no worker processes.
        """
        return set()

    def _freed(self) -> None:
        if self.state == "stopping":
            self._checkStopped()
        else:
            super()._freed()

    def _graceOver(self) -> None:
        self._graceTimer = None
        for call in list(self._running):
            self._finish(
                call,
                Failure(
                    errors.PoolStopping(
                        f"task {call.name!r} did not finish within the "
                        f"{self.grace}-second shutdown grace period"
                    )
                ),
            )

    def _checkStopped(self) -> None:
        if self.state != "stopping" or self._running:
            return
        self.state = "stopped"
        if self._graceTimer is not None and self._graceTimer.active():
            self._graceTimer.cancel()
        self._graceTimer = None
        waiting, self._stopping = self._stopping, []
        for d in waiting:
            d.callback(None)
