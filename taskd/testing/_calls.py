# -*- test-case-name: tests.test_testing -*-
"""
The engine of the fake client and the fake pool: calls (L{FakeCall}),
their states, and how they run in this process.
"""

from __future__ import annotations

import io
from collections import deque
from enum import Enum
from typing import Any, Callable, Mapping, Sequence

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd import _json, errors
from taskd._frames import HEADER, MAX_PROGRESS, PROGRESS, RESULT, splitArguments
from taskd.registry import MAX_PRIORITY, MIN_PRIORITY, Registry
from taskd.worker import runCall

#: Marks "use the pool's default" where C{None} means "no limit".
USE_DEFAULT: Any = object()


def _progressReports(frames: bytes) -> list[bytes]:
    """
    @param frames: what a worker wrote while it ran a call.
    @return: the JSON of each progress report (C{P} frame) in C{frames}.
    """
    reports = []
    offset = 0
    while offset + HEADER.size <= len(frames):
        (length,) = HEADER.unpack_from(frames, offset)
        offset += HEADER.size
        frame = frames[offset : offset + length]
        offset += length
        if frame[:1] == PROGRESS:
            reports.append(frame[1:])
    return reports


def _errorFromReply(payload: bytes) -> errors.TaskdError:
    return errors.errorFromDict(_json.loads(payload))


def _arguments(payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """
    Decode a call's payload into the arguments its task would receive, by
    the one rule the daemon and its workers follow.

    @raise errors.BadRequest: if a worker would refuse the payload.
    """
    try:
        request = _json.loads(payload)
        if not isinstance(request, dict):
            raise ValueError("the request is not a JSON object")
        args, kwargs = splitArguments(request.get("args"), request.get("kwargs"))
    except (ValueError, RecursionError) as e:
        raise errors.BadRequest(str(e))
    return tuple(args), kwargs


def encodeArguments(args: Sequence[Any], kwargs: dict[str, Any] | None) -> bytes:
    """
    @raise errors.BadRequest: as the client and the pool do, if the
        arguments cannot be sent as JSON.
    """
    try:
        return _json.encodeASCII({"args": list(args), "kwargs": kwargs or {}})
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
    @ivar priority: the priority the caller gave, or C{None}.  (The fakes
        run calls in arrival order whatever their priority.)
    @ivar deadline: the deadline the caller gave, or C{None}.  (The fakes
        record it; they do not expire calls.)
    @ivar state: where the call is now.
    @ivar result: the result the caller received, once L{CallState.SUCCEEDED}.
    @ivar error: the error the caller received, once L{CallState.FAILED}.
    @ivar reports: every progress report made for the call, in order
        (delivered to the caller only if it L{wantsProgress}).
    """

    def __init__(
        self,
        owner: FakeCalls,
        name: str,
        payload: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        progress: Callable[[bytes], object] | None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> None:
        self.name = name
        self.priority = priority
        self.deadline = deadline
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
        self._onStart: Callable[[], object] | None = None

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
        self._owner._finish(self, _json.encode(result))

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
            64 KiB of JSON).
        @raise RuntimeError: if the call is not L{CallState.RUNNING}.
        """
        self._mustBe(CallState.RUNNING)
        encoded = _json.encode(value)
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


class FakeCalls:
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
        priority: int | None = None,
        deadline: float | None = None,
        onStart: Callable[[], object] | None = None,
    ) -> Deferred[bytes]:
        if self.registry is not None and name not in self.registry:
            return fail(errors.UnknownTask(f"no task named {name!r}"))
        if priority is not None and (
            type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY
        ):
            return fail(
                errors.BadRequest(
                    f"priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}"
                )
            )
        if deadline is not None and not deadline > 0:
            return fail(errors.BadRequest("deadline must be a positive number of seconds"))
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
        call = FakeCall(self, name, payload, args, kwargs, timeout, progress, priority, deadline)
        self.calls.append(call)
        call._onStart = onStart
        if free:
            self._start(call, self.hold)
        else:
            self._queue.append(call)
        return call._deferred

    def _start(self, call: FakeCall, hold: bool) -> None:
        call.state = CallState.RUNNING
        self._running.append(call)
        if call._onStart is not None:
            call._onStart()
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
        if reply[:1] == RESULT:
            self._finish(call, reply[1:])
        else:
            self._finish(call, Failure(_errorFromReply(reply[1:])))

    def _report(self, call: FakeCall, encoded: bytes) -> None:
        call.reports.append(_json.loads(encoded))
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
            call.result = _json.loads(outcome)
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


def decodedProgress(progress: Callable[[Any], object] | None) -> Callable[[bytes], object] | None:
    if progress is None:
        return None
    return lambda encoded: progress(_json.loads(encoded))


def registryOf(tasks: Registry | Mapping[str, Callable[..., Any]]) -> Registry:
    if isinstance(tasks, Registry):
        return tasks
    registry = Registry()
    for name, function in tasks.items():
        registry.register(function, name)
    return registry

