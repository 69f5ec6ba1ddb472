# -*- test-case-name: tests.test_cli -*-
"""
The command line of C{python -m taskd}: its commands and options, each
value checked as it is parsed, and bad usage reported as one line naming
the option and the value (exit status 2).

It only parses: what a command does with its options is in
L{taskd.cli.calling} and L{taskd.cli.inspecting}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Callable, NoReturn

import taskd
from taskd.cli.console import EXIT_USAGE, write
from taskd.coercers import positiveInt, positiveSeconds, seconds

#: C{--connect}'s default, unless C{$TASKD_CONNECT} is set.
DEFAULT_CONNECT = "tcp:127.0.0.1:12345"


class _Parser(argparse.ArgumentParser):
    """
    Reports bad usage as one line, naming the option and the value,
    without the usage text (C{--help} shows it), and exits with status 2.
    """

    def error(self, message: str) -> NoReturn:
        m = re.match(r"argument ([^:]+): (.*)", message, re.DOTALL)
        if m:
            names = m.group(1).split("/")
            name = next((n for n in names if n.startswith("--")), names[0])
            message = f"{name.upper() if not name.startswith('-') else name} {m.group(2)}"
        write(sys.stderr, f"taskd: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: not JSON: {e}")


def _forArgparse(coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    """
    One of L{taskd.coercers}' checks, its error worded for argparse (which
    names the option): C{'0': must be a whole number of at least 1}.
    """

    def coerced(text: str) -> Any:
        try:
            return coerce(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None

    return coerced


_positive = _forArgparse(positiveInt)
#: A whole number above 0, as an argument (C{'0': must be ...}).
positiveArgument = _positive
_seconds = _forArgparse(positiveSeconds)
_waitSeconds = _forArgparse(seconds)


def parser() -> argparse.ArgumentParser:
    """
    The parser of C{python -m taskd}'s arguments: C{options.command} is
    C{"call"}, C{"map"}, C{"hello"}, C{"stats"} or C{"tasks"}, and each
    command's options are checked values (C{args} decoded from JSON,
    C{timeout} and C{wait} in seconds).
    """
    common = _Parser(add_help=False)
    common.add_argument(
        "--connect",
        "-c",
        default=os.environ.get("TASKD_CONNECT", DEFAULT_CONNECT),
        help="the daemon's client endpoint [default: $TASKD_CONNECT or %(default)s]",
    )
    common.add_argument(
        "--wait",
        type=_waitSeconds,
        default=0.0,
        metavar="SECONDS",
        help="if the daemon is not listening yet, keep trying for up to SECONDS [default: 0]",
    )
    common.add_argument(
        "--token-file",
        default=None,
        help="a file holding the daemon's auth token [default: $TASKD_TOKEN, if set]",
    )
    calling = _Parser(add_help=False)
    calling.add_argument(
        "--timeout", "-t", type=_seconds, default=None, help="seconds each call may run"
    )
    asking = _Parser(add_help=False)
    asking.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    top = _Parser(
        prog="python -m taskd",
        description="Call tasks on a taskd daemon, and ask it what it is, how it is doing and what it serves.",
    )
    top.add_argument("--version", action="version", version=f"taskd {taskd.version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    call = commands.add_parser(
        "call",
        parents=[common, calling],
        help="run one call and print its result as JSON",
        description="Run one call and print its result as JSON. "
        "Errors go to stderr; the exit status is then non-zero. "
        "Ctrl-C cancels the call on the daemon.",
    )
    call.add_argument("function", help="the task's name")
    call.add_argument(
        "args",
        nargs="?",
        type=_json,
        default=[],
        help="arguments as JSON: an array (positional) or an object (keyword)",
    )
    call.add_argument(
        "--progress",
        "-p",
        action="store_true",
        help="print the task's progress reports on stderr as they come",
    )
    map_ = commands.add_parser(
        "map",
        parents=[common, calling],
        help="run one call per line of JSON arguments",
        description="Run one call per non-blank line of FILE (or stdin): an "
        "array is positional arguments, an object keyword arguments, any "
        "other value one argument. Writes one JSON line per input line, in "
        'input order: the result, or {"error": {...}}. Progress goes to '
        "stderr. Ctrl-C cancels the calls in flight and sends no more.",
    )
    map_.add_argument("function", help="the task's name")
    map_.add_argument("file", help="a file of JSON lines, or - for stdin")
    map_.add_argument(
        "--concurrency", "-n", type=_positive, default=10, help="calls in flight [default: %(default)s]"
    )
    # -- background jobs (taskd.cli.jobs) --
    submit = commands.add_parser(
        "submit",
        parents=[common, calling],
        help="queue a background job and print its id",
        description="Queue a background job (see docs/jobs.md) and print its id once the "
        "daemon has it on disk. Ask about it with 'job ID', wait for it with 'wait ID'.",
    )
    submit.add_argument("function", help="the task's name")
    submit.add_argument(
        "args", nargs="?", type=_json, default=[],
        help="arguments as JSON: an array (positional) or an object (keyword)",
    )
    when = submit.add_mutually_exclusive_group()
    when.add_argument("--delay", type=_waitSeconds, default=None, metavar="SECONDS", help="start it no sooner than SECONDS from now")
    when.add_argument("--at", type=_waitSeconds, default=None, metavar="TIME", help="start it no sooner than TIME (seconds since the epoch)")
    submit.add_argument("--key", default=None, help="an idempotency key: if a job with this key is known, print its id and queue nothing")
    job = commands.add_parser(
        "job",
        parents=[common],
        help="print a background job's state as JSON",
        description="Print a background job's state, timestamps and, once it has ended, its result or error, as JSON.",
    )
    job.add_argument("job", help="the job's id")
    wait = commands.add_parser(
        "wait",
        parents=[common],
        help="wait for a background job and print its result as JSON",
        description="Wait for a background job to end; print its result as JSON, or its error "
        "on stderr (exit status 1). Ctrl-C stops waiting; the job goes on.",
    )
    wait.add_argument("job", help="the job's id")
    wait.add_argument("--progress", "-p", action="store_true", help="print its progress reports on stderr as they come")
    commands.add_parser(
        "hello",
        parents=[common, asking],
        help="what the daemon is: its version, protocol, tasks and limits",
        description="Show what the daemon is: its version, protocol version, task names and limits.",
    )
    commands.add_parser(
        "stats",
        parents=[common, asking],
        help="the daemon's counters: workers, idle, busy, queued, connections",
        description="Show the daemon's counters (see docs/protocol.md, Stats).",
    )
    commands.add_parser(
        "tasks",
        parents=[common, asking],
        help="the tasks the daemon serves, with signatures and docstrings",
        description="List the tasks the daemon serves, each with its signature and the first line of its docstring.",
    )
    from taskd.cli.administering import addAdminCommands

    addAdminCommands(commands, common)
    return top
