# -*- test-case-name: tests.test_web -*-
"""
C{--log-format json}: the daemon's log as JSON lines, for log shippers.

Each line is one event as C{twisted.logger.eventAsJSON} writes it: the
event's own fields (C{pid} of a worker, and for a failed call C{number},
C{task}, C{error}, C{duration}, C{peer}), and Twisted's C{log_namespace},
C{log_level}, C{log_time} and C{log_format} (the text, with the fields in
braces: C{twisted.logger.formatEvent} makes it a sentence again).
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import ILogObserver, jsonFileLogObserver

#: The values of C{--log-format}.
LOG_FORMATS = ("text", "json")


def logFormat(value: str) -> str:
    """
    Check a C{--log-format} value.

    @raise ValueError: if it is not one of L{LOG_FORMATS}.
    """
    if value not in LOG_FORMATS:
        raise ValueError("must be text or json")
    return value


def useJSONLog(logfile: str | None, daemon: bool) -> str:
    """
    Make L{twistdObserver} write JSON lines to C{logfile}.

    @param logfile: twistd's C{--logfile}: C{None} or C{"-"} for stdout.
    @param daemon: whether twistd runs as a daemon (without C{-n}): then
        its log goes to C{twistd.log} by default, as twistd's own does.
    @return: the name to give twistd as its C{--logger}.
    """
    _where[:] = [logfile, daemon]
    return f"{__name__}.twistdObserver"


_where: list[Any] = [None, False]


def twistdObserver() -> ILogObserver:
    """
    The log observer twistd uses with C{--log-format json} (see
    L{useJSONLog}): JSON lines to the log file.
    """
    logfile, daemon = _where
    out: IO[Any]
    if logfile == "-" or (not logfile and not daemon):
        out = sys.stdout
    else:
        out = open(logfile or "twistd.log", "a", encoding="utf-8")
    return jsonFileLogObserver(out, recordSeparator="")
