# -*- test-case-name: tests.test_cli -*-
"""
C{python -m taskd}: call a daemon, and ask it things, from a shell::

    python -m taskd call add '[1, 2]'
    python -m taskd map send_mail users.jsonl > results.jsonl
    python -m taskd hello          # what the daemon is: version, limits
    python -m taskd stats          # its counters (workers, queue ...)
    python -m taskd tasks          # the tasks it serves, with signatures
    python -m taskd --version

C{hello}, C{stats} and C{tasks} print for people, or the daemon's JSON
with C{--json}.

Exit status: 0 when every call succeeded, 1 when a call failed, 2 for bad
usage (one line on stderr naming the option or input line), 3 when the
daemon cannot be reached or refuses the token.  Ctrl-C (SIGINT) or SIGTERM
during C{call} or C{map} cancels the calls in flight on the daemon, stops
sending, prints a one-line summary and ends the process by the same signal
(a shell reports 130 or 143); a second one exits at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import struct
import sys
import time
from typing import IO, Any, Callable, NoReturn, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

import taskd
from taskd import errors
from taskd.client import TaskClient, TaskClientProtocol

DEFAULT_CONNECT = "tcp:127.0.0.1:12345"

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

#: Seconds to wait, once interrupted, for the daemon to take the cancels
#: and close the connection.
CLOSE_TIMEOUT = 5.0


class UsageProblem(Exception):
    """
    Bad usage or input: printed as C{taskd: message}, exit status 2.
    """


class Unreachable(Exception):
    """
    The daemon cannot be reached or refused us: printed as C{taskd:
    message}, exit status 3.
    """


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
    path = options.token_file
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise UsageProblem(f"--token-file {path!r}: cannot read it: {reason}")
        if not token:
            raise UsageProblem(f"--token-file {path!r}: the file is empty")
        return token
    return os.environ.get("TASKD_TOKEN") or None


class Interruption:
    """
    What Ctrl-C (SIGINT) and SIGTERM do while a command runs.

    Before the reactor runs (nothing has been sent) a signal ends the
    process at once.  Then the first signal runs the command's
    interruption callbacks in the reactor thread (they cancel the calls in
    flight); a second one calls the abort callbacks in the signal handler
    itself and exits at once.  A signal ignored when the process started
    (a background job of a script, C{nohup}) stays ignored.

    @ivar signum: the first signal received, or C{None}.
    """

    signals = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._reactor: Any = None
        self.signum: int | None = None
        self._onInterrupt: list[Callable[[], object]] = []
        self._onAbort: list[Callable[[], object]] = []

    def install(self) -> None:
        """
        Take over SIGINT and SIGTERM, unless ignored.
        """
        for signum in self.signals:
            if signal.getsignal(signum) != signal.SIG_IGN:
                signal.signal(signum, self._received)

    def attach(self, reactor: Any) -> None:
        """
        From now on, a first signal interrupts the command through
        C{reactor} rather than ending the process.
        """
        self._reactor = reactor

    def onInterrupt(self, callback: Callable[[], object]) -> None:
        """
        Call C{callback} (in the reactor thread) on the first signal, or at
        once if it has come already.
        """
        if self.signum is not None:
            callback()
        else:
            self._onInterrupt.append(callback)

    def onAbort(self, callback: Callable[[], object]) -> None:
        """
        Call C{callback} from the signal handler on a second signal, just
        before exiting: it may only do simple, synchronous things.
        """
        self._onAbort.append(callback)

    def _received(self, signum: int, frame: Any) -> None:
        if self._reactor is None:
            _write(sys.stderr, f"taskd: interrupted ({signal.Signals(signum).name}); nothing was sent\n")
            _exitBySignal(signum, hard=True)
        if self.signum is None:
            self.signum = signum
            self._reactor.callFromThread(self._interrupted)
            return
        for callback in self._onAbort:
            try:
                callback()
            except Exception:
                pass
        _write(sys.stderr, f"taskd: {signal.Signals(signum).name} again: exiting at once\n")
        _exitBySignal(signum, hard=True)

    def _interrupted(self) -> None:
        callbacks, self._onInterrupt = self._onInterrupt, []
        for callback in callbacks:
            callback()

    @property
    def name(self) -> str:
        """
        The first signal's name (C{"SIGINT"}), or C{""}.
        """
        return "" if self.signum is None else signal.Signals(self.signum).name


def _write(stream: IO[str], text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass


def _exitBySignal(signum: int, hard: bool = False) -> NoReturn:
    """
    End the process as killed by C{signum} (a shell reports 128 + its
    number: 130 for SIGINT, 143 for SIGTERM), as a well-behaved command
    interrupted from a terminal does, so that a shell loop running it
    stops too.
    """
    for stream in (sys.stdout, sys.stderr):
        _write(stream, "")
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    # Not reached, unless the signal is blocked.
    if hard:
        os._exit(128 + signum)
    raise SystemExit(128 + signum)


class _CLIProtocol(TaskClientProtocol):
    """
    The client protocol, which a signal handler can make reset its
    connection.
    """

    def abortNow(self) -> None:
        """
        From a signal handler: make the socket's close a reset, so that
        the daemon cancels what this connection still has in flight even
        though this process exits without a word.
        """
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket) and handle.family in (socket.AF_INET, socket.AF_INET6):
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _open(reactor: Any, options: argparse.Namespace) -> _CLIProtocol:
    """
    Connect and say hello (with the token, if given), as
    L{taskd.client.connect} does.

    @raise UsageProblem: for a bad C{--connect} or C{--token-file}.
    @raise Unreachable: if the daemon cannot be reached or refuses.
    """
    from twisted.internet.endpoints import clientFromString

    description = options.connect
    token = _token(options)
    try:
        endpoint = clientFromString(reactor, description)
    except ValueError as e:
        if str(e).startswith("Unknown endpoint type"):
            kind = description.split(":", 1)[0]
            raise UsageProblem(
                f"--connect {description!r}: unknown endpoint type {kind!r}; "
                "use tcp:HOST:PORT, tls:HOST:PORT or unix:PATH"
            )
        raise UsageProblem(f"--connect {description!r}: {e}")
    except TypeError as e:
        raise UsageProblem(f"--connect {description!r}: incomplete ({e}); write tcp:HOST:PORT, tls:HOST:PORT or unix:PATH")
    except Exception as e:
        raise UsageProblem(f"--connect {description!r}: {type(e).__name__}: {e}")
    deadline = reactor.seconds() + options.wait
    while True:
        try:
            protocol: _CLIProtocol = await endpoint.connect(Factory.forProtocol(_CLIProtocol))
            break
        except CancelledError:
            raise
        except ConnectionRefusedError as e:
            # Not listening (yet): with --wait, try again.
            if reactor.seconds() >= deadline:
                raise Unreachable(f"cannot connect to {description}: {e}")
            await deferLater(reactor, 0.1, lambda: None)
        except Exception as e:
            raise Unreachable(f"cannot connect to {description}: {e}")
    try:
        protocol.serverHello = await protocol.hello({} if token is None else {"token": token})
    except errors.Unauthenticated as e:
        protocol.transport.loseConnection()
        if token is None:
            raise Unreachable(
                f"{description} requires a token and none was given: "
                "pass --token-file FILE or set TASKD_TOKEN"
            )
        raise Unreachable(f"{description} refused the token: {e.message}")
    except BaseException as e:
        protocol.transport.loseConnection()
        if isinstance(e, CancelledError):
            raise
        raise Unreachable(f"{description} did not answer the hello: {e}")
    return protocol


def _connecting(reactor: Any, options: argparse.Namespace, interruption: Interruption) -> Deferred[_CLIProtocol]:
    """
    L{_open}, cancelled by an interruption.
    """
    d = Deferred.fromCoroutine(_open(reactor, options))
    interruption.onInterrupt(d.cancel)
    return d


async def _closeAfterCancel(reactor: Any, protocol: _CLIProtocol) -> None:
    """
    Close the connection once the cancels are written; the daemon then
    closes its side after answering them.  Abort after L{CLOSE_TIMEOUT}.
    """
    client = TaskClient(protocol)
    lost = client.close()
    timer = reactor.callLater(CLOSE_TIMEOUT, protocol.transport.abortConnection)
    await lost
    if timer.active():
        timer.cancel()


async def callCommand(reactor: Any, options: argparse.Namespace, interruption: Interruption) -> int:
    """
    Run one call; print its result as JSON, or its error on stderr.
    """
    args, kwargs = _arguments(options.args)
    try:
        protocol = await _connecting(reactor, options, interruption)
    except CancelledError:
        _write(sys.stderr, f"taskd: interrupted ({interruption.name}) before the call was sent\n")
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
        await _closeAfterCancel(reactor, protocol)
        _write(sys.stderr, f"taskd: interrupted ({interruption.name}): the call was cancelled on the daemon\n")
        return -1
    except Exception:
        failure = Failure()
        print(f"taskd: {_describe(failure)}", file=sys.stderr)
        if isinstance(failure.value, errors.TaskFailed):
            print(failure.value.remoteTraceback, file=sys.stderr, end="")
        await client.close()
        return EXIT_FAILED
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
            calls.append(_arguments(json.loads(line)))
        except ValueError as e:
            raise UsageProblem(f"{name} line {number} is not JSON: {e}; nothing was sent")
    return calls


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
    """
    try:
        protocol = await _connecting(reactor, options, interruption)
    except CancelledError:
        _write(sys.stderr, f"taskd: interrupted ({interruption.name}) before any call was sent\n")
        return -1
    interruption.onAbort(protocol.abortNow)
    client = TaskClient(protocol)
    progress = Progress(len(calls), sys.stderr)
    results: dict[int, str] = {}
    inFlight: dict[int, Deferred[Any]] = {}
    cancelled: list[int] = []
    written = 0
    finished: Deferred[None] = Deferred()
    nextCall = 0

    def flush() -> None:
        nonlocal written
        while written in results:
            _write(sys.stdout, results.pop(written) + "\n")
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
        nonlocal nextCall
        while (
            interruption.signum is None
            and len(inFlight) < options.concurrency
            and nextCall < len(calls)
        ):
            index, (args, kwargs) = nextCall, calls[nextCall]
            nextCall += 1
            d = client.callWith(options.function, args, kwargs, timeout=options.timeout)
            inFlight[index] = d
            d.addCallbacks(
                lambda result, i=index: done(json.dumps(result), i, True),
                failed,
                errbackArgs=(index,),
            )
        if not inFlight and not finished.called:
            finished.callback(None)

    def interrupted() -> None:
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
    await _closeAfterCancel(reactor, protocol)
    notSent = len(calls) - nextCall
    _write(
        sys.stderr,
        f"taskd: interrupted ({interruption.name}): {progress.done} of {len(calls)} "
        f"calls done ({progress.failed} failed), {len(cancelled)} cancelled on the "
        f"daemon, {notSent} not sent; {written} lines written\n",
    )
    return -1


async def _inspect(reactor: Any, options: argparse.Namespace, interruption: Interruption) -> int:
    try:
        protocol = await _connecting(reactor, options, interruption)
    except CancelledError:
        return -1
    client = TaskClient(protocol)
    hello = protocol.serverHello
    assert hello is not None
    try:
        if options.command == "hello":
            fields: Any = {"version": hello.version, **hello.fields}
            text = _helloText(options.connect, fields)
        elif options.command == "stats":
            stats = await protocol.stats()
            fields = stats.fields
            text = "".join(f"{key}: {value}\n" for key, value in fields.items())
        else:
            tasks = await protocol.tasks()
            fields = tasks.tasks
            text = "".join(
                f"{t.get('name')}{t.get('signature', '')}\n" + (f"    {t['doc']}\n" if t.get("doc") else "")
                for t in fields
            )
    except CancelledError:
        return -1
    except errors.TaskdError as e:
        raise Unreachable(f"{options.connect} cannot answer {options.command}: {e.type}: {e.message}")
    finally:
        await client.close()
    _write(sys.stdout, json.dumps(fields) + "\n" if options.json else text)
    return 0


def _helloText(where: str, fields: dict[str, Any]) -> str:
    return (
        f"{fields.get('server', '?')} {fields.get('serverVersion', '(version unknown)')} at {where}\n"
        f"protocol version: {fields.get('version')}\n"
        f"tasks: {', '.join(fields.get('tasks', []))}\n"
        f"longest request line: {fields.get('maxLineLength')} bytes\n"
        f"requests in flight per connection: {fields.get('maxInFlight')}\n"
    )


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
        _write(sys.stderr, f"taskd: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: not JSON: {e}")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number of at least 1")
    return n


def _seconds(text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        n = float("nan")
    if not n > 0 or n == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds above 0")
    return n


def _waitSeconds(text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        n = float("nan")
    if not n >= 0 or n == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds (0 or more)")
    return n


def parser() -> argparse.ArgumentParser:
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
    return top


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run C{python -m taskd}; exits the process.
    """
    interruption = Interruption()
    interruption.install()
    options = parser().parse_args(argv)
    try:
        calls = _readInput(options) if options.command == "map" else []
    except UsageProblem as e:
        _write(sys.stderr, f"taskd: {e}\n")
        raise SystemExit(EXIT_USAGE)

    from twisted.internet import reactor

    outcome: list[int] = []

    async def run() -> None:
        try:
            if options.command == "call":
                outcome.append(await callCommand(reactor, options, interruption))
            elif options.command == "map":
                outcome.append(await mapCommand(reactor, options, interruption, calls))
            else:
                outcome.append(await _inspect(reactor, options, interruption))
        except UsageProblem as e:
            _write(sys.stderr, f"taskd: {e}\n")
            outcome.append(EXIT_USAGE)
        except Unreachable as e:
            _write(sys.stderr, f"taskd: {e}\n")
            outcome.append(EXIT_UNREACHABLE)
        except BaseException:
            Failure().printTraceback(file=sys.stderr)
            outcome.append(EXIT_FAILED)
        finally:
            reactor.stop()

    interruption.attach(reactor)
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(run()))
    # Our own handlers (above) instead of Twisted's, which would stop the
    # reactor at once.
    running: Any = reactor
    running.run(installSignalHandlers=False)
    status = outcome[0] if outcome else EXIT_FAILED
    if interruption.signum is not None and status in (-1, 0, EXIT_FAILED):
        _exitBySignal(interruption.signum)
    raise SystemExit(status)


def _readInput(options: argparse.Namespace) -> list[tuple[list[Any], dict[str, Any]]]:
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
