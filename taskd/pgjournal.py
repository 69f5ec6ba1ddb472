# -*- test-case-name: tests.test_pgjournal -*-
"""
A jobs' journal in PostgreSQL, shared by any number of daemons.

L{PostgreSQLJournal} is a L{taskd.journal.Journal} (the same records, the
same semantics as L{taskd.journal.SQLiteJournal}) plus what sharing needs,
used by L{taskd.sharedjobs.SharedJobService}:

 - L{PostgreSQLJournal.claim}: take up to N jobs that may start, marking
   them running, owned by this daemon, with a lease (C{FOR UPDATE SKIP
   LOCKED}: daemons never wait for each other's claims, and never claim
   the same job);
 - L{PostgreSQLJournal.renew}: extend the leases of the jobs this daemon
   runs (and learn which of them another daemon was asked to cancel);
 - L{PostgreSQLJournal.reap}: end or requeue the running jobs whose lease
   expired (their daemon died);
 - L{PostgreSQLJournal.cancel}, L{PostgreSQLJournal.ended}: cancel any
   job, and find which of some jobs ended;
 - wake-ups: C{LISTEN/NOTIFY} on the channel L{CHANNEL}, delivered to
   L{PostgreSQLJournal.notified} on the reactor thread.

Every statement runs with psycopg 3 on one thread of the journal's own
(and C{LISTEN} on a second one): the reactor never waits for the database.
Writes are committed in groups, as in the SQLite journal.  If the server
goes away, the journal reconnects with a backoff (0.1 s doubling up to
L{taskd._pgconnection.MAX_BACKOFF}); meanwhile submits and reads fail with
L{taskd.errors.JournalUnavailable}, and a job's state changes
(L{PostgreSQLJournal.update}) wait and are written once it is back:
nothing that was acknowledged is lost.  An add whose connection is lost
during its C{COMMIT} waits too, and runs again (finding the job its first
run may have committed): a refused add leaves no job behind.

The schema's version is in the table C{taskd_schema}; opening runs the
L{PG_MIGRATIONS} from it up, under an advisory lock (daemons starting
together migrate once).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from taskd import _json, errors
from taskd._pgconnection import MAX_BACKOFF, PostgreSQLConnection
from taskd.journal import (
    CANCELLED,
    FINAL_STATES,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SCHEDULED,
    Added,
    JobRecord,
    JournalError,
)

#: The C{NOTIFY} channel: payloads are C{new} (a job may start),
#: C{end:ID} (a job ended) and C{cancel:ID} (cancel a running job).
CHANNEL = "taskd_jobs"
#: Seconds a claimed job's lease lasts, by default (renewed every third).
DEFAULT_LEASE = 30.0
#: Seconds between two polls for work, by default (the fallback of
#: C{NOTIFY}, and the timer of delayed jobs).
DEFAULT_POLL = 1.0


def _createV1(db: Any) -> None:
    db.execute(
        """
        CREATE TABLE taskd_jobs (
            seq bigserial PRIMARY KEY,
            id text NOT NULL UNIQUE,
            key text UNIQUE,
            function text NOT NULL,
            payload bytea NOT NULL,
            state text NOT NULL,
            submitted double precision NOT NULL,
            run_at double precision NOT NULL,
            timeout double precision,
            priority integer,
            deadline double precision,
            started double precision,
            finished double precision,
            result bytea,
            error bytea,
            owner text,
            lease_until timestamptz,
            cancel_requested boolean NOT NULL DEFAULT false
        )
        """
    )
    db.execute(
        "CREATE INDEX taskd_jobs_due ON taskd_jobs (run_at, seq) "
        "WHERE state IN ('queued', 'scheduled')"
    )
    db.execute("CREATE INDEX taskd_jobs_leases ON taskd_jobs (lease_until) WHERE state = 'running'")
    db.execute("CREATE INDEX taskd_jobs_owner ON taskd_jobs (owner) WHERE state = 'running'")
    db.execute("CREATE INDEX taskd_jobs_ended ON taskd_jobs (finished) WHERE finished IS NOT NULL")


#: The schema's migrations: the function at index I takes the database
#: from schema version I to I + 1 (version 0: no taskd tables).
PG_MIGRATIONS: Sequence[Callable[[Any], None]] = (_createV1,)

_COLUMNS = (
    "id, function, payload, state, submitted, run_at, key, timeout, priority, "
    "deadline, started, finished, result, error"
)

def _record(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        row[0], row[1], bytes(row[2]), row[3], row[4], row[5], row[6], row[7], row[8],
        row[9], row[10], row[11],
        None if row[12] is None else bytes(row[12]),
        None if row[13] is None else bytes(row[13]),
    )


def redact(dsn: str) -> str:
    """
    @return: a connection string with its password, if any, hidden.
    """
    import re

    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password=)[^&\s]*", r"\1***", dsn)


class PostgreSQLJournal(PostgreSQLConnection):
    """
    A L{taskd.journal.Journal} in a PostgreSQL database, shared by any
    number of daemons (see the module's docstring).

    @ivar owner: this daemon's name in the C{owner} column of the jobs it
        runs (unique per process).
    @ivar lease: seconds a claim lasts unless renewed.
    @ivar maxJobs: the most jobs kept, or C{None}.
    """

    def __init__(
        self,
        dsn: str,
        reactor: Any,
        *,
        maxJobs: int | None = None,
        lease: float = DEFAULT_LEASE,
        owner: str | None = None,
        migrations: Sequence[Callable[[Any], None]] = PG_MIGRATIONS,
        listen: bool = True,
        pollInterval: float = DEFAULT_POLL,
    ) -> None:
        """
        @param dsn: a libpq connection string (C{postgresql://...}).
        @param reactor: the reactor (a clock taking calls from threads).
        @param maxJobs: the most jobs kept; past it, the jobs that ended
            first are removed as new ones are added.
        @param owner: this daemon's name (a new random one by default).
        @param migrations: the schema's migrations (L{PG_MIGRATIONS}).
        @param listen: whether to C{LISTEN} for notifications.
        @param pollInterval: the daemons' poll interval.
        """
        # Back within a quarter of a lease after an outage: a daemon renews
        # its leases (every third) before any other may reap them (a lease
        # after it reconnects).
        super().__init__(
            dsn, reactor, CHANNEL, listen=listen, pollInterval=pollInterval,
            maxBackoff=min(MAX_BACKOFF, lease / 4),
        )
        self.maxJobs = maxJobs
        self.lease = lease
        self.owner = owner or uuid.uuid4().hex[:16]
        self._migrations = migrations

    def _afterWrites(self, db: Any) -> None:
        if self.maxJobs is None:
            return
        rows = db.execute("SELECT count(*) FROM taskd_jobs").fetchone()[0]
        if rows > self.maxJobs:
            db.execute(
                "DELETE FROM taskd_jobs WHERE seq IN (SELECT seq FROM taskd_jobs "
                "WHERE finished IS NOT NULL ORDER BY finished LIMIT %s "
                "FOR UPDATE SKIP LOCKED)",
                (rows - self.maxJobs,),
            )

    # -- Journal -----------------------------------------------------------------

    def open(self) -> Deferred[list[JobRecord]]:
        """
        Connect, create or migrate the schema, and start listening (the
        C{Deferred} fires once C{LISTEN} is in place, or after 10 s).

        @return: a C{Deferred} firing with an empty list (the jobs of a
            shared journal are claimed, not picked up: see
            L{PostgreSQLJournal.claim}), or failing with L{JournalError}.
        """
        self._startThread()
        d = self._run(self._open)

        def failed(failure: Failure) -> Failure:
            self._stopThread()
            if failure.check(JournalError):
                return failure
            return Failure(JournalError(
                f"cannot open the journal {redact(self.dsn)!r}: {failure.value}"
            ))

        def opened(_: object) -> Deferred[list[JobRecord]] | list[JobRecord]:
            self._isOpen = True
            if not self._listen:
                return []
            # Open once listening (or after 10 s: the poll covers for it).
            return self._startListening().addCallback(lambda _: [])

        return d.addCallbacks(opened, failed)

    def _open(self) -> None:
        db = self._connection()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(hashtext('taskd_journal'))")
            db.execute("CREATE TABLE IF NOT EXISTS taskd_schema (version integer NOT NULL)")
            row = db.execute("SELECT version FROM taskd_schema").fetchone()
            if row is None:
                db.execute("INSERT INTO taskd_schema VALUES (0)")
            version = 0 if row is None else row[0]
            latest = len(self._migrations)
            if version > latest:
                raise JournalError(
                    f"the journal {redact(self.dsn)!r} has schema version {version}, written by "
                    f"a newer taskd; this one reads versions up to {latest}"
                )
            for step in range(version, latest):
                self._migrations[step](db)
                db.execute("UPDATE taskd_schema SET version = %s", (step + 1,))
                self.log.info("journal: schema version {version}", version=step + 1)

    def schemaVersion(self) -> Deferred[int]:
        """
        @return: the database's schema version.
        """
        return self._read(lambda db: db.execute("SELECT version FROM taskd_schema").fetchone()[0])

    def add(self, record: JobRecord) -> Deferred[Added]:
        """
        See L{taskd.journal.Journal.add}; wakes the daemons up (C{NOTIFY}).
        Fails with L{errors.JournalUnavailable} while the server cannot be
        reached.
        """
        return self.addMany((record,)).addCallback(lambda added: added[0])

    def addMany(self, records: Sequence[JobRecord]) -> Deferred[list[Added]]:
        """
        See L{taskd.journal.Journal.addMany}: one write, one C{NOTIFY}.
        """
        records = list(records)

        def insert(db: Any) -> list[Added]:
            added = [self._insert(db, record) for record in records]
            if any(record.state == QUEUED and not a.existing for record, a in zip(records, added)):
                db.execute("SELECT pg_notify(%s, 'new')", (CHANNEL,))
            return added

        # Run again if the connection is lost during its commit: a job the
        # first run added is found by its id (and its caller told it was
        # accepted), so a submit refused leaves no job behind.
        return self._write(insert, again=True)

    def _insert(self, db: Any, record: JobRecord) -> Added:
        row = db.execute(
            f"INSERT INTO taskd_jobs ({_COLUMNS}) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING id",
            (
                record.id, record.function, record.payload, record.state,
                record.submitted, record.runAt, record.key, record.timeout,
                record.priority, record.deadline, record.started, record.finished,
                record.result, record.error,
            ),
        ).fetchone()
        if row is None:
            mine = db.execute(
                "SELECT 1 FROM taskd_jobs WHERE id = %s AND function = %s AND submitted = %s",
                (record.id, record.function, record.submitted),
            ).fetchone()
            if mine is not None:
                # Added by this write's first run, committed as the
                # connection was lost.
                return Added(record.id, False)
            held = db.execute("SELECT id FROM taskd_jobs WHERE key = %s", (record.key,)).fetchone()
            if held is None:
                raise JournalError(f"the job id {record.id!r} is taken by another job")
            return Added(held[0], True)
        return Added(record.id, False)

    def update(self, record: JobRecord) -> Deferred[None]:
        """
        See L{taskd.journal.Journal.update}.  A job that ended is not
        changed again, and one owned by another daemon is not changed (its
        lease had expired: the other daemon answers for it now).  A job
        back in the queue is released (any daemon may claim it).  Kept and
        tried again while the server cannot be reached.
        """
        return self.updateMany((record,))

    def updateMany(self, records: Sequence[JobRecord]) -> Deferred[None]:
        """
        See L{taskd.journal.Journal.updateMany}: one write, each job as
        L{update} changes it.
        """
        records = list(records)

        def change(db: Any) -> None:
            for record in records:
                self._change(db, record)

        return self._write(change, durable=True)

    def _change(self, db: Any, record: JobRecord) -> None:
        released = record.state != RUNNING
        changed = db.execute(
            "UPDATE taskd_jobs SET state = %s, started = %s, finished = %s, result = %s, "
            "error = %s, owner = CASE WHEN %s THEN NULL ELSE owner END, "
            "lease_until = CASE WHEN %s THEN NULL ELSE lease_until END "
            "WHERE id = %s AND finished IS NULL AND (owner IS NULL OR owner = %s)",
            (record.state, record.started, record.finished, record.result, record.error,
             released, released, record.id, self.owner),
        ).rowcount
        if not changed:
            self.log.warn(
                "journal: job {id} was not changed to {state}: it ended, or another "
                "daemon took it over after its lease expired", id=record.id, state=record.state,
            )
        elif record.state in FINAL_STATES:
            db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "end:" + record.id))
        elif record.state == QUEUED:
            db.execute("SELECT pg_notify(%s, 'new')", (CHANNEL,))

    def get(self, jobId: str) -> Deferred[JobRecord | None]:
        """
        See L{taskd.journal.Journal.get}.
        """

        def select(db: Any) -> JobRecord | None:
            row = db.execute(f"SELECT {_COLUMNS} FROM taskd_jobs WHERE id = %s", (jobId,)).fetchone()
            return None if row is None else _record(row)

        return self._read(select)

    def prune(self, endedBefore: float, limit: int) -> Deferred[int]:
        """
        See L{taskd.journal.Journal.prune}.
        """

        def delete(db: Any) -> int:
            removed: int = db.execute(
                "DELETE FROM taskd_jobs WHERE seq IN (SELECT seq FROM taskd_jobs "
                "WHERE finished IS NOT NULL AND finished < %s ORDER BY finished LIMIT %s "
                "FOR UPDATE SKIP LOCKED)",
                (endedBefore, limit),
            ).rowcount
            return removed

        return self._write(delete)

    def size(self) -> Deferred[int]:
        """
        @return: how many jobs the journal holds.
        """
        return self._read(lambda db: db.execute("SELECT count(*) FROM taskd_jobs").fetchone()[0])

    # -- sharing -----------------------------------------------------------------

    def claim(self, limit: int, now: float) -> Deferred[list[JobRecord]]:
        """
        Take up to C{limit} jobs whose time has come (oldest first), and
        mark them running, owned by this daemon, with a lease of
        L{lease} seconds.

        @return: a C{Deferred} firing with the claimed jobs once durable.
        """

        def take(db: Any) -> list[JobRecord]:
            rows = db.execute(
                "WITH due AS (SELECT seq FROM taskd_jobs WHERE state IN ('queued', 'scheduled') "
                "AND run_at <= %s ORDER BY run_at, seq LIMIT %s FOR UPDATE SKIP LOCKED) "
                "UPDATE taskd_jobs j SET state = 'running', started = %s, owner = %s, "
                "lease_until = clock_timestamp() + %s * interval '1 second' "
                f"FROM due WHERE j.seq = due.seq RETURNING j.seq, {_COLUMNS.replace('id,', 'j.id,', 1)}",
                (now, limit, now, self.owner, self.lease),
            ).fetchall()
            rows.sort(key=lambda row: row[0])
            return [_record(row[1:]) for row in rows]

        return self._write(take)

    def renew(self) -> Deferred[list[tuple[str, bool]]]:
        """
        Extend the leases of the jobs this daemon runs.

        @return: a C{Deferred} firing with (id, whether a cancel was asked
            for) of each job this daemon holds.
        """

        def extend(db: Any) -> list[tuple[str, bool]]:
            rows = db.execute(
                "UPDATE taskd_jobs SET lease_until = clock_timestamp() + %s * interval '1 second' "
                "WHERE owner = %s AND state = 'running' RETURNING id, cancel_requested",
                (self.lease, self.owner),
            ).fetchall()
            return [(row[0], row[1]) for row in rows]

        return self._write(extend)

    def reap(self, retries: Callable[[str], int], now: float, limit: int = 100) -> Deferred[tuple[int, int]]:
        """
        Requeue or end the running jobs whose lease expired (their daemon
        died or lost the database for longer than the lease): a job whose
        task opts into retries is queued again, any other ends
        L{INTERRUPTED}, as after a crash on one host.  A daemon reaps
        nothing in its first lease after (re)connecting: after an outage of
        the server, the others renew their leases first.

        @param retries: the retries of a task, by name.
        @return: a C{Deferred} firing with (requeued, interrupted).
        """
        interrupted = _json.encodeASCII(errors.JobInterrupted(
            "the daemon running the job died (its lease expired), so it may have run in "
            "part; its task does not opt into retries, so it was not run again"
        ).toDict())

        def expire(db: Any) -> tuple[int, int]:
            if time.monotonic() - self._connectedSince < self.lease:
                # Just (re)connected: the server may have been away, and
                # the other daemons need a lease's time to renew theirs.
                return 0, 0
            rows = db.execute(
                "SELECT id, function FROM taskd_jobs WHERE state = 'running' "
                "AND lease_until < clock_timestamp() ORDER BY lease_until LIMIT %s "
                "FOR UPDATE SKIP LOCKED",
                (limit,),
            ).fetchall()
            again = [jobId for jobId, function in rows if retries(function) > 0]
            ended = [jobId for jobId, function in rows if retries(function) <= 0]
            if again:
                db.execute(
                    "UPDATE taskd_jobs SET state = 'queued', started = NULL, owner = NULL, "
                    "lease_until = NULL WHERE id = ANY(%s)", (again,),
                )
                db.execute("SELECT pg_notify(%s, 'new')", (CHANNEL,))
            if ended:
                db.execute(
                    "UPDATE taskd_jobs SET state = %s, finished = %s, error = %s, owner = NULL, "
                    "lease_until = NULL WHERE id = ANY(%s)", (INTERRUPTED, now, interrupted, ended),
                )
                for jobId in ended:
                    db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "end:" + jobId))
            return len(again), len(ended)

        return self._write(expire)

    def cancel(self, jobId: str, now: float) -> Deferred[JobRecord | None]:
        """
        Cancel a job wherever it is: one not yet running ends
        L{CANCELLED} at once; for a running one, its daemon is asked to
        cancel it (C{NOTIFY cancel:ID}, and the flag its lease renewals
        read).

        @return: a C{Deferred} firing with the job's record after this, or
            C{None} if the journal does not hold it.
        """
        cancelled = _json.encodeASCII(errors.TaskCancelled("the job was cancelled").toDict())

        def change(db: Any) -> JobRecord | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM taskd_jobs WHERE id = %s FOR UPDATE", (jobId,)
            ).fetchone()
            if row is None:
                return None
            record = _record(row)
            if record.state in (QUEUED, SCHEDULED):
                db.execute(
                    "UPDATE taskd_jobs SET state = %s, finished = %s, error = %s WHERE id = %s",
                    (CANCELLED, now, cancelled, jobId),
                )
                db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "end:" + jobId))
                return _record(db.execute(
                    f"SELECT {_COLUMNS} FROM taskd_jobs WHERE id = %s", (jobId,)
                ).fetchone())
            if record.state == RUNNING:
                db.execute("UPDATE taskd_jobs SET cancel_requested = true WHERE id = %s", (jobId,))
                db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "cancel:" + jobId))
            return record

        return self._write(change)

    def ended(self, jobIds: list[str]) -> Deferred[list[JobRecord]]:
        """
        @return: the jobs among C{jobIds} that ended (those the journal no
            longer holds are left out: ask L{get}).
        """
        return self._read(lambda db: [_record(row) for row in db.execute(
            f"SELECT {_COLUMNS} FROM taskd_jobs WHERE id = ANY(%s) AND finished IS NOT NULL",
            (jobIds,),
        ).fetchall()])

    def release(self, jobIds: list[str]) -> Deferred[int]:
        """
        Put back in the queue jobs this daemon holds as running but never
        started (a claim whose answer was lost with the connection).

        @return: how many were released.
        """

        def put(db: Any) -> int:
            count: int = db.execute(
                "UPDATE taskd_jobs SET state = 'queued', started = NULL, owner = NULL, "
                "lease_until = NULL WHERE id = ANY(%s) AND owner = %s AND state = 'running'",
                (jobIds, self.owner),
            ).rowcount
            if count:
                db.execute("SELECT pg_notify(%s, 'new')", (CHANNEL,))
            return count

        return self._write(put, durable=True)


__all__ = [
    "CHANNEL",
    "DEFAULT_LEASE",
    "DEFAULT_POLL",
    "PG_MIGRATIONS",
    "PostgreSQLJournal",
    "redact",
]
