# -*- test-case-name: tests.test_jobs,tests.test_admin -*-
"""
A connection's requests about background jobs (C{submit}, C{job}, C{wait},
a job's C{cancel}) and its admin requests: a room of
L{taskd.connection.TaskServerProtocol}.

It is a mixin the protocol class inherits, not an object the connection
holds, because these requests live on the connection's own books: an
answer that comes later takes its place in the connection's calls in
flight (C{_calls}), among its replies without an id (C{_ordered}) and in
its count of unanswered requests (C{_unanswered}), and is written by the
connection's C{_done}.  An object of its own would reach back into all of
these for every request; as a mixin the code moved here unchanged and
C{lineReceived} dispatches to it as before.  What it uses of the
connection is declared in L{ConnectionRequests} for the type checker and
the reader (as L{taskd._poolstate.PoolRooms} does for the pool's rooms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd import errors
from taskd.admin import isLocalListener
from taskd.journal import JobRecord, describeJob, jobError
from taskd.replies import ReplySlot
from taskd.wire import (
    Admin,
    CallId,
    CancelJob,
    JobRequest,
    JobStatus,
    Submit,
    encodeAccepted,
    encodeError,
    encodeJobReply,
    encodeResult,
)

if TYPE_CHECKING:
    from taskd._connectionowner import ConnectionOwner
    from taskd.jobs import JobService, Taken
    from taskd.replies import OrderedReplies


class InFlight(Protocol):
    """
    A request of a connection in flight: a relayed call
    (L{taskd.pool.PoolCall}) or a C{Deferred} of another answer.
    """

    def cancel(self) -> None:
        """
        Give up on it: it is answered as cancelled.
        """


class _Accepting:
    """
    A submit on a connection's books until it is answered: cancelling it
    (a C{cancel} with its id, the connection lost) changes nothing, since
    the job may be journaled already; its C{accepted} comes all the same
    (if the connection is still there), and the job is cancelled by its id.
    """

    def cancel(self) -> None:
        """
        Nothing to do: see the class docstring.
        """


#: What a submit not yet answered is on a connection's books as.
ACCEPTING: InFlight = _Accepting()

#: Submits a connection reads in one go, at most: then it pauses reading
#: until the reactor's next turn, so that a read of hundreds of submit
#: lines is handled a slice a turn (each costs the reactor some tens of
#: microseconds), and other connections are served between two slices.
SUBMITS_PER_TURN = 8


class ConnectionRequests:
    """
    What the rooms of a connection read and call of
    L{taskd.connection.TaskServerProtocol}: declarations only, for the
    type checker; nothing of it exists at run time.
    """

    if TYPE_CHECKING:
        factory: ConnectionOwner
        transport: Any
        log: Logger
        paused: bool
        _closed: bool
        _writeBlocked: bool
        _calls: dict[Any, InFlight]
        _ordered: OrderedReplies
        _unanswered: int

        def _answer(self, id: CallId, line: bytes) -> None:
            ...

        def _progress(self, id: CallId, report: bytes) -> None:
            ...

        def _failed(self, failure: Failure, key: Any) -> None:
            ...

        def _done(self, key: Any, line: bytes) -> None:
            ...

        def _updateReading(self) -> None:
            ...

        def pauseProducing(self) -> None:
            ...

        def resumeProducing(self) -> None:
            ...


class JobRequests(ConnectionRequests):
    """
    A room of L{taskd.connection.TaskServerProtocol}: see this module's
    docstring.
    """

    # Submits read since reading last paused for a turn (SUBMITS_PER_TURN),
    # and whether it is paused for that.
    _submitsRead = 0
    _slicePaused = False

    # -- jobs (taskd.jobs) --------------------------------------------------

    def _job(self, request: JobRequest) -> None:
        """
        Answer a request about jobs: like a call, its answer comes later
        (once the journal has it) and is on the connection's books until
        then.
        """
        id = request.call.id if isinstance(request, Submit) else request.id
        jobs = self.factory.jobs
        if jobs is None:
            error = errors.BadRequest("this daemon runs no background jobs")
            self._answer(id, encodeError(id, error))
            return
        if id is not None and id in self._calls:
            error = errors.DuplicateId(
                f"id {id!r} belongs to a request still in flight; this one was not run"
            )
            self._answer(id, encodeError(id, error))
            return
        if isinstance(request, Submit):
            self._submit(jobs, request, id)
            return
        d: Deferred[bytes]
        if isinstance(request, JobStatus):
            d = jobs.status(request.job).addCallback(lambda s: self._jobLine(id, *s))
        elif isinstance(request, CancelJob):
            d = jobs.cancel(request.job).addCallback(lambda r: self._jobLine(id, r, None))
        else:
            progress = None
            if request.progress:
                progress = lambda report: self._progress(id, report)  # noqa: E731
            d = jobs.wait(request.job, progress).addCallback(
                lambda result: encodeResult(id, result)
            )
        key: Any = id if id is not None else self._ordered.reserve()
        self._unanswered += 1
        self._calls[key] = d
        d.addCallbacks(self._jobAnswered, self._failed, callbackArgs=(key,), errbackArgs=(key,))
        self._updateReading()

    def _submit(self, jobs: JobService, request: Submit, id: CallId) -> None:
        """
        A submit: no C{Deferred} of its own (see L{JobService.take}); until
        its answer comes it is on the books as L{ACCEPTING}.
        """
        call = request.call
        runAt = request.at
        if request.delay is not None:
            runAt = jobs.clock.seconds() + request.delay
        key: Any = id if id is not None else self._ordered.reserve()
        self._unanswered += 1
        self._calls[key] = ACCEPTING
        jobs.take(
            call.function, call.raw, lambda outcome: self._submitted(key, outcome),
            runAt=runAt, key=request.key, timeout=call.timeout, priority=call.priority,
            deadline=call.deadline,
        )
        self._updateReading()
        self._submitsRead += 1
        if self._submitsRead >= SUBMITS_PER_TURN and not self.paused:
            # The lines after it wait in the buffer for the next turn (the
            # socket is still read: a pause and a resume of the transport
            # would cost two epoll_ctl calls a slice).  Counted again from
            # the next turn on: until then, a line read because an answer
            # resumed reading pauses it again.
            self.paused = True
            if not self._slicePaused:
                self._slicePaused = True
                jobs.pool.reactor.callLater(0, self._readOn)

    def _readOn(self) -> None:
        """
        The turn after a slice of submits: read again, unless reading
        should stay paused for what paused it otherwise (see
        C{TaskServerProtocol._updateReading}: it resumes then).
        """
        mine, self._slicePaused = self._slicePaused, False
        self._submitsRead = 0
        if not (mine and self.paused) or self._closed:
            return
        if self._writeBlocked or self._unanswered >= self.factory.maxInFlight:
            # Paused for that now (the transport too), until answers or
            # the drained buffer resume it.
            self.pauseProducing()
        else:
            self.resumeProducing()

    def _submitted(self, key: Any, outcome: Taken | Failure) -> None:
        if type(outcome) is tuple:
            self._calls.pop(key, None)
            self._done(key, encodeAccepted(None if type(key) is ReplySlot else key, *outcome))
        else:
            self._failed(outcome, key)  # type: ignore[arg-type]

    def _jobLine(self, id: CallId, record: JobRecord, progress: bytes | None) -> bytes:
        fields = describeJob(record)
        if record.error is not None:
            fields["error"] = self.factory.presentError(jobError(record)).toDict()
        return encodeJobReply(id, fields, record.result, progress)

    def _jobAnswered(self, line: bytes, key: Any) -> None:
        self._calls.pop(key, None)
        self._done(key, line)

    # -- admin requests (taskd.admin) ---------------------------------------

    def _admin(self, request: Admin) -> None:
        """
        Run an admin request; its answer takes its turn among the replies
        without an id (a rolling restart answers when it is done).
        """
        key = self._ordered.reserve()
        self._unanswered += 1
        admin = self.factory.admin
        if admin is None:
            d: Deferred[bytes] = Deferred()
            d.errback(errors.Forbidden("this daemon takes no admin requests"))
        else:
            d = admin.handle(request, isLocalListener(self.transport))

        def failed(failure: Failure) -> bytes:
            error = failure.value
            if not isinstance(error, errors.TaskdError):
                self.log.failure("admin {command} failed", failure, command=request.command)
                error = errors.TaskdError(f"internal error: {error!r}")
            return encodeError(None, error)

        d.addErrback(failed).addCallback(lambda line: self._done(key, line))
