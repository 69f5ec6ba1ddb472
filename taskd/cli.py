# -*- test-case-name: tests.test_cli -*-
"""
C{python -m taskd}: call a daemon from a shell::

    python -m taskd call add '[1, 2]'
    python -m taskd map send_mail users.jsonl > results.jsonl

Exit status: 0 when every call succeeded, 1 when a call failed, 2 for bad
usage, 3 when the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import IO, Any, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.python.failure import Failure

from taskd import errors
from taskd.client import TaskClient, connect

DEFAULT_CONNECT = "tcp:127.0.0.1:12345"

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def _arguments(value: Any) -> tuple[list[Any], dict[str, Any]]:
    """
    Arguments as on the wire: an array is positional, an object keyword
    arguments, anything else one positional argument.
    """
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    return [value], {}


def _describe(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, errors.TaskFailed):
        return f"task_failed: {error.remoteType}: {error.message}"
    if isinstance(error, errors.TaskdError):
        return f"{error.type}: {error.message}"
    return f"{type(error).__name__}: {error}"


def _errorObject(failure: Failure) -> dict[str, Any]:
    error = failure.value
    if isinstance(error, errors.TaskdError):
        return error.toDict()
    return {"type": "error", "message": str(error)}


def _token(options: argparse.Namespace) -> str | None:
    if options.token_file is not None:
        with open(options.token_file, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get("TASKD_TOKEN") or None


async def _connect(reactor: Any, options: argparse.Namespace) -> TaskClient | None:
    endpoint = options.connect
    try:
        return await connect(reactor, endpoint, token=_token(options))
    except errors.Unauthenticated as e:
        print(f"taskd: {endpoint} refused the token: {e.message}", file=sys.stderr)
    except Exception as e:
        print(f"taskd: cannot connect to {endpoint}: {e}", file=sys.stderr)
    return None


async def callCommand(reactor: Any, options: argparse.Namespace) -> int:
    args, kwargs = _arguments(options.args)
    client = await _connect(reactor, options)
    if client is None:
        return EXIT_UNREACHABLE
    progress = None
    if options.progress:
        progress = lambda value: print(  # noqa: E731
            f"progress: {json.dumps(value)}", file=sys.stderr, flush=True
        )
    try:
        result = await client.callWith(
            options.function, args, kwargs, timeout=options.timeout, progress=progress
        )
    except Exception:
        failure = Failure()
        print(f"taskd: {_describe(failure)}", file=sys.stderr)
        if isinstance(failure.value, errors.TaskFailed):
            print(failure.value.remoteTraceback, file=sys.stderr, end="")
        return EXIT_FAILED
    finally:
        await client.close()
    print(json.dumps(result))
    return 0


class Progress:
    """
    Progress on stderr: a bar with rate and ETA on a terminal, a plain
    count every few seconds otherwise.
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


async def mapCommand(reactor: Any, options: argparse.Namespace) -> int:
    source = sys.stdin if options.file == "-" else open(options.file)
    with source:
        lines = [line for line in source.read().splitlines() if line.strip()]
    try:
        calls = [_arguments(json.loads(line)) for line in lines]
    except ValueError as e:
        print(f"taskd: input is not JSON lines: {e}", file=sys.stderr)
        return EXIT_USAGE
    client = await _connect(reactor, options)
    if client is None:
        return EXIT_UNREACHABLE
    progress = Progress(len(calls), sys.stderr)
    results: dict[int, str] = {}
    written = 0
    finished: Deferred[None] = Deferred()
    nextCall = 0
    running = 0

    def flush() -> None:
        nonlocal written
        while written in results:
            sys.stdout.write(results.pop(written) + "\n")
            written += 1
        sys.stdout.flush()

    def done(line: str, index: int, ok: bool) -> None:
        nonlocal running
        running -= 1
        results[index] = line
        progress.done += 1
        progress.failed += not ok
        flush()
        progress.update()
        start()

    def start() -> None:
        nonlocal nextCall, running
        while running < options.concurrency and nextCall < len(calls):
            index, (args, kwargs) = nextCall, calls[nextCall]
            nextCall += 1
            running += 1
            d = client.callWith(options.function, args, kwargs, timeout=options.timeout)
            d.addCallbacks(
                lambda result, i=index: done(json.dumps(result), i, True),
                lambda failure, i=index: done(
                    json.dumps({"error": _errorObject(failure)}), i, False
                ),
            )
        if running == 0 and not finished.called:
            finished.callback(None)

    start()
    await finished
    progress.update(final=True)
    await client.close()
    return EXIT_FAILED if progress.failed else 0


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}")


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--connect",
        "-c",
        default=os.environ.get("TASKD_CONNECT", DEFAULT_CONNECT),
        help="the daemon's client endpoint [default: $TASKD_CONNECT or %(default)s]",
    )
    common.add_argument(
        "--timeout", "-t", type=float, default=None, help="seconds each call may run"
    )
    common.add_argument(
        "--token-file",
        default=None,
        help="a file holding the daemon's auth token [default: $TASKD_TOKEN, if set]",
    )
    top = argparse.ArgumentParser(
        prog="python -m taskd", description="Call tasks on a taskd daemon."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    call = commands.add_parser(
        "call",
        parents=[common],
        help="run one call and print its result as JSON",
        description="Run one call and print its result as JSON. "
        "Errors go to stderr; the exit status is then non-zero.",
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
        parents=[common],
        help="run one call per line of JSON arguments",
        description="Run one call per non-blank line of FILE (or stdin): an "
        "array is positional arguments, an object keyword arguments, any "
        "other value one argument. Writes one JSON line per input line, in "
        'input order: the result, or {"error": {...}}. Progress goes to '
        "stderr.",
    )
    map_.add_argument("function", help="the task's name")
    map_.add_argument("file", help="a file of JSON lines, or - for stdin")
    map_.add_argument(
        "--concurrency", "-n", type=_positive, default=10, help="calls in flight [default: %(default)s]"
    )
    return top


def main(argv: Sequence[str] | None = None) -> None:
    options = parser().parse_args(argv)
    command = callCommand if options.command == "call" else mapCommand

    async def run(reactor: Any) -> None:
        status = await command(reactor, options)
        if status:
            raise SystemExit(status)

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
