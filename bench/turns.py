"""
An instrument run inside a daemon the benchmark starts (W7's load-proof
figures): the CPU time of each reactor turn, and optionally a cProfile of
a window.

It is a file of its own, run by the daemon's C{-c} before twistd (see
L{command}), with nothing of taskd or the benchmark imported, so that it
can watch a daemon of any checkout.  When the daemon stops it writes, to
the file named by C{TASKD_BENCH_TURNS}, one JSON object: C{"turns"}, a
list of C{[wall start, thread CPU seconds]} for each turn of the reactor
(one C{runUntilCurrent} and one C{doIteration}: its timers, then the
events of one poll).  A turn's CPU time is C{time.thread_time()}: what the
reactor's thread ran, not what it waited for, so it changes little with
the machine's load.

With C{TASKD_BENCH_PROFILE} set to a file name, C{SIGUSR2} starts a
cProfile of the reactor's thread and a second C{SIGUSR2} stops it and
writes its stats there.
"""

from __future__ import annotations

import sys
from typing import Any

#: The file's own source, run by the daemon (see L{command}).
PATH = globals().get("__file__", "")


def command() -> str:
    """
    @return: the C{python -c} program that runs this instrument, then twistd.
    """
    return (
        f"exec(compile(open({PATH!r}).read(), {PATH!r}, 'exec'), {{'__name__': 'taskd_bench_turns', '__file__': {PATH!r}}}); "
        "from twisted.scripts.twistd import run; run()"
    )


def install() -> None:
    """
    Wrap the reactor's turn (installing the default reactor first) and,
    if asked, the profiling signal.
    """
    import json
    import os
    import signal
    import time

    out = os.environ.get("TASKD_BENCH_TURNS")
    profileTo = os.environ.get("TASKD_BENCH_PROFILE")
    if not out:
        return
    from twisted.internet import default

    default.install()
    from twisted.internet import reactor

    r: Any = reactor
    runUntilCurrent, doIteration = r.runUntilCurrent, r.doIteration
    turns: list[Any] = []
    started = [0.0, 0.0]
    cpu, wall = time.thread_time, time.time
    # TASKD_BENCH_COUNT="module:Class.method,...": how many times each was
    # called in each turn (a diagnosis: the wrapping costs CPU).
    counted = [name for name in os.environ.get("TASKD_BENCH_COUNT", "").split(",") if name]
    counts = [0] * len(counted)
    for index, name in enumerate(counted):
        import importlib

        module, _, path = name.partition(":")
        owner: Any = importlib.import_module(module)
        *outer, attribute = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        original = getattr(owner, attribute)

        def counting(*args: Any, _original: Any = original, _index: int = index, **kw: Any) -> Any:
            counts[_index] += 1
            return _original(*args, **kw)

        setattr(owner, attribute, counting)

    # The garbage collector's passes in each turn: [CPU seconds, the
    # oldest generation collected].
    collecting = [0.0, 0.0, -1]

    def collected(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collecting[0] = cpu()
        else:
            collecting[1] += cpu() - collecting[0]
            collecting[2] = max(collecting[2], info["generation"])

    if counted:
        import gc

        gc.callbacks.append(collected)

    def timed() -> None:
        started[0], started[1] = wall(), cpu()
        runUntilCurrent()

    def polled(timeout: Any) -> None:
        doIteration(timeout)
        if counted:
            turns.append((started[0], cpu() - started[1], counts[:] + [round(collecting[1] * 1000, 2), collecting[2]]))
            counts[:] = [0] * len(counts)
            collecting[1:] = [0.0, -1]
        else:
            turns.append((started[0], cpu() - started[1]))

    r.runUntilCurrent, r.doIteration = timed, polled

    def write() -> None:
        with open(out, "w") as f:
            json.dump({"turns": turns, "counted": counted}, f)

    # After the reactor's shutdown, not at exit: twistd stopped by a signal
    # kills itself with it again, and exit handlers do not run.
    r.addSystemEventTrigger("after", "shutdown", write)
    if profileTo:
        import cProfile

        profiler: list[Any] = []

        def toggle(signum: int, frame: Any) -> None:
            if profiler:
                p = profiler.pop()
                p.disable()
                p.dump_stats(profileTo)
            else:
                profiler.append(cProfile.Profile())
                profiler[0].enable()

        signal.signal(signal.SIGUSR2, toggle)


if __name__ == "taskd_bench_turns":
    install()
    sys.modules.pop("taskd_bench_turns", None)
