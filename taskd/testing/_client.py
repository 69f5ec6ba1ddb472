# -*- test-case-name: tests.test_testing -*-
"""
The fake client: L{FakeClient}.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from taskd import _json, errors
from taskd._frames import DEFAULT_MAX_RESULT
from taskd.registry import Registry
from taskd.testing._calls import FakeCalls, decodedProgress, encodeArguments, registryOf

class FakeClient(FakeCalls):
    """
    A stand-in for L{taskd.client.TaskClient} (or
    L{taskd.reconnecting.ReconnectingClient}) in unit tests, with the same
    calling API: L{call}, L{callWith}, cancelling, progress, L{close}.

    Without C{tasks}, every call waits (in C{pending}) for the test to
    answer it.  With C{tasks}, the fake behaves as a daemon serving them:
    each call runs its task at once (unless C{hold} is set), and a name
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
            (your task module's, or the default one, C{from taskd.registry
            import registry}, which
            C{@taskd.task} fills), or a mapping of task names to plain
            functions.  C{None}: calls are answered by hand.
        @param hold: see C{hold}.
        @param maxResult: see C{maxResult}.
        """
        super().__init__(
            clock,
            None if tasks is None else registryOf(tasks),
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
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[Any]:
        if self.closed:
            return fail(errors.ConnectionLost("the connection is closed; the call was not sent"))
        try:
            payload = encodeArguments(args, kwargs)
        except errors.BadRequest as e:
            return fail(e)
        if timeout is None or (self.timeout is not None and self.timeout < timeout):
            timeout = self.timeout
        d = self._submit(name, payload, timeout, decodedProgress(progress), priority, deadline)
        return d.addCallback(_json.loads)

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
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[Any]:
        """
        Like L{call}, with call options kept apart from the task's
        arguments, as L{taskd.client.TaskClient.callWith} does.

        @param timeout: seconds the call may run (L{timeout}, the daemon's
            limit, still applies).
        @param progress: called with each progress report before the
            result.
        @param priority: recorded as L{FakeCall.priority} (checked, not
            used: calls run in arrival order).
        @param deadline: recorded as L{FakeCall.deadline} (checked; calls
            do not expire).
        """
        return self._send(name, args, kwargs, timeout, progress, priority, deadline)

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
