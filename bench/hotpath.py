"""
The daemon's own cost per call, without processes, sockets or a reactor:
C{python -m bench.hotpath}.

A L{taskd.connection.TaskServerProtocol} on a L{StringTransport} serves pipelined C{add}
lines from a L{ProcessPool} whose workers are L{taskd.testing}'s fakes: the
pool writes its request frames into real pipes and reads the replies back
from real pipes, and this script answers them in-process.  The time the
answers take (the worker's part, L{taskd.worker.runCall}) is measured apart
and subtracted, so what is printed is the server's and the pool's Python
path plus their pipe I/O.  With C{--profile}, prints where that time goes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

if __package__ in (None, ""):  # run as "python bench/hotpath.py"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.testing import StringTransport  # noqa: E402

from taskd.pool import ProcessPool  # noqa: E402
from taskd.registry import Registry  # noqa: E402
from taskd.server import TaskServerFactory  # noqa: E402
from taskd.worker import runCall  # noqa: E402
from taskd._frames import frame  # noqa: E402
from taskd.testing import FakeProcessReactor  # noqa: E402

N = 20000


def daemonPath(n: int, observed: bool) -> tuple[Registry, FakeProcessReactor, Any, StringTransport]:
    """
    The daemon's path without processes: a connection on a
    C{StringTransport} and a pool of two fake workers (C{--prefetch 4})
    with an C{add} task, room for C{n} calls queued.

    @param observed: whether the pool has the daemon's observer (as
        C{--http} gives it).
    @return: the registry, the fake reactor (its C{processes} are the
        workers), the connection's protocol and its transport.
    """
    registry = Registry()
    registry.register(lambda a, b: a + b, "add")
    reactor = FakeProcessReactor()
    pool = ProcessPool(reactor, tasks=[], workers=2, registry=registry, prefetch=4, maxQueue=n)
    if observed:
        from taskd.activity import Activity

        pool.observer = Activity(reactor)
    pool.start()
    for process in reactor.processes:
        process.ready()
    protocol = TaskServerFactory(pool).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return registry, reactor, protocol, transport


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument(
        "--observed", action="store_true", help="with the daemon's observer (taskd.activity, as --http sets)"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs to take the best of")
    options = parser.parse_args()

    registry, reactor, protocol, transport = daemonPath(N, options.observed)
    lines = [b'{"function":"add","args":[%d,1],"id":%d}\n' % (i, i) for i in range(N)]

    def answer() -> None:
        # What the workers were sent, answered at once, until none is left.
        while True:
            busy = False
            for process in reactor.processes:
                frames = process.written[:]
                del process.written[:]
                if frames:
                    busy = True
                    process.sendRaw(b"".join(frame(runCall(registry, f[4:], 1 << 20)) for f in frames))
            if not busy:
                return

    def run() -> None:
        transport.clear()
        for start in range(0, N, 100):  # 100 in flight, as in W1
            protocol.dataReceived(b"".join(lines[start : start + 100]))
            answer()
        assert transport.value().count(b"\n") == N

    if options.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(run)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    best = min(_timed(run) for _ in range(options.runs))
    bodies = [b"add\n" + line[:-1] for line in lines]
    workers = min(_timed(lambda: [frame(runCall(registry, b, 1 << 20)) for b in bodies]) for _ in range(options.runs))
    print(f"daemon path: {(best - workers) / N * 1e6:.1f} us per call (best of {options.runs} in CPU time, {N:,} calls; the workers' part, {workers / N * 1e6:.1f} us, taken out)")


def _timed(f: Callable[[], object]) -> float:
    # CPU time, not wall time: other processes on a loaded machine do not
    # count (the path is single-threaded and does no waiting).
    start = time.process_time()
    f()
    return time.process_time() - start


if __name__ == "__main__":
    main()
