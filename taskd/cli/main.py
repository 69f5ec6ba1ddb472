# -*- test-case-name: tests.test_cli -*-
"""
The top of C{python -m taskd}: L{main} parses the command line, reads
C{map}'s input before anything is sent, runs the command in the reactor
with our own signal handling, and exits with the command's status (or by
the signal that interrupted it).

The one room of L{taskd.cli} that imports the global reactor, and only
when L{main} runs; C{taskd/__main__.py} calls it.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from taskd.cli.administering import ADMIN_COMMANDS, adminCommand
from taskd.cli.calling import callCommand, mapCommand, readInput
from taskd.cli.console import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, Unreachable, UsageProblem, write
from taskd.cli.inspecting import inspectCommand
from taskd.cli.jobs import jobCommand
from taskd.cli.interruption import Interruption, exitBySignal
from taskd.cli.options import parser


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run C{python -m taskd}; exits the process.
    """
    interruption = Interruption()
    interruption.install()
    options = parser().parse_args(argv)
    try:
        calls = readInput(options) if options.command == "map" else []
    except UsageProblem as e:
        write(sys.stderr, f"taskd: {e}\n")
        raise SystemExit(EXIT_USAGE)

    from twisted.internet import reactor

    outcome: list[int] = []

    async def run() -> None:
        try:
            if options.command == "call":
                outcome.append(await callCommand(reactor, options, interruption))
            elif options.command == "map":
                outcome.append(await mapCommand(reactor, options, interruption, calls))
            elif options.command in ("submit", "job", "wait"):
                outcome.append(await jobCommand(reactor, options, interruption))
            elif options.command in ADMIN_COMMANDS:
                outcome.append(await adminCommand(reactor, options, interruption))
            else:
                outcome.append(await inspectCommand(reactor, options, interruption))
        except UsageProblem as e:
            write(sys.stderr, f"taskd: {e}\n")
            outcome.append(EXIT_USAGE)
        except Unreachable as e:
            write(sys.stderr, f"taskd: {e}\n")
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
        exitBySignal(interruption.signum)
    raise SystemExit(status)
