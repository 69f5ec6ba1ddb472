# -*- test-case-name: tests.test_server -*-
"""
How much of a failed task's traceback a client gets (C{--tracebacks}).

A worker sends the whole traceback of a task that raised (or of task
modules that would not import).  The daemon passes it on as it is
(C{full}), cut to the innermost frame and the exception without any
directory (C{short}: paths, library versions and the caller's source are
not for every client to see), or not at all (C{none}).

This room holds the modes and the shortening and nothing else, so that
the daemon's options (L{taskd.tap}), its connections' factory
(L{taskd.server.TaskServerFactory}) and anyone else agree on one list; it
imports only L{taskd.errors}.
"""

from __future__ import annotations

import copy

import re

from taskd import errors

#: What C{--tracebacks} may say: how much of a failed task's traceback
#: clients get.
TRACEBACK_MODES = ("full", "short", "none")

_FILE_PATH = re.compile(r'(File ")([^"]*)(")')


def shortTraceback(text: str) -> str:
    """
    Shorten a Python traceback to what a remote caller needs: its header,
    the innermost frame (its C{File} line and source lines) and the
    exception, with every path cut to its file name.  Earlier frames and
    chained exceptions are left out.  A text that does not look like a
    traceback keeps its lines, paths cut the same way.

    @param text: a traceback as C{traceback.format_exc} writes it.
    @return: the shortened traceback, ending with a newline unless empty.
    """

    def base(m: re.Match[str]) -> str:
        return m.group(1) + m.group(2).replace("\\", "/").rsplit("/", 1)[-1] + m.group(3)

    lines = text.rstrip("\n").split("\n")
    headers = [i for i, line in enumerate(lines) if line.startswith("Traceback (")]
    if headers:
        header = headers[-1]
        body = lines[header + 1 :]
        # Frames are indented; the exception starts at the first line that
        # is not.
        end = next((i for i, line in enumerate(body) if line[:1] not in ("", " ")), len(body))
        frames, exception = body[:end], body[end:]
        files = [i for i, line in enumerate(frames) if line.lstrip().startswith('File "')]
        lines = [lines[header], *frames[files[-1] if files else end :], *exception]
    shortened = _FILE_PATH.sub(base, "\n".join(lines))
    return shortened + "\n" if shortened else ""


def presentError(error: errors.TaskdError, mode: str) -> errors.TaskdError:
    """
    @param mode: one of L{TRACEBACK_MODES}.
    @return: C{error} as clients get it: a L{errors.TaskFailed} or
        L{errors.WorkerStartError} with its traceback shortened (see
        L{shortTraceback}) or left out if C{mode} says so; any other error,
        or any error in C{full} mode, as it is.
    """
    if mode == "full":
        return error
    if isinstance(error, (errors.TaskFailed, errors.WorkerStartError)):
        traceback = error.remoteTraceback
        shown = None if mode == "none" or traceback is None else shortTraceback(traceback)
        presented = copy.copy(error)
        presented.remoteTraceback = shown
        return presented
    return error
