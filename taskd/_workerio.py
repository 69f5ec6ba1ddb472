# -*- test-case-name: tests.test_workerloop -*-
"""
How a worker's loop (L{taskd.worker.serve}) writes its reply frames.

Imported by every worker process: nothing from Twisted.
"""

from __future__ import annotations

import os
from typing import IO, Callable


def frameWriters(out: IO[bytes]) -> tuple[Callable[[bytes], None], Callable[[bytes, bytes], None]]:
    """
    @return: a function writing a whole frame to C{out} at once, and one
        writing a frame given in two parts (its length prefix, the rest) at
        once: straight to C{out}'s file descriptor, if it has one (one
        system call, no copy into a buffer; for two parts one C{writev},
        without joining them first), or by C{write} and C{flush}.
    """
    try:
        fd = out.fileno()
        out.flush()
    except (AttributeError, OSError, ValueError):

        def writeAndFlush(data: bytes) -> None:
            out.write(data)
            out.flush()

        return writeAndFlush, lambda head, rest: writeAndFlush(head + rest)

    def writeAll(data: bytes) -> None:
        written = os.write(fd, data)
        if written < len(data):
            view = memoryview(data)
            while written < len(data):
                written += os.write(fd, view[written:])

    def writeBoth(head: bytes, rest: bytes) -> None:
        written = os.writev(fd, (head, rest))
        if written < len(head) + len(rest):
            # Cut short (by a signal): the rest of both, joined.
            writeAll((head + rest)[written:])

    return writeAll, writeBoth
