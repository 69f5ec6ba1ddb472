# -*- test-case-name: tests.test_cli.ProgressTests -*-
"""
C{map}'s progress on stderr: a bar with rate and ETA on a terminal, a
plain count every few seconds otherwise.

Only text on a stream and a clock: it imports nothing of taskd.
"""

from __future__ import annotations

import time
from typing import IO, Any


class Progress:
    """
    Progress on stderr: a bar with rate and ETA on a terminal, a plain
    count every few seconds otherwise.

    @ivar done: the calls finished so far, failed ones included.
    @ivar failed: how many of them failed.
    """

    def __init__(self, total: int, stream: IO[str], clock: Any = time.monotonic) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self._clock = clock
        self._start = self._last = clock()
        self.done = 0
        self.failed = 0

    def update(self, final: bool = False) -> None:
        """
        Show L{done} and L{failed}, unless shown less than 0.1 s (terminal)
        or 2 s (otherwise) ago; the C{final} update always shows.
        """
        now = self._clock()
        if not final and now - self._last < (0.1 if self.tty else 2.0):
            return
        self._last = now
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        if self.tty:
            width = 30
            filled = int(width * self.done / self.total) if self.total else width
            eta = (self.total - self.done) / rate if rate else 0.0
            line = (
                f"\r[{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total} "
                f"{100 * self.done // max(self.total, 1):3d}%  {rate:7.1f}/s  "
                f"ETA {int(eta) // 60}:{int(eta) % 60:02d}  failed {self.failed}"
            )
            self.stream.write(line + ("\n" if final else ""))
        elif final or self.done:
            self.stream.write(f"{self.done}/{self.total} done, {self.failed} failed, {rate:.1f}/s\n")
        self.stream.flush()
