# -*- test-case-name: tests.test_cli -*-
"""
The commands that run tasks: C{call} (one call, its result as JSON on
stdout, its error on stderr) and C{map} (one call per line of JSON
arguments, C{--concurrency} at a time, the results in input order), and
what each does when interrupted: cancel the calls in flight on the
daemon, send no more, and say what was done.

Connecting is L{taskd.cli.connecting}'s, the signals are
L{taskd.cli.interruption}'s and the progress display is
L{taskd.cli.progress}'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from taskd import errors
from taskd.cli.connecting import closeAfterCancel, connecting
from taskd.cli.console import EXIT_FAILED, UsageProblem, write
from taskd.cli.interruption import Interruption
from taskd.cli.progress import Progress
from taskd.client import TaskClient


def splitArguments(value: Any) -> tuple[list[Any], dict[str, Any]]:
    """
    Arguments as on the wire: an array is positional, an object keyword
    arguments, anything else one positional argument.
    """
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    return [value], {}


def describeFailure(failure: Failure) -> str:
    """
    @return: a failed call's error, in one line for people.
    """
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


async def callCommand(reactor: Any, options: argparse.Namespace, interruption: Interruption) -> int:
    """
    Run one call; print its result as JSON, or its error on stderr.

    @return: the exit status, or -1 if interrupted.
    """
    args, kwargs = splitArguments(options.args)
    try:
        protocol = await connecting(reactor, options, interruption)
    except CancelledError:
        write(sys.stderr, f"taskd: interrupted ({interruption.name}) before the call was sent\n")
        return -1
    interruption.onAbort(protocol.abortNow)
    client = TaskClient(protocol)
    progress = None
    if options.progress:
        progress = lambda value: print(  # noqa: E731
            f"progress: {json.dumps(value)}", file=sys.stderr, flush=True
        )
    d = client.callWith(options.function, args, kwargs, timeout=options.timeout, progress=progress)
    interruption.onInterrupt(d.cancel)
    try:
        result = await d
    except CancelledError:
        await closeAfterCancel(reactor, protocol)
        write(sys.stderr, f"taskd: interrupted ({interruption.name}): the call was cancelled on the daemon\n")
        return -1
    except Exception:
        failure = Failure()
        print(f"taskd: {describeFailure(failure)}", file=sys.stderr)
        if isinstance(failure.value, errors.TaskFailed):
            print(failure.value.remoteTraceback, file=sys.stderr, end="")
        await client.close()
        return EXIT_FAILED
    await client.close()
    print(json.dumps(result))
    return 0


def readCalls(source: IO[str], name: str) -> list[tuple[list[Any], dict[str, Any]]]:
    """
    Read C{map}'s input: one JSON value per non-blank line.

    @raise UsageProblem: naming the first line that is not JSON.
    """
    calls = []
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            calls.append(splitArguments(json.loads(line)))
        except ValueError as e:
            raise UsageProblem(f"{name} line {number} is not JSON: {e}; nothing was sent")
    return calls


def readInput(options: argparse.Namespace) -> list[tuple[list[Any], dict[str, Any]]]:
    """
    Read C{map}'s input from C{options.file} (C{-}: stdin), all of it,
    before anything is sent.

    @raise UsageProblem: for a file that cannot be read, is not UTF-8, or
        has a line that is not JSON.
    """
    if options.file == "-":
        return readCalls(sys.stdin, "stdin")
    try:
        source = open(options.file, encoding="utf-8")
    except OSError as e:
        raise UsageProblem(f"FILE {options.file!r}: cannot read it: {e.strerror}")
    with source:
        try:
            return readCalls(source, options.file)
        except UnicodeDecodeError as e:
            raise UsageProblem(f"{options.file} is not UTF-8 text: {e}")


#: What C{map} writes in place of a call cancelled by an interruption
#: before it finished, when a later call's result follows it.
INTERRUPTED = "interrupted"


async def mapCommand(
    reactor: Any,
    options: argparse.Namespace,
    interruption: Interruption,
    calls: list[tuple[list[Any], dict[str, Any]]],
) -> int:
    """
    Run one call per input line, C{--concurrency} at a time, and write the
    results in input order.

    Interrupted, it cancels the calls in flight and sends no more; it
    writes the results in order up to the last call that finished, a
    call cancelled before that one as C{{"error": {"type":
    "interrupted", ...}}}, and nothing for the calls after it.

    With C{--background} it submits one background job per line instead
    (L{taskd.jobclient.Submitter.submitWith}) and writes each job's id, in
    input order, as soon as the daemon has it on disk (a refused submit
    writes its C{{"error": ...}} object in its place).  Interrupted, it
    sends no more and waits for the answers to the submits already sent
    (a submit cannot be taken back: the daemon may have queued it), so
    every job queued has its id written.

    @return: the exit status, or -1 if interrupted.
    """
    try:
        protocol = await connecting(reactor, options, interruption)
    except CancelledError:
        write(sys.stderr, f"taskd: interrupted ({interruption.name}) before any call was sent\n")
        return -1
    interruption.onAbort(protocol.abortNow)
    client = TaskClient(protocol)
    background = bool(getattr(options, "background", False))
    progress = Progress(len(calls), sys.stderr)
    results: dict[int, str] = {}
    inFlight: dict[int, Deferred[Any]] = {}
    cancelled: list[int] = []
    written = 0
    finished: Deferred[None] = Deferred()
    nextCall = 0
    starting = False

    def flush() -> None:
        nonlocal written
        while written in results:
            write(sys.stdout, results.pop(written) + "\n")
            written += 1

    def done(line: str | None, index: int, ok: bool) -> None:
        del inFlight[index]
        if line is None:
            cancelled.append(index)
        else:
            results[index] = line
            progress.done += 1
            progress.failed += not ok
            flush()
            progress.update()
        start()

    def failed(failure: Failure, index: int) -> None:
        if failure.check(CancelledError) and interruption.signum is not None:
            done(None, index, False)
        else:
            done(json.dumps({"error": _errorObject(failure)}), index, False)

    def start() -> None:
        # Calls that fail at once (the connection is gone) end inside this
        # loop: their done() must not start more from inside it, or the
        # recursion grows with the input.
        nonlocal nextCall, starting
        if starting:
            return
        starting = True
        try:
            while (
                interruption.signum is None
                and len(inFlight) < options.concurrency
                and nextCall < len(calls)
            ):
                index, (args, kwargs) = nextCall, calls[nextCall]
                nextCall += 1
                d: Deferred[Any]
                if background:
                    d = client.submitWith(
                        options.function, args, kwargs, timeout=options.timeout
                    ).addCallback(lambda handle: handle.id)
                else:
                    d = client.callWith(options.function, args, kwargs, timeout=options.timeout)
                    d.addCallback(lambda result: json.dumps(result))
                inFlight[index] = d
                d.addCallbacks(
                    lambda line, i=index: done(line, i, True),
                    failed,
                    errbackArgs=(index,),
                )
        finally:
            starting = False
        if not inFlight and not finished.called:
            finished.callback(None)

    def interrupted() -> None:
        if background:
            return  # the submits in flight are answered: their ids are written
        for d in list(inFlight.values()):
            d.cancel()

    interruption.onInterrupt(interrupted)
    start()
    await finished
    if interruption.signum is None:
        progress.update(final=True)
        await client.close()
        return EXIT_FAILED if progress.failed else 0

    last = max(results, default=written - 1)
    marker = json.dumps(
        {
            "error": {
                "type": INTERRUPTED,
                "message": f"cancelled on {interruption.name} before it finished",
            }
        }
    )
    for index in cancelled:
        if index < last:
            results[index] = marker
    flush()
    progress.update(final=True)
    notSent = len(calls) - nextCall
    if background:
        await client.close()
        write(
            sys.stderr,
            f"taskd: interrupted ({interruption.name}): {progress.done - progress.failed} of "
            f"{len(calls)} jobs queued ({progress.failed} refused), {notSent} not sent; "
            f"{written} lines written; the queued jobs go on\n",
        )
        return -1
    await closeAfterCancel(reactor, protocol)
    write(
        sys.stderr,
        f"taskd: interrupted ({interruption.name}): {progress.done} of {len(calls)} "
        f"calls done ({progress.failed} failed), {len(cancelled)} cancelled on the "
        f"daemon, {notSent} not sent; {written} lines written\n",
    )
    return -1
