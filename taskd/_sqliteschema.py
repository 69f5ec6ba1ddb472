# -*- test-case-name: tests.test_journal -*-
"""
The SQLite journal's schema and statements (L{taskd.journal.SQLiteJournal}):
its migrations, its columns, and a job's values for its writes.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from taskd.journal import JobRecord


def createV1(db: sqlite3.Connection) -> None:
    """
    Schema version 1: the C{jobs} table and its indexes.
    """
    db.execute(
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            key TEXT UNIQUE,
            function TEXT NOT NULL,
            payload BLOB NOT NULL,
            state TEXT NOT NULL,
            submitted REAL NOT NULL,
            runAt REAL NOT NULL,
            timeout REAL,
            priority INTEGER,
            deadline REAL,
            started REAL,
            finished REAL,
            result BLOB,
            error BLOB
        )
        """
    )
    db.execute("CREATE INDEX jobs_ended ON jobs (finished) WHERE finished IS NOT NULL")
    db.execute("CREATE INDEX jobs_open ON jobs (seq) WHERE finished IS NULL")


#: The schema's migrations: the function at index I takes a journal from
#: schema version I to I + 1 (version 0 is a new, empty file).
MIGRATIONS: Sequence[Callable[[sqlite3.Connection], None]] = (createV1,)

#: The columns of a job, in the order of L{taskd.journal.JobRecord}'s fields.
COLUMNS = (
    "id, function, payload, state, submitted, runAt, key, timeout, priority, "
    "deadline, started, finished, result, error"
)

#: Adds a job (L{rowOf}).
INSERT = f"INSERT INTO jobs ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: Changes a job's state, times, result and error (L{changesOf}).
UPDATE = "UPDATE jobs SET state = ?, started = ?, finished = ?, result = ?, error = ? WHERE id = ?"


def rowOf(record: JobRecord) -> tuple[Any, ...]:
    """
    @return: C{record}'s values for L{INSERT}.
    """
    return (
        record.id, record.function, record.payload, record.state,
        record.submitted, record.runAt, record.key, record.timeout,
        record.priority, record.deadline, record.started, record.finished,
        record.result, record.error,
    )


def changesOf(record: JobRecord) -> tuple[Any, ...]:
    """
    @return: C{record}'s values for L{UPDATE}.
    """
    return (record.state, record.started, record.finished, record.result, record.error, record.id)


__all__ = ["COLUMNS", "INSERT", "MIGRATIONS", "UPDATE", "changesOf", "createV1", "rowOf"]
