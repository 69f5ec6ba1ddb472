# -*- test-case-name: tests.test_pgjournal -*-
"""
One daemon's use of a PostgreSQL server, for L{taskd.pgjournal}: a psycopg 3
connection on a thread of its own (never the reactor's), writes committed
in groups, reconnection with a backoff, and C{LISTEN} on a second thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Sequence, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from taskd import errors
from taskd.journal import JournalError

#: The longest wait between two attempts to reconnect, in seconds.
MAX_BACKOFF = 5.0
#: Reads sent to the journal's thread together, at most (see
#: L{PostgreSQLConnection._read}).
READS_PER_BATCH = 32

T = TypeVar("T")


class CommitUnknown(errors.JournalUnavailable):
    """
    The connection was lost during a transaction's C{COMMIT}: it may have
    been committed (a write that may run again is, once the server is
    back: see L{PostgreSQLConnection._write}).
    """


class PostgreSQLConnection:
    """
    A daemon's connection to PostgreSQL: statements on one thread of its
    own, writes committed in groups (those asked for while a commit runs go
    together into the next), reconnection with a backoff (0.1 s doubling up
    to L{MAX_BACKOFF}) during which statements fail at once with
    L{errors.JournalUnavailable} (and durable writes wait), and C{LISTEN}
    on a second thread.

    @ivar dsn: the libpq connection string.
    @ivar notified: called on the reactor thread with each notification's
        payload, and with C{"new"} after a reconnection (notifications may
        have been missed).
    @ivar commits: transactions committed so far.
    @ivar writes: writes committed so far.
    @ivar reconnects: connections made after the first.
    """

    log = Logger()

    def __init__(self, dsn: str, reactor: Any, channel: str, *, listen: bool = True,
                 pollInterval: float = 1.0, maxBackoff: float = MAX_BACKOFF) -> None:
        """
        @param dsn: a libpq connection string (C{postgresql://...}).
        @param reactor: the reactor (a clock taking calls from threads).
        @param channel: the C{LISTEN} channel.
        @param listen: whether to C{LISTEN} for notifications.
        @param pollInterval: the daemons' poll interval (the listening
            thread checks every 0.2 s at most whether it should stop).
        @param maxBackoff: the longest wait between two attempts to
            reconnect.
        """
        self.dsn = dsn
        self._maxBackoff = maxBackoff
        self.notified: Callable[[str], object] = lambda payload: None
        self.commits = 0
        self.writes = 0
        self.reconnects = 0
        self._channel = channel
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._listen = listen
        self._pollInterval = pollInterval
        self._threadPool: ThreadPool | None = None
        self._db: Any = None
        self._connected = False
        self._backoff = 0.0
        self._nextAttempt = 0.0
        self._lastError = ""
        self._connectedSince = 0.0
        # (the write, its caller, kept while unreachable, kept only once its
        # commit's outcome is unknown (False: at once)).
        self._pending: list[tuple[Callable[[Any], Any], Deferred[Any], bool, bool]] = []
        self._flushCall: Any = None
        self._committing = False
        self._reads: deque[tuple[Callable[[Any], Any], Deferred[Any]]] = deque()
        self._reading = False
        self._closing: Deferred[None] | None = None
        self._isOpen = False
        self._stopListening = threading.Event()
        self._listening = threading.Event()
        self._listener: threading.Thread | None = None

    # -- the connection -------------------------------------------------------

    def _connection(self) -> Any:
        """
        The open connection, made (again) if need be; in the journal's
        thread.

        @raise errors.JournalUnavailable: the server cannot be reached (or
            the last attempt was less than the backoff ago).
        """
        import psycopg

        if self._db is not None and not self._db.closed:
            return self._db
        now = time.monotonic()
        if now < self._nextAttempt:
            raise errors.JournalUnavailable(
                f"the jobs' journal (PostgreSQL) is unreachable ({self._lastError}); "
                f"the daemon tries again in {self._nextAttempt - now:.1f} s"
            )
        try:
            db = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
        except psycopg.Error as e:
            self._down(e)
            raise errors.JournalUnavailable(
                f"the jobs' journal (PostgreSQL) is unreachable: {self._lastError}"
            ) from None
        if self._connected:
            self.reconnects += 1
            self.log.info("journal: reconnected to PostgreSQL")
            self._reactor.callFromThread(self.notified, "new")
        self._connected = True
        self._connectedSince = time.monotonic()
        self._backoff = 0.0
        self._db = db
        return db

    def _down(self, e: BaseException) -> None:
        self._lastError = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        self._backoff = min(self._maxBackoff, max(0.1, self._backoff * 2))
        self._nextAttempt = time.monotonic() + self._backoff
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except Exception:
                pass

    def _transaction(self, ops: Sequence[Callable[[Any], Any]]) -> list[Any]:
        import psycopg

        db = self._connection()
        committing = False
        try:
            with db.transaction():
                results = [op(db) for op in ops]
                committing = True
            return results
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            self._down(e)
            if committing:
                # Lost during the COMMIT: it may have been committed.
                raise CommitUnknown(
                    "the jobs' journal (PostgreSQL) was lost while committing, so whether "
                    f"it committed is not known: {self._lastError}"
                ) from None
            raise errors.JournalUnavailable(
                f"the jobs' journal (PostgreSQL) is unreachable: {self._lastError}"
            ) from None

    # -- running statements ----------------------------------------------------

    def _run(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._threadPool is None:
            raise JournalError("the journal is not open")
        return deferToThreadPool(self._reactor, self._threadPool, f, *args)

    def _read(self, op: Callable[[Any], T]) -> Deferred[T]:
        """
        Ask for a read (one statement).  Reads wait in a line of their
        own and go to the journal's thread L{READS_PER_BATCH} at a time,
        one batch at once: a write (a lease's renewal) waits behind one
        batch at most, however many reads are asked (thousands of C{job}
        requests), rather than behind every one of them.
        """
        if not self._isOpen or self._closing is not None:
            # A job request while the daemon starts or stops: an answer,
            # not an internal error.
            return fail(errors.JournalUnavailable(
                "the jobs' journal is not open (the daemon is starting or stopping)"
            ))
        d: Deferred[T] = Deferred()
        self._reads.append((op, d))
        if not self._reading:
            self._readNext()
        return d

    def _readNext(self) -> None:
        reads = self._reads
        if not reads:
            self._reading = False
            return
        self._reading = True
        batch = [reads.popleft() for _ in range(min(READS_PER_BATCH, len(reads)))]
        try:
            d = self._run(self._readBatch, [op for op, _ in batch])
        except JournalError:
            # Closed meanwhile: these and the reads after them fail.
            batch.extend(reads)
            reads.clear()
            self._reading = False
            for _, waiting in batch:
                waiting.errback(errors.JournalUnavailable(
                    "the jobs' journal is not open (the daemon is starting or stopping)"
                ))
            return

        def done(outcomes: list[tuple[bool, Any]]) -> None:
            for (_, waiting), (ok, value) in zip(batch, outcomes):
                if ok:
                    waiting.callback(value)
                else:
                    waiting.errback(value)

        def failed(failure: Failure) -> None:
            for _, waiting in batch:
                waiting.errback(failure.value)

        d.addCallbacks(done, failed)
        d.addBoth(lambda _: self._readNext())

    def _readBatch(self, ops: list[Callable[[Any], Any]]) -> list[tuple[bool, Any]]:
        """
        Run reads, each its own statement (autocommit: one round trip
        each), in the journal's thread.

        @return: (whether it succeeded, its result or its exception) for
            each of C{ops}; once the connection is lost, the rest fail
            with L{errors.JournalUnavailable}.
        """
        import psycopg

        outcomes: list[tuple[bool, Any]] = []
        try:
            db = self._connection()
        except errors.JournalUnavailable as e:
            return [(False, e)] * len(ops)
        for op in ops:
            try:
                outcomes.append((True, op(db)))
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                self._down(e)
                lost = errors.JournalUnavailable(
                    f"the jobs' journal (PostgreSQL) is unreachable: {self._lastError}"
                )
                return outcomes + [(False, lost)] * (len(ops) - len(outcomes))
            except Exception as e:
                outcomes.append((False, e))
        return outcomes

    def _write(self, op: Callable[[Any], T], durable: bool = False, again: bool = False) -> Deferred[T]:
        """
        Ask for a write, committed with the others asked for meanwhile.

        @param durable: keep it, and try again, while the server is
            unreachable (a job's change of state), rather than fail it.
        @param again: if the connection is lost during its commit (the
            write may have been committed), keep it, as a durable one, and
            run it again once the server is back, rather than fail it: for
            a write whose second run finds what its first did (an add: its
            caller must not be told it failed if it was committed).
        """
        if not self._isOpen or self._closing is not None:
            raise JournalError("the journal is not open")
        d: Deferred[T] = Deferred()
        self._pending.append((op, d, durable or again, durable))
        self._schedule(0)
        return d

    def _schedule(self, delay: float) -> None:
        if not self._committing and self._flushCall is None:
            self._flushCall = self._clock.callLater(delay, self._flush)

    def _flush(self) -> None:
        self._flushCall = None
        batch, self._pending = self._pending, []
        self._committing = True
        d = self._run(self._commit, [entry[0] for entry in batch])

        def committed(results: list[Any]) -> None:
            for entry, result in zip(batch, results):
                entry[1].callback(result)

        def failed(failure: Failure) -> None:
            unavailable = failure.check(errors.JournalUnavailable) is not None
            unknown = failure.check(CommitUnknown) is not None
            if not unavailable:
                self.log.failure("the journal could not commit {n} writes", failure, n=len(batch))
            error = failure.value
            if not isinstance(error, errors.TaskdError):
                error = JournalError(f"the journal could not be written: {error}")
            kept = []
            for op, waiting, keep, keptNow in batch:
                if keep and (keptNow or unknown) and unavailable and self._closing is None:
                    # Kept from now on, whatever the next failure.
                    kept.append((op, waiting, True, True))
                else:
                    waiting.errback(error)
            # Durable writes go first again, once the server is back.
            self._pending[:0] = kept

        d.addCallbacks(committed, failed)
        d.addBoth(self._committed)

    def _committed(self, _: object) -> None:
        self._committing = False
        if self._closing is not None:
            if self._pending:
                self._flush()
            else:
                self._finishClosing()
        elif self._pending:
            self._schedule(max(0.0, self._nextAttempt - time.monotonic()) if self._db is None else 0)

    def _commit(self, ops: list[Callable[[Any], Any]]) -> list[Any]:
        results = self._transaction([*ops, self._afterWrites])[:-1]
        self.commits += 1
        self.writes += len(ops)
        return results

    def _afterWrites(self, db: Any) -> None:
        """
        Run at the end of each write transaction (subclasses: retention).
        """

    # -- starting -----------------------------------------------------------------

    def _startThread(self) -> None:
        self._threadPool = ThreadPool(1, 1, "taskd-postgresql")
        self._threadPool.start()

    def _startListening(self) -> Deferred[Any]:
        """
        Start the C{LISTEN} thread.

        @return: a C{Deferred} that fires once C{LISTEN} is in place, or
            after 10 s (the daemons' poll covers for it).
        """
        self._listener = threading.Thread(
            target=self._listenLoop, name="taskd-postgresql-listen", daemon=True
        )
        self._listener.start()
        return self._run(self._listening.wait, 10.0)

    # -- LISTEN ---------------------------------------------------------------------

    def _listenLoop(self) -> None:
        import psycopg

        backoff = 0.0
        first = True
        while not self._stopListening.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as db:
                    db.execute(f"LISTEN {self._channel}")
                    self._listening.set()
                    backoff = 0.0
                    if not first:
                        self._reactor.callFromThread(self.notified, "new")
                    first = False
                    while not self._stopListening.is_set():
                        for note in db.notifies(timeout=min(self._pollInterval, 0.2)):
                            self._reactor.callFromThread(self.notified, note.payload)
            except psycopg.Error as e:
                backoff = min(MAX_BACKOFF, max(0.1, backoff * 2))
                self.log.debug("journal: LISTEN connection lost ({e}); again in {s} s", e=e, s=backoff)
                self._stopListening.wait(backoff)

    # -- closing ------------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """
        See L{taskd.journal.Journal.close}: finishes the writes asked for
        (those waiting for an unreachable server fail), stops listening and
        disconnects.
        """
        if self._closing is not None:
            return self._closing
        self._closing = Deferred()
        closing = self._closing
        self._stopListening.set()
        if self._threadPool is None:
            closing.callback(None)
            return closing
        if self._flushCall is not None:
            self._flushCall.cancel()
            self._flushCall = None
            if self._pending:
                self._flush()
            else:
                self._finishClosing()
        elif not self._committing:
            self._finishClosing()
        return closing

    def _finishClosing(self) -> None:
        assert self._closing is not None
        closing = self._closing
        d = self._run(self._closeDatabase)
        d.addErrback(lambda f: self.log.failure("closing the journal failed", f))
        d.addBoth(lambda _: self._stopThread())
        d.addBoth(lambda _: closing.callback(None))

    def _closeDatabase(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
        listener = self._listener
        if listener is not None:
            listener.join(self._pollInterval + 6)

    def _stopThread(self) -> None:
        pool, self._threadPool = self._threadPool, None
        if pool is not None:
            pool.stop()



__all__ = ["MAX_BACKOFF", "READS_PER_BATCH", "CommitUnknown", "PostgreSQLConnection"]
