# -*- test-case-name: tests.test_pool_unit,tests.test_pool -*-
"""
Accepting calls: L{taskd.pool.ProcessPool.submit} (Python values),
C{submitEncoded} (JSON in, JSON out, with a C{Deferred}) and C{relay}
(JSON in and out, answered through a callable: no C{Deferred} per call),
each checking what it is given and handing the call to a worker at once
or to the queue.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from taskd import _json, errors
from taskd._poolstate import Answer, PoolCall, PoolRooms, PoolState
from taskd.registry import MAX_PRIORITY, MIN_PRIORITY, THREAD

#: Marks "use the pool's default" where C{None} means "no limit".
USE_DEFAULT: Any = object()

#: How L{Accepting.submitEncoded}'s C{Deferred} hears its call's end.
_fire: Answer = Deferred.callback


class Accepting(PoolRooms):
    """
    A room of L{taskd.pool.ProcessPool}: see this module's docstring.
    """

    def timeoutFor(self, requested: float | None) -> float | None:
        """
        The timeout policy for callers that may shorten the pool's limit
        but not lengthen it (a network client, say).

        @param requested: the limit the caller asked for, in seconds, or
            C{None} if it asked for none.
        @return: the limit to pass to L{submitEncoded}.
        """
        limit = self.config.timeout
        if requested is None:
            return limit
        return requested if limit is None else min(requested, limit)

    def submit(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = USE_DEFAULT,
        progress: Callable[[Any], object] | None = None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[Any]:
        """
        Run task C{name} with C{args} and C{kwargs} in a worker.

        @param timeout: seconds the call may run in its worker; the pool's
            default if not given, no limit if C{None}.
        @param progress: called with each value the task reports with
            L{taskd.worker.progress}, before the result.
        @param priority: from L{MIN_PRIORITY} to L{MAX_PRIORITY}, higher
            first; the task's default (see L{taskd.registry.TaskOptions})
            if C{None}.
        @param deadline: seconds the call may wait in the queue; past them
            it fails with L{errors.Expired} without running.  C{None}: no
            limit.
        @return: a C{Deferred} firing with the task's result (decoded from
            JSON), or failing with an L{errors.TaskdError} (or L{taskd.pool.CallCancelled},
            a C{twisted.internet.defer.CancelledError}, if cancelled).  Its
            C{started} says whether the task had started.  A task with
            retries (see L{taskd.registry.TaskOptions}) is run again after
            a crash, a timeout or an exception it lists, and the C{Deferred}
            fires once, with the last attempt's outcome.
        """
        try:
            payload = _json.encodeASCII({"args": list(args), "kwargs": kwargs or {}})
        except (TypeError, ValueError) as e:
            return fail(errors.BadRequest(f"arguments cannot be sent as JSON: {e}"))
        encodedProgress = None
        if progress is not None:
            encodedProgress = lambda value: progress(_json.loads(value))  # noqa: E731
        d = self.submitEncoded(
            name,
            payload,
            timeout=timeout,
            progress=encodedProgress,
            priority=priority,
            deadline=deadline,
        )
        return d.addCallback(_json.loads)

    def submitEncoded(
        self,
        name: str,
        payload: bytes,
        *,
        timeout: float | None = USE_DEFAULT,
        progress: Callable[[bytes], object] | None = None,
        priority: int | None = None,
        deadline: float | None = None,
        origin: str | None = None,
        onStart: Callable[[], object] | None = None,
    ) -> Deferred[bytes]:
        """
        Like L{submit}, with the arguments already encoded and the result
        (and progress reports) left encoded.

        @param payload: a UTF-8 JSON object whose C{"args"} is an array
            (positional arguments) or an object (keyword arguments) and
            whose optional C{"kwargs"} is an object; other keys are ignored,
            so a whole request line from the wire will do.
        @param origin: who sent the call, for the pool's observer.
        @param onStart: called each time the call is sent to a worker
            (within this method if one takes it at once).
        @return: a C{Deferred} firing with the result as JSON bytes.
        """
        call: PoolCall | None = None

        def cancel(d: Deferred[bytes]) -> None:
            if call is not None:
                self._cancel(call)

        d: Deferred[bytes] = Deferred(cancel)
        call = self.relay(
            name, payload, _fire, d,
            timeout=timeout, progress=progress, priority=priority, deadline=deadline, origin=origin,
            onStart=onStart,
        )
        return d

    def relay(
        self,
        name: str,
        payload: bytes,
        answer: Answer,
        key: Any,
        *,
        timeout: float | None = USE_DEFAULT,
        progress: Callable[[bytes], object] | None = None,
        priority: int | None = None,
        deadline: float | None = None,
        origin: str | None = None,
        onStart: Callable[[], object] | None = None,
    ) -> PoolCall | None:
        """
        Like L{submitEncoded}, for a caller that relays many calls and wants
        no C{Deferred} for each (the daemon's connections): the call's end
        is told to C{answer(key, outcome)}, once, with the result as JSON
        bytes or a C{Failure} (an L{errors.TaskdError}, or L{taskd.pool.CallCancelled}).

        A call the pool refuses (unknown task, full queue, a bad priority,
        a pool not running) is answered before this returns, and C{None} is
        returned; a call it accepts is never answered before this returns.

        @return: the accepted call, whose C{cancel()} cancels it as
            cancelling L{submitEncoded}'s C{Deferred} does; or C{None}.
        """
        state = self.state
        if state is not PoolState.RUNNING and state is not PoolState.STARTING:
            error: errors.TaskdError = errors.PoolStopping(
                f"the pool is not running (it is {state.value})"
            )
        elif name not in self.registry:
            error = errors.UnknownTask(f"no task named {name!r}")
        elif self._startError is not None and not self._anyReady():
            error = self._startError
        else:
            queue = self._queue
            if priority is None:
                priority = queue.defaultPriorities.get(name, 0) if queue.defaultPriorities else 0
            elif type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
                answer(key, Failure(errors.BadRequest(
                    f"priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}"
                )))
                return None
            if deadline is not None and not deadline > 0:
                answer(key, Failure(errors.BadRequest("deadline must be a positive number of seconds")))
                return None
            maxQueue = self.config.maxQueue
            # Whether the call may start now as far as its task's limits go.
            free = not queue.limiters or queue.mayStart(name)
            if queue.size >= maxQueue and not (self._idle and free):
                answer(key, Failure(errors.PoolBusy(
                    f"the queue is full ({maxQueue} calls waiting); try again later"
                )))
                return None
            call = PoolCall(
                name,
                payload,
                self.config.timeout if timeout is USE_DEFAULT else timeout,
                answer,
                key,
                self._cancel,
                progress,
                priority,
                deadline,
                origin=origin,
                number=next(self._numbers),
                onStart=onStart,
            )
            if self._slots is not None:
                call.mode = self._modes.get(name, THREAD)
            if self.observer is not None:
                call.submittedAt = self.reactor.seconds()
            if free and not queue.size:
                # Nothing waits: the call goes straight to a worker if one may
                # take it (with no policies, this is the only path).
                ready = self._idle.pop() if self._idle else self._sendAheadTo(call)
                if ready is not None:
                    if queue.limiters:
                        queue.started(name)
                    self._run(ready, call)
                    return call
            queue.push(call)
            if deadline is not None:
                call.timer = self.reactor.callLater(deadline, self._expired, call)
            if queue.limiters:
                # It may have been held back while a worker is free.
                self._dispatch()
                if self._idle and queue.size:
                    self._wakeLater()
            return call
        answer(key, Failure(error))
        return None
