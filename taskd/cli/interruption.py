# -*- test-case-name: tests.test_cli -*-
"""
What Ctrl-C (SIGINT) and SIGTERM do while a command runs (L{Interruption}),
and ending the process as killed by a signal (L{exitBySignal}), as a
well-behaved interrupted command does.

The commands say what an interruption means for them (cancel the calls
in flight, reset the connection) through L{Interruption.onInterrupt} and
L{Interruption.onAbort}; this room knows only signals and the reactor.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable, NoReturn

from taskd.cli.console import write


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
            write(sys.stderr, f"taskd: interrupted ({signal.Signals(signum).name}); nothing was sent\n")
            exitBySignal(signum, hard=True)
        if self.signum is None:
            self.signum = signum
            self._reactor.callFromThread(self._interrupted)
            return
        for callback in self._onAbort:
            try:
                callback()
            except Exception:
                pass
        write(sys.stderr, f"taskd: {signal.Signals(signum).name} again: exiting at once\n")
        exitBySignal(signum, hard=True)

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


def exitBySignal(signum: int, hard: bool = False) -> NoReturn:
    """
    End the process as killed by C{signum} (a shell reports 128 + its
    number: 130 for SIGINT, 143 for SIGTERM), as a well-behaved command
    interrupted from a terminal does, so that a shell loop running it
    stops too.

    @param hard: if the signal is blocked and does not end the process,
        leave with C{os._exit} (from a signal handler) rather than
        C{SystemExit}.
    """
    for stream in (sys.stdout, sys.stderr):
        write(stream, "")
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    # Not reached, unless the signal is blocked.
    if hard:
        os._exit(128 + signum)
    raise SystemExit(128 + signum)
