# -*- test-case-name: tests.test_pool_unit,tests.test_containment -*-
"""
What the parent knows of child processes in general, whoever they are:
their output, logged line by line; their process groups, signalled and
watched until empty; and how they ended, in words.
"""

from __future__ import annotations

import os
import signal

from twisted.internet.error import ProcessDone
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Longest line of a child's stdout/stderr logged as one event.
MAX_OUTPUT_LINE = 64 * 1024


class OutputLogger:
    """
    Log one stream of a worker's output line by line.
    """

    def __init__(self, log: Logger, pid: int | None, stream: str) -> None:
        self._log = log
        self._pid = pid
        self._stream = stream
        self._pending = b""

    def feed(self, data: bytes) -> None:
        """
        Log the lines C{data} completes.
        """
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        while len(self._pending) > MAX_OUTPUT_LINE:
            lines.append(self._pending[:MAX_OUTPUT_LINE])
            self._pending = self._pending[MAX_OUTPUT_LINE:]
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        """
        Log what is left, as a last line.
        """
        if self._pending:
            self._emit(self._pending)
            self._pending = b""

    def _emit(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        emit = self._log.warn if self._stream == "stderr" else self._log.info
        emit("worker {pid} {stream}: {line}", pid=self._pid, stream=self._stream, line=text)


class ProcessGroups:
    """
    Signals to process groups, and whether one has a live process left
    (C{killpg(pgid, 0)} also counts zombies that nobody has reaped yet,
    which in a container whose init is slow to reap can be for a while;
    where C{/proc} is there, those are not counted).  Test doubles provide
    the same two methods.
    """

    def signal(self, pgid: int, number: int) -> None:
        """
        Send signal C{number} to process group C{pgid}.

        @raise ProcessLookupError: if the group has no process.
        @raise PermissionError: if it is not ours to signal.
        """
        os.killpg(pgid, number)

    def alive(self, pgid: int) -> bool:
        """
        @return: whether process group C{pgid} has a process that is not a
            zombie.
        """
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        try:
            entries = os.listdir("/proc")
        except OSError:
            return True
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[2]) == pgid and fields[0] != b"Z":
                return True
        return False


def describeExit(reason: Failure) -> str:
    """
    @return: how a process ended, for error messages and logs.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    sig = getattr(value, "signal", None)
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', None)}"
