# -*- test-case-name: tests.test_pool,tests.test_pool_unit -*-
"""
How calls end: answered once (a task with retries gets them first), put
back in the queue when they never started, expired, timed out,
cancelled.
"""

from __future__ import annotations

import copy
from collections import deque

from twisted.python.failure import Failure

from taskd import errors
from taskd._poolstate import CallCancelled, PoolCall, PoolRooms
from taskd.observer import CANCELLED, RESULT, outcomeOf


class CallEndings(PoolRooms):
    """
    A room of L{taskd.pool.ProcessPool}: see this module's docstring.
    """

    def _finish(self, call: PoolCall, result: bytes | Failure) -> None:
        if call.done:
            return
        if self._retryPolicies and isinstance(result, Failure) and self._retries(call, result):
            return
        call.done = True
        if self.observer is not None:
            self._observeEnd(call, RESULT if type(result) is bytes else outcomeOf(result))
        freed = call.worker is not None and bool(self._queue.limiters) and self._queue.ended(call)
        call.worker = None
        if self._retrying:
            self._retrying.discard(call)
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        if call.attempts != 1 and isinstance(result, Failure) and isinstance(result.value, errors.TaskdError):
            error = copy.copy(result.value)
            error.started = True
            error.attempts = call.attempts
            result = Failure(error)
        call.answer(call.key, result)
        if freed and self._serving():
            self._dispatch()

    def _requeue(self, calls: deque[PoolCall]) -> None:
        """
        Put calls that never started back at the front of the queue.
        """
        queue = self._queue
        for call in reversed(calls):
            if not call.done:
                if call.timer is not None:
                    # It was about to run (a reply made it the worker's
                    # first call): time spent queued again is not its run.
                    call.timer.cancel()
                    call.timer = None
                if queue.limiters:
                    queue.ended(call)
                call.worker = None
                queue.pushFront(call)
        if not self._serving():
            self._failQueue(errors.PoolStopping("the pool is stopping"))
        else:
            self._dispatch()

    def _expired(self, call: PoolCall) -> None:
        """
        C{call} waited in the queue past its deadline.
        """
        call.timer = None
        self._queue.remove(call)
        self._finish(
            call,
            Failure(
                errors.Expired(
                    f"task {call.name!r} waited {call.deadline} seconds in the queue "
                    "without starting (its deadline)"
                )
            ),
        )

    def _timedOut(self, call: PoolCall) -> None:
        worker = call.worker
        call.timer = None
        if worker is not None:
            if call.timeout is not None and self.config.prefetch != 1 and not worker.concurrent:
                self._ran(call.name, call.timeout)  # at least
            # Let the worker go first: answering the call may start others
            # (a freed cap, a caller's retry), which must not go to it.
            self._stopIn(worker, call)
        self._finish(
            call,
            Failure(
                errors.TaskTimeout(
                    f"task {call.name!r} did not finish within {call.timeout} seconds"
                )
            ),
        )

    def _cancel(self, call: PoolCall) -> None:
        if call.done:
            return
        worker = call.worker
        call.done = True
        if self.observer is not None:
            self._observeEnd(call, CANCELLED)
        call.worker = None
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        started = worker is not None or call.attempts > 1 or call in self._retrying
        if worker is None:
            if call in self._retrying:
                self._retrying.discard(call)
            else:
                self._queue.remove(call)
            call.answer(call.key, Failure(CallCancelled(started)))
            return
        freed = bool(self._queue.limiters) and self._queue.ended(call)
        if worker.concurrent:
            self._stopIn(worker, call)
        elif worker.call is call:
            self._discard(worker)
        # else it waits in the worker's pipe: see _started.
        call.answer(call.key, Failure(CallCancelled(started)))
        if freed and self._serving():
            self._dispatch()
