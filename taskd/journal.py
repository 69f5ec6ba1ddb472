# -*- test-case-name: tests.test_journal -*-
"""
The jobs' journal: where every background job is written before it is
accepted, and where its state, timestamps and result are kept until its
retention ends.

L{Journal} is what the jobs room (L{taskd.jobs}) needs of a journal, so a
PostgreSQL backend can stand in for L{SQLiteJournal}, the embedded one.

L{SQLiteJournal} keeps the jobs in one SQLite file (the standard
library's C{sqlite3}, WAL mode, C{synchronous=FULL}: a commit is on disk
when it returns).  Every statement runs on one thread of its own, so the
reactor never waits for a disk sync.  Writes are committed in groups: the
writes asked for while a commit runs go together into the next
transaction, so a burst of submits costs one sync per batch, not one per
job.  A commit's answers are handed back a slice at a time
(L{taskd._handback}).  The schema's version is the file's C{PRAGMA
user_version}; opening an older file runs the L{MIGRATIONS} from its
version up.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from typing import Any, Callable, Protocol, Sequence, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from taskd import _json, errors
from taskd._handback import HandBack
from taskd._sqliteschema import COLUMNS, INSERT, MIGRATIONS, UPDATE, changesOf, rowOf

#: A job that may start now.
QUEUED = "queued"
#: A job waiting for its time (C{delay} or C{at}).
SCHEDULED = "scheduled"
#: A job handed to the pool.
RUNNING = "running"
#: A job whose task returned; its C{result} is kept.
DONE = "done"
#: A job whose task raised, timed out, or whose worker died; its C{error}
#: is kept.
FAILED = "failed"
#: A job cancelled before it ended.
CANCELLED = "cancelled"
#: A job that was running when the daemon stopped or died, and whose task
#: does not opt into retries: it is not run again.
INTERRUPTED = "interrupted"
#: A job that waited past its deadline and never ran.
EXPIRED = "expired"

#: The states a job ends in.
FINAL_STATES = frozenset({DONE, FAILED, CANCELLED, INTERRUPTED, EXPIRED})
#: The states a journal holds a job in before it ends.
UNFINISHED_STATES = frozenset({QUEUED, SCHEDULED, RUNNING})

#: Where the journal is kept by default: in the daemon's working directory.
DEFAULT_JOURNAL = "taskd-journal.sqlite"
#: The journal path that keeps jobs in memory only (lost when the daemon
#: stops).
IN_MEMORY = ":memory:"


class JournalError(Exception):
    """
    The journal cannot be opened or written: the message says why.
    """


@frozen
class JobRecord:
    """
    A job as the journal keeps it.

    @ivar id: the job's id, given by the daemon.
    @ivar function: the task's registered name.
    @ivar payload: a JSON object holding the arguments (C{"args"},
        C{"kwargs"}) as a worker reads them (the submit's request line).
    @ivar state: one of L{QUEUED}, L{SCHEDULED}, L{RUNNING} or the
        L{FINAL_STATES}.
    @ivar submitted: when it was accepted (seconds since the epoch).
    @ivar runAt: when it may start.
    @ivar key: the caller's idempotency key, or C{None}.
    @ivar timeout: seconds it may run, or C{None} for the daemon's limit.
    @ivar priority: its priority in the pool's queue, or C{None}.
    @ivar deadline: seconds it may wait past C{runAt} before it starts, or
        C{None}.
    @ivar started: when it was handed to the pool, or C{None}.
    @ivar finished: when it ended, or C{None}.
    @ivar result: its result, as JSON, once L{DONE}.
    @ivar error: its error object (as L{taskd.errors.TaskdError.toDict}
        makes it), as JSON, once it ended otherwise.
    """

    id: str
    function: str
    payload: bytes
    state: str
    submitted: float
    runAt: float
    key: str | None = None
    timeout: float | None = None
    priority: int | None = None
    deadline: float | None = None
    started: float | None = None
    finished: float | None = None
    result: bytes | None = None
    error: bytes | None = None


def describeJob(record: JobRecord) -> dict[str, Any]:
    """
    @return: a job's fields as a C{job} reply carries them (its result,
        error and progress apart).
    """
    fields: dict[str, Any] = {
        "job": record.id,
        "function": record.function,
        "state": record.state,
        "submitted": record.submitted,
        "runAt": record.runAt,
    }
    for name, value in (
        ("key", record.key), ("started", record.started), ("finished", record.finished)
    ):
        if value is not None:
            fields[name] = value
    return fields


def jobError(record: JobRecord) -> errors.TaskdError:
    """
    @return: the error a job ended with (one that ended without its
        error written gets a plain L{errors.TaskdError} saying so).
    """
    if record.error is None:
        return errors.TaskdError(f"the job ended {record.state} without an error")
    return errors.errorFromDict(_json.loads(record.error))


@frozen
class Added:
    """
    What adding a job did.

    @ivar id: the job's id: the one added, or, if its key was taken, the
        id of the job that holds it.
    @ivar existing: whether the key was taken (nothing was added).
    """

    id: str
    existing: bool


class Journal(Protocol):
    """
    What the jobs room needs of a journal.  Every method's C{Deferred}
    fires once what it did is durable (committed), in the order asked.
    """

    def open(self) -> Deferred[list[JobRecord]]:
        """
        Open (and create, or migrate) the journal.

        @return: the jobs that had not ended, oldest first.
        """

    def add(self, record: JobRecord) -> Deferred[Added]:
        """
        Add a job, unless its key is held by a job still in the journal.
        Past the journal's C{maxJobs} rows, the jobs that ended first are
        removed.
        """

    def update(self, record: JobRecord) -> Deferred[None]:
        """
        Write a job's new state, timestamps, result or error.
        """

    def addMany(self, records: Sequence[JobRecord]) -> Deferred[list[Added]]:
        """
        L{add} each of C{records}, in order, in one write: what a burst of
        submits costs the caller once for the group.

        @return: what adding each did, in the order of C{records}.
        """

    def updateMany(self, records: Sequence[JobRecord]) -> Deferred[None]:
        """
        L{update} each of C{records}, in one write.
        """

    def get(self, jobId: str) -> Deferred[JobRecord | None]:
        """
        @return: the job, or C{None} if the journal does not hold it.
        """

    def prune(self, endedBefore: float, limit: int) -> Deferred[int]:
        """
        Remove up to C{limit} jobs that ended before C{endedBefore}.

        @return: how many were removed.
        """

    def close(self) -> Deferred[None]:
        """
        Finish the writes asked for, and close.
        """


T = TypeVar("T")


def _record(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        row[0], row[1], bytes(row[2]), row[3], row[4], row[5], row[6], row[7], row[8],
        row[9], row[10], row[11],
        None if row[12] is None else bytes(row[12]),
        None if row[13] is None else bytes(row[13]),
    )


class SQLiteJournal:
    """
    A L{Journal} in one SQLite file (or in memory, for L{IN_MEMORY}).

    The file is locked (C{flock}) while open: a second daemon given the
    same journal refuses to start rather than run its jobs again.

    @ivar answers: the committed writes whose callers are not yet told,
        told a slice a reactor turn (its C{writes} may be set: see
        L{HandBack}).
    @ivar commits: the transactions committed so far.
    @ivar writes: the writes committed so far (C{writes / commits} is the
        mean batch).
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        *,
        maxJobs: int | None = None,
        threaded: bool = True,
        migrations: Sequence[Callable[[sqlite3.Connection], None]] = MIGRATIONS,
        reactor: Any = None,
    ) -> None:
        """
        @param path: the file, or L{IN_MEMORY}.
        @param clock: schedules the group commits.
        @param maxJobs: the most jobs kept; past it, the jobs that ended
            first are removed as new ones are added.
        @param threaded: run the statements on a thread of the journal's
            own (the daemon); C{False} runs them at once, in the caller's
            thread (unit tests on a C{Clock}).
        @param migrations: the schema's migrations (L{MIGRATIONS}).
        @param reactor: the reactor the thread reports to (C{clock} if
            not given).
        """
        self.path = path
        self.maxJobs = maxJobs
        self.commits = 0
        self.writes = 0
        self._clock = clock
        self._threaded = threaded
        self._migrations = migrations
        self._reactor: Any = clock if reactor is None else reactor
        self._threadPool: ThreadPool | None = None
        self._db: sqlite3.Connection | None = None
        self._lock: int | None = None
        self._rows = 0
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], Deferred[Any]]] = []
        self._flushCall: Any = None
        self._committing = False
        self._closing: Deferred[None] | None = None
        self._isOpen = False
        self.answers = HandBack(clock)

    # -- running statements ------------------------------------------------

    def _run(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._threadPool is None:
            return maybeDeferred(f, *args)
        return deferToThreadPool(self._reactor, self._threadPool, f, *args)

    def _write(self, op: Callable[[sqlite3.Connection], T]) -> Deferred[T]:
        if not self._isOpen or self._closing is not None:
            raise JournalError("the journal is not open")
        d: Deferred[T] = Deferred()
        self._pending.append((op, d))
        if not self._committing and self._flushCall is None:
            self._flushCall = self._clock.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._flushCall = None
        batch, self._pending = self._pending, []
        self._committing = True
        d = self._run(self._commit, [op for op, _ in batch])

        def committed(results: list[Any]) -> None:
            self.answers.tell(zip([waiting.callback for _, waiting in batch], results))

        def failed(failure: Failure) -> None:
            self.log.failure("the journal could not commit {n} writes", failure, n=len(batch))
            error = JournalError(f"the journal could not be written: {failure.value}")
            self.answers.tell((waiting.callback, Failure(error)) for _, waiting in batch)

        d.addCallbacks(committed, failed)
        d.addBoth(self._committed)

    def _committed(self, _: object) -> None:
        self._committing = False
        if self._pending:
            self._flush()
        elif self._closing is not None:
            self._finishClosing()

    def _commit(self, ops: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        db = self._db
        assert db is not None
        # The rows' count as committed: the ops and the removals below
        # change it as they go, and a failed transaction changes nothing.
        rows = self._rows
        db.execute("BEGIN IMMEDIATE")
        try:
            results = [op(db) for op in ops]
            if self.maxJobs is not None and self._rows > self.maxJobs:
                self._rows -= db.execute(
                    "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs "
                    "WHERE finished IS NOT NULL ORDER BY finished LIMIT ?)",
                    (self._rows - self.maxJobs,),
                ).rowcount
            db.execute("COMMIT")
        except BaseException:
            self._rows = rows
            # SQLite has rolled back already after some errors (a full
            # disk): a ROLLBACK then would raise, hiding the error.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.commits += 1
        self.writes += len(ops)
        return results

    # -- Journal ------------------------------------------------------------

    def open(self) -> Deferred[list[JobRecord]]:
        """
        Lock, open, create or migrate the file, and read the jobs that had
        not ended.

        @return: a C{Deferred} firing with them, oldest first, or failing
            with L{JournalError} (the file is locked by another daemon,
            cannot be opened, or is of a newer schema).
        """
        if self._threaded:
            self._threadPool = ThreadPool(1, 1, "taskd-journal")
            self._threadPool.start()
        d = self._run(self._open)

        def failed(failure: Failure) -> Failure:
            self._stopThread()
            if not failure.check(JournalError):
                return Failure(JournalError(f"cannot open the journal {self.path!r}: {failure.value}"))
            return failure

        def opened(records: list[JobRecord]) -> list[JobRecord]:
            self._isOpen = True
            return records

        return d.addCallbacks(opened, failed)

    def _open(self) -> list[JobRecord]:
        memory = self.path == IN_MEMORY
        if not memory:
            self._lock = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock)
                self._lock = None
                raise JournalError(
                    f"the journal {self.path!r} is in use by another daemon "
                    "(give each daemon a journal of its own with --journal)"
                ) from None
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            if not memory:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            self._migrate(db)
            self._rows = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
            rows = db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE finished IS NULL ORDER BY seq"
            ).fetchall()
        except BaseException:
            db.close()
            self._unlock()
            raise
        self._db = db
        return [_record(row) for row in rows]

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        latest = len(self._migrations)
        if version > latest:
            raise JournalError(
                f"the journal {self.path!r} has schema version {version}, written by a "
                f"newer taskd; this one reads versions up to {latest}"
            )
        for step in range(version, latest):
            db.execute("BEGIN IMMEDIATE")
            try:
                self._migrations[step](db)
                db.execute(f"PRAGMA user_version = {step + 1}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self.log.info(
                "journal {path}: schema version {version}", path=self.path, version=step + 1
            )

    def schemaVersion(self) -> Deferred[int]:
        """
        @return: the open journal's schema version.
        """
        return self._run(self._read, "PRAGMA user_version", ()).addCallback(lambda rows: rows[0][0])

    def _read(self, query: str, args: tuple[Any, ...]) -> list[Any]:
        assert self._db is not None
        return self._db.execute(query, args).fetchall()

    def add(self, record: JobRecord) -> Deferred[Added]:
        """
        See L{Journal.add}.
        """
        return self.addMany((record,)).addCallback(lambda added: added[0])

    def addMany(self, records: Sequence[JobRecord]) -> Deferred[list[Added]]:
        """
        See L{Journal.addMany}: one write of the next group commit, in
        which the jobs without a key are inserted with one C{executemany}
        (each run of them between two jobs with a key).
        """
        records = list(records)

        def insert(db: sqlite3.Connection) -> list[Added]:
            added: list[Added] = []
            plain: list[JobRecord] = []
            for record in records:
                if record.key is None:
                    plain.append(record)
                    continue
                if plain:
                    added.extend(self._insert(db, plain))
                    plain = []
                row = db.execute("SELECT id FROM jobs WHERE key = ?", (record.key,)).fetchone()
                if row is not None:
                    added.append(Added(row[0], True))
                else:
                    added.extend(self._insert(db, [record]))
            if plain:
                added.extend(self._insert(db, plain))
            return added

        return self._write(insert)

    def _insert(self, db: sqlite3.Connection, records: list[JobRecord]) -> list[Added]:
        db.executemany(INSERT, [rowOf(record) for record in records])
        self._rows += len(records)
        return [Added(record.id, False) for record in records]

    def update(self, record: JobRecord) -> Deferred[None]:
        """
        See L{Journal.update}.
        """
        row = changesOf(record)

        def change(db: sqlite3.Connection) -> None:
            db.execute(UPDATE, row)

        return self._write(change)

    def updateMany(self, records: Sequence[JobRecord]) -> Deferred[None]:
        """
        See L{Journal.updateMany}: one C{executemany}, one write of the
        next group commit.
        """
        rows = [changesOf(record) for record in records]

        def change(db: sqlite3.Connection) -> None:
            db.executemany(UPDATE, rows)

        return self._write(change)

    def get(self, jobId: str) -> Deferred[JobRecord | None]:
        """
        See L{Journal.get}.
        """
        d = self._run(self._read, f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (jobId,))
        return d.addCallback(lambda rows: _record(rows[0]) if rows else None)

    def prune(self, endedBefore: float, limit: int) -> Deferred[int]:
        """
        See L{Journal.prune}.
        """

        def delete(db: sqlite3.Connection) -> int:
            removed: int = db.execute(
                "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs "
                "WHERE finished IS NOT NULL AND finished < ? ORDER BY finished LIMIT ?)",
                (endedBefore, limit),
            ).rowcount
            self._rows -= removed
            return removed

        return self._write(delete)

    def size(self) -> Deferred[int]:
        """
        @return: how many jobs the journal holds.
        """
        return self._run(self._read, "SELECT count(*) FROM jobs", ()).addCallback(
            lambda rows: rows[0][0]
        )

    def close(self) -> Deferred[None]:
        """
        See L{Journal.close}.
        """
        if self._closing is not None:
            return self._closing
        self._closing = Deferred()
        closing = self._closing
        if self._flushCall is not None:
            self._flushCall.cancel()
            self._flush()
        elif not self._committing:
            self._finishClosing()
        return closing

    def _finishClosing(self) -> None:
        assert self._closing is not None
        closing = self._closing
        if self._db is None:
            self._stopThread()
            self.answers.tellAll()
            closing.callback(None)
            return
        d = self._run(self._closeDatabase)
        d.addErrback(lambda f: self.log.failure("closing the journal failed", f))
        d.addBoth(lambda _: self._stopThread())
        d.addBoth(lambda _: self.answers.tellAll())
        d.addBoth(lambda _: closing.callback(None))

    def _closeDatabase(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _stopThread(self) -> None:
        pool, self._threadPool = self._threadPool, None
        if pool is not None:
            pool.stop()


__all__ = [
    "Added", "CANCELLED", "DEFAULT_JOURNAL", "DONE", "EXPIRED", "FAILED", "FINAL_STATES",
    "IN_MEMORY", "INTERRUPTED", "Journal", "JobRecord", "JournalError", "MIGRATIONS", "QUEUED",
    "RUNNING", "SCHEDULED", "SQLiteJournal", "UNFINISHED_STATES", "describeJob", "jobError",
]
