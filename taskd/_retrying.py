# -*- test-case-name: tests.test_pool,tests.test_pool_unit -*-
"""
Retries of tasks that opt into them (C{@task(retries=N)}): after a
crash, a timeout or a listed exception, the call waits out its backoff
(doubling, with jitter) and goes back to the front of the queue.
"""

from __future__ import annotations

from twisted.python.failure import Failure

from taskd import errors
from taskd._poolstate import PoolCall, PoolRooms
from taskd.registry import MAX_BACKOFF

#: The first retry's delay, in seconds, for a task that sets none.
DEFAULT_BACKOFF = 1.0


class Retrying(PoolRooms):
    """
    A room of L{taskd.pool.ProcessPool}: see this module's docstring.
    """

    def _retries(self, call: PoolCall, failure: Failure) -> bool:
        """
        If C{call}'s task has retries left for this failure, schedule the
        next attempt instead of answering: after the task's backoff,
        doubled for each attempt so far, and spread over its upper half
        by the pool's C{jitter} (see L{taskd.pool.ProcessPool}).

        @return: whether it will be run again.
        """
        options = self._retryPolicies.get(call.name)
        error = failure.value
        if (
            options is None
            or call.attempts > (options.retries or 0)
            or call in self._retrying
            or not self._serving()
        ):
            return False
        if not isinstance(error, (errors.TaskTimeout, errors.WorkerCrashed)) and not (
            isinstance(error, errors.TaskFailed) and error.remoteType in (options.retryOn or ())
        ):
            return False
        freed = call.worker is not None and bool(self._queue.limiters) and self._queue.ended(call)
        call.worker = None
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        backoff = DEFAULT_BACKOFF if options.backoff is None else options.backoff
        delay = min(backoff * 2 ** (call.attempts - 1), MAX_BACKOFF) * (1 + self.jitter()) / 2
        self.log.warn(
            "task {name!r} failed ({error}); attempt {attempt} of {attempts} in {delay:.3f} s",
            name=call.name,
            error=error.type,
            attempt=call.attempts + 1,
            attempts=(options.retries or 0) + 1,
            delay=delay,
        )
        self._retrying.add(call)
        call.timer = self.reactor.callLater(delay, self._retry, call)
        if freed:
            self._dispatch()
        return True

    def _retry(self, call: PoolCall) -> None:
        """
        Queue C{call} again for its next attempt, ahead of the calls that
        came after it.
        """
        call.timer = None
        self._retrying.discard(call)
        call.attempts += 1
        self._queue.pushFront(call)
        self._dispatch()
