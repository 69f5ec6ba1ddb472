# -*- test-case-name: tests.test_client,tests.test_goodbye -*-
"""
One connection of the client, on the wire: L{TaskClientProtocol} numbers
and writes requests (no more than the daemon's C{maxInFlight} unanswered,
the rest held in order), matches replies to them, passes progress
reports on, and says what happened to the calls in flight when the
connection closes (with or without the daemon's goodbye).  The API people
use is L{taskd.client}'s (L{taskd.client.TaskClient},
L{taskd.client.connect}), which re-exports this class.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from taskd import _json, errors
from taskd._clientcodec import RESULT_HEAD, Answer, encodeCall, encodePlainCall
from taskd.jobclient import JobAsking
from taskd.replies import immediateWriter
from taskd.wire import (
    VERSION,
    Accepted,
    JobReply,
    Cancel,
    ErrorReply,
    Hello,
    HelloReply,
    Progress,
    Request,
    Result,
    Stats,
    StatsReply,
    Tasks,
    TasksReply,
    Admin,
    AdminReply,
    Goodbye,
    decodeReply,
    encodeRequest,
)

#: The longest reply line the client accepts: a 16 MiB result, escaped.
MAX_REPLY = 128 * 1024 * 1024

#: How many calls may wait on the client's side of one connection for a
#: place under the daemon's C{maxInFlight}, by default.
MAX_HELD = 10_000

# Errors without an id by which the daemon says it closes the connection.
_CLOSING_NOTICES = (errors.IdleTimeout, errors.LineTimeout, errors.LineTooLong)


class TaskClientProtocol(JobAsking, Protocol):
    """
    The client's side of one connection.

    Reply lines are split here rather than by C{LineReceiver}, which copies
    what is left of its buffer for every line and re-joins it with every
    chunk: quadratic in the length of a large result.  Here a line cut
    short by a read is kept in a C{bytearray} that grows in place, and is
    copied once, when its end arrives.
    """

    MAX_LENGTH = MAX_REPLY
    # A stream transport (TCP, TLS, UNIX).
    transport: Any
    log = Logger()

    #: At most this many calls are sent and unanswered at once: the daemon's
    #: C{maxInFlight}, from its hello (C{None}: no limit).  Calls over it
    #: wait here, unsent, in order.
    maxInFlight: int | None = None

    #: At most this many calls wait unsent; a call past them fails at once
    #: with L{errors.PoolBusy}.
    maxHeld: int = MAX_HELD

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self._pending: dict[int, Answer] = {}
        # The ids of calls written and not yet answered, and the calls
        # waiting to be written (id and line), for maxInFlight.
        self._written: set[int] = set()
        self._held: deque[tuple[int, bytes]] = deque()
        self._progress: dict[int, Callable[[Any], object]] = {}
        self._lostWaiters: list[Deferred[None]] = []
        # Requests without an id (hello, stats, tasks), answered in order.
        self._unnumbered: deque[Deferred[Any]] = deque()
        self._closed = False
        #: The daemon's answer to the hello sent at connect time.
        self.serverHello: HelloReply | None = None
        #: Whether the connection is closing or closed (closed by us, or the
        #: daemon said it closes it, as it does an idle one): a call is not
        #: sent on it any more.
        self.closing = False
        # Why the daemon closed it, if it said.
        self._closedBecause: errors.TaskdError | None = None
        # The longest line the daemon takes, with its newline, once known.
        self._maxLine = MAX_REPLY
        self._closingWaiters: list[Deferred[None]] = []

    def call(
        self,
        name: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        progress: Callable[[Any], object] | None = None,
        priority: int | None = None,
        deadline: float | None = None,
    ) -> Deferred[Any]:
        if self.closing:
            return fail(self._notSent())
        id = next(self._ids)
        try:
            if kwargs or timeout is not None or progress is not None or priority is not None or deadline is not None:
                line = encodeCall(name, args, kwargs, id, timeout, progress, priority, deadline)
            else:
                line = encodePlainCall(name, args, id)
            self._check(line)
        except errors.TaskdError as e:
            return fail(e)

        def cancel(d: Deferred[Any]) -> None:
            self.cancelCall(id)

        d: Deferred[Any] = Deferred(cancel)
        if progress is not None:
            self._progress[id] = progress
        self._enter(id, line, d)
        return d

    # -- calls without a Deferred (taskd._callmany), issue 19 -------------------

    def callInto(self, name: str, args: Sequence[Any], answer: Answer) -> int:
        """
        Send a call of task C{name} with positional arguments C{args}, its
        outcome told to C{answer} (C{answer.callback(result)} or
        C{answer.errback(error)}, exactly once, unless L{cancelCall} is
        called first): L{call} without a C{Deferred}, for
        L{taskd.client.TaskClient.callMany}.

        @return: the call's id (for L{cancelCall}).
        @raise errors.TaskdError: if the call cannot be sent (it was not).
        """
        if self.closing:
            raise self._notSent()
        id = next(self._ids)
        line = encodePlainCall(name, args, id)
        self._check(line)
        self._enter(id, line, answer)
        return id

    def cancelCall(self, id: int) -> None:
        """
        Stop waiting for call C{id}: its answer is not told, and the daemon
        is told to cancel it (if it was sent; if it was held back, it is
        not sent).
        """
        self._progress.pop(id, None)
        if self._pending.pop(id, None) is None:
            return
        if id in self._written:
            if not self._closed:
                self._write(encodeRequest(Cancel(id)))
        else:
            for entry in self._held:
                if entry[0] == id:
                    self._held.remove(entry)
                    break

    def _check(self, line: bytes) -> None:
        """
        @raise errors.TaskdError: if the call on C{line} cannot be sent now.
        """
        if len(line) > self._maxLine:
            # The daemon would refuse it and close the connection, with
            # every other call on it: refuse it here, sending nothing.
            raise errors.LineTooLong(
                f"the call is a {len(line)}-byte line; the daemon takes at most "
                f"{self._maxLine - 1} bytes; it was not sent"
            )
        limit = self.maxInFlight
        if limit is not None and len(self._held) >= self.maxHeld and len(self._written) >= limit:
            raise errors.PoolBusy(
                f"{self.maxHeld} calls already wait to be sent on this connection "
                f"(the daemon takes {limit} at once); the call was not sent"
            )

    def _enter(self, id: int, line: bytes, answer: Answer) -> None:
        """
        Wait for call C{id}'s answer, and send its C{line} (or hold it back
        under L{maxInFlight}).
        """
        self._pending[id] = answer
        limit = self.maxInFlight
        if limit is not None and (self._held or len(self._written) >= limit):
            self._held.append((id, line))
        else:
            self._written.add(id)
            self._write(line)

    # -- end of the block without Deferreds -------------------------------------

    @property
    def outstanding(self) -> int:
        """
        How many calls on this connection wait for their replies (sent, or
        held back by L{maxInFlight}).
        """
        return len(self._pending)

    def setMaxInFlight(self, limit: int | None) -> None:
        """
        Send at most C{limit} calls at once (the daemon's C{maxInFlight},
        from its hello); hold the others, in order, until replies come.
        """
        self.maxInFlight = limit
        self._sendHeld()

    def _sendHeld(self) -> None:
        held, written, limit = self._held, self._written, self.maxInFlight
        while held and (limit is None or len(written) < limit) and not self.closing:
            id, line = held.popleft()
            written.add(id)
            self._write(line)

    def hello(self, fields: dict[str, Any]) -> Deferred[HelloReply]:
        """
        Send a hello (with a token, say) and wait for the daemon's answer.

        @return: a C{Deferred} firing with the L{HelloReply}, or failing
            with the daemon's error (L{errors.Unauthenticated}).
        """
        return self._ask(Hello(VERSION, fields))

    def stats(self) -> Deferred[StatsReply]:
        """
        Ask the daemon for its counters.

        @return: a C{Deferred} firing with the L{StatsReply}.
        """
        return self._ask(Stats())

    def tasks(self) -> Deferred[TasksReply]:
        """
        Ask the daemon which tasks it serves.

        @return: a C{Deferred} firing with the L{TasksReply}, or failing
            with L{errors.BadRequest} from a daemon too old to know.
        """
        return self._ask(Tasks())

    # -- admin requests (see docs/operations.md) -----------------------------

    def admin(self, command: str, **fields: Any) -> Deferred[AdminReply]:
        """
        Make an admin request: C{command} is one of
        L{taskd.wire.ADMIN_COMMANDS}, C{fields} its other fields (the admin
        C{token}, a call's C{number}, a pool size's C{count}).

        @return: a C{Deferred} firing with the L{AdminReply}, or failing
            with the daemon's error (L{errors.Forbidden}, say).
        """
        return self._ask(Admin(command, fields))

    def _ask(self, request: Request) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self.closing:
            d.errback(self._notSent())
            return d
        self._unnumbered.append(d)
        self._write(encodeRequest(request))
        return d

    # -- writing: what answering one read makes goes out in one send ----------

    # While a read is handled, the lines written (the next calls of a
    # callMany, say), or None.
    _outgoing: list[bytes] | None = None
    _sendNow: Callable[[bytes], None] | None = None

    def _write(self, line: bytes) -> None:
        outgoing = self._outgoing
        if outgoing is None:
            # Twisted's transport sends what one reactor turn writes at once.
            self.transport.write(line)
        else:
            outgoing.append(line)

    def makeConnection(self, transport: Any) -> None:
        # (The client has no write-backpressure producer to register.)
        self._sendNow = immediateWriter(transport, lambda: None)
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        """
        Handle every reply line of C{data}; what that makes the client send
        goes out at the end, in one send and at once when the socket takes
        it (L{taskd.replies.immediateWriter}: no wait for the next reactor
        turn, no C{epoll_ctl}).
        """
        outgoing: list[bytes] = []
        self._outgoing = outgoing
        try:
            self._linesReceived(data)
        finally:
            self._outgoing = None
            if outgoing:
                send = self._sendNow or self.transport.write
                send(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))
        if self._saidGoodbye:
            self._closeOnceAnswered()

    # -- end of writing --------------------------------------------------------

    def _linesReceived(self, data: bytes) -> None:
        buffer = self._buffer
        if b"\n" not in data:
            buffer += data
            if len(buffer) > self.MAX_LENGTH:
                self.lineLengthExceeded(bytes(buffer))
            return
        if buffer:
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        lines = data.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line)
                return
            self.lineReceived(line)
        buffer += rest

    def lineReceived(self, line: bytes) -> None:
        """
        Handle one reply line.

        The usual reply, a call's result as the daemon writes it
        (C{{"type":"result","id":N,"result":...}}), is read here without
        the reply objects of L{decodeReply}: the same outcome, cheaper.
        Anything else, or anything this fast path does not take, goes the
        general way (L{replyReceived}).
        """
        if line[:22] == RESULT_HEAD and line[-1:] == b"}":
            end = line.find(b',"result":', 22)
            digits = line[22:end]
            # A JSON integer: digits, no leading zero.
            if end > 22 and digits.isdigit() and (digits[:1] != b"0" or end == 23):
                try:
                    value = _json.loadsUTF8(line[end + 10 : -1])
                except (ValueError, RecursionError):
                    pass  # the general way says what is wrong with it
                else:
                    id = int(digits)
                    self._progress.pop(id, None)
                    d = self._pending.pop(id, None)
                    written = self._written
                    if id in written:
                        written.discard(id)
                        if self._held:
                            self._sendHeld()
                    if d is not None:
                        d.callback(value)
                    return
        self.replyReceived(line)

    def replyReceived(self, line: bytes) -> None:
        """
        Handle one reply line the general way: decoded by L{decodeReply}.
        """
        try:
            reply = decodeReply(line)
        except ValueError as e:
            self.log.warn("ignoring a reply taskd.client cannot read: {error}", error=e)
            return
        if isinstance(reply, (HelloReply, StatsReply, TasksReply, AdminReply)):
            if self._unnumbered:
                self._unnumbered.popleft().callback(reply)
            return
        if isinstance(reply, Progress):
            callback = self._progress.get(reply.id) if isinstance(reply.id, int) else None
            if callback is not None:
                try:
                    callback(reply.progress)
                except Exception:
                    self.log.failure("a progress callback failed")
            return
        if isinstance(reply, (Accepted, JobReply)):
            self._jobAnswered(reply)
            return
        if isinstance(reply, (Result, ErrorReply)):
            d = None
            if isinstance(reply.id, int):
                self._progress.pop(reply.id, None)
                d = self._pending.pop(reply.id, None)
                written = self._written
                if reply.id in written:
                    written.discard(reply.id)
                    if self._held:
                        self._sendHeld()
            if d is None:
                if isinstance(reply, ErrorReply) and reply.id is None:
                    # An answer to a hello, stats or tasks request, or an
                    # error about the connection itself, which the daemon
                    # closes next ("busy", "unauthenticated" answer the
                    # hello; these three answer nothing).
                    if isinstance(reply.error, _CLOSING_NOTICES):
                        self._closedBecause = reply.error
                        if isinstance(reply.error, errors.IdleTimeout):
                            # A notice, not a fault: no call was lost.
                            self.log.info("taskd: {error}", error=reply.error.message)
                        else:
                            self.log.warn("taskd: {error}", error=reply.error.message)
                        self._nowClosing()
                    elif self._unnumbered:
                        self._unnumbered.popleft().errback(reply.error)
                    else:
                        self.log.warn("taskd: {error}", error=reply.error.message)
                return
            if isinstance(reply, Result):
                d.callback(reply.result)
            else:
                d.errback(reply.error)
            return
        if isinstance(reply, Goodbye):
            self._goodbye()

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A reply longer than L{MAX_LENGTH} arrived: give up on the connection.
        """
        self._buffer.clear()
        self.log.error("taskd sent a reply over {max} bytes; disconnecting", max=self.MAX_LENGTH)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._nowClosing()
        self._progress.clear()
        why = reason.getErrorMessage()
        if self._closedBecause is not None:
            why = f"{self._closedBecause.type}: {self._closedBecause.message}"
        pending, self._pending = self._pending, {}
        written, self._written = self._written, set()
        self._held.clear()
        for id, d in pending.items():
            if id in written:
                d.errback(errors.ConnectionLost(f"connection to taskd lost: {why}"))
            else:
                d.errback(
                    errors.ConnectionLost(
                        f"connection to taskd lost: {why}; the call was not sent", started=False
                    )
                )
        unnumbered, self._unnumbered = self._unnumbered, deque()
        for d in unnumbered:
            d.errback(errors.ConnectionLost(f"connection to taskd lost: {why}"))
        waiters, self._lostWaiters = self._lostWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def cancelPending(self) -> None:
        """
        Send a cancel for every call still waiting for its reply.  The daemon
        takes a clean end of stream as "done sending" and would still run
        them (see docs/protocol.md), so a client closing on purpose calls
        this first.
        """
        if self._closed:
            return
        for id in list(self._pending):
            if id in self._written:
                self._write(encodeRequest(Cancel(id)))

    def setMaxLine(self, length: int) -> None:
        """
        Refuse, without sending them, calls longer than C{length} bytes
        (the daemon's C{maxLineLength}, from its hello).
        """
        self._maxLine = length + 1

    def whenClosing(self) -> Deferred[None]:
        """
        @return: a C{Deferred} that fires as soon as no call should be sent
            on this connection any more: the daemon said it closes it, or
            it is gone.
        """
        if self.closing:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closingWaiters.append(d)
        return d

    def _notSent(self) -> errors.TaskdError:
        if self._closedBecause is not None:
            return errors.ConnectionLost(
                f"the daemon is closing the connection ({self._closedBecause.type}); "
                "the call was not sent",
                started=False,
            )
        return errors.ConnectionLost("the connection is closed; the call was not sent", started=False)

    def close(self) -> Deferred[None]:
        """
        Cancel the calls still waiting for their replies on the daemon, send
        nothing more, and close the connection.

        @return: a C{Deferred} that fires once the connection is closed.
        """
        lost = self.whenLost()
        self.cancelPending()
        self._nowClosing()
        if not self._closed:
            self.transport.loseConnection()
        return lost

    def _nowClosing(self) -> None:
        self.closing = True
        waiters, self._closingWaiters = self._closingWaiters, []
        for d in waiters:
            d.callback(None)

    # -- the daemon's goodbye (it drains or stops) ------------------------------

    _saidGoodbye = False

    def _goodbye(self) -> None:
        """
        The daemon said goodbye: send nothing more on this connection (so
        no request can be on its way when the daemon closes it); the calls
        held back unsent fail with L{errors.ConnectionLost} and C{started}
        false (a L{ReconnectingClient <taskd.reconnecting.ReconnectingClient>}
        sends them to another daemon); close the connection once every
        request sent is answered.
        """
        self._saidGoodbye = True
        self._closedBecause = errors.PoolStopping("the daemon said goodbye: it drains or stops")
        self._nowClosing()
        held, self._held = self._held, deque()
        for id, _ in held:
            self._progress.pop(id, None)
            d = self._pending.pop(id, None)
            if d is not None:
                d.errback(self._notSent())
        self._closeOnceAnswered()

    def _closeOnceAnswered(self) -> None:
        if not self._pending and not self._unnumbered and not self._closed:
            self.transport.loseConnection()

    def whenLost(self) -> Deferred[None]:
        """
        @return: a C{Deferred} that fires once the connection is gone.
        """
        if self._closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._lostWaiters.append(d)
        return d


