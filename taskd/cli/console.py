# -*- test-case-name: tests.test_cli -*-
"""
What C{python -m taskd} tells the shell: its exit statuses, the two
problems that end a command with a one-line message on stderr, and
writing to stdout or stderr in a way that cannot raise.

The lowest room of L{taskd.cli}: it imports none of the others.
"""

from __future__ import annotations

from typing import IO

#: A call failed (for C{map}: at least one did).
EXIT_FAILED = 1
#: Bad usage or input (L{UsageProblem}).
EXIT_USAGE = 2
#: The daemon cannot be reached or refused us (L{Unreachable}).
EXIT_UNREACHABLE = 3


class UsageProblem(Exception):
    """
    Bad usage or input: printed as C{taskd: message}, exit status 2.
    """


class Unreachable(Exception):
    """
    The daemon cannot be reached or refused us: printed as C{taskd:
    message}, exit status 3.
    """


def write(stream: IO[str], text: str) -> None:
    """
    Write C{text} to C{stream} and flush it, ignoring a stream that is
    closed or broken (C{OSError}, C{ValueError}): safe in a signal handler
    and on the way out.
    """
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass
