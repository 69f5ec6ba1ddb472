"""
W1 (20,000 C{add} calls, 100 in flight, the raw client) against daemons
that differ only in C{--prefetch}, interleaved: C{python -m bench.prefetch [--w1a]
[ROUNDS] [DEPTHS] [-- DAEMON OPTIONS...]}, e.g. C{python -m bench.prefetch
5 4,16,32,64}; C{--w1a}: W1a instead (a connection per call, 100 at
once).  Prints each daemon's calls per second in every round and
the medians of the calls per second and of the CPU time per call of the
client, the daemon and its workers.
"""

from __future__ import annotations

import statistics
import sys

from bench import run
from bench.rawclient import request

CALLS = 20000


def main(argv: list[str]) -> None:
    options: list[str] = []
    if "--" in argv:
        argv, options = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    w1a = "--w1a" in argv
    argv = [a for a in argv if a != "--w1a"]
    measure = run.connectionsCPU if w1a else run.pipelinedCPU
    rounds = int(argv[0]) if argv else 5
    depths = [int(d) for d in argv[1].split(",")] if len(argv) > 1 else [4, 16, 32, 64]
    lines = [request("add", [i, 1], i) for i in range(CALLS)]

    def check(i: int, result: object) -> bool:
        return result == i + 1

    daemons: dict[int, run.Daemon] = {}
    try:
        for depth in depths:
            daemons[depth] = run.Daemon(2, depth, *options)
        results: dict[int, list[dict[str, float]]] = {d: [] for d in depths}
        for _ in range(rounds):
            for depth, daemon in daemons.items():
                results[depth].append(measure(daemon.port, lines, check, daemon.pid, daemon.workerPids()))
    finally:
        for daemon in daemons.values():
            daemon.stop()
    print(f"{'W1a' if w1a else 'W1'}, {CALLS:,} calls, {rounds} rounds, medians; CPU per call: client / daemon / workers")
    for depth, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        each = ", ".join(f"{r['calls_per_s']:,.0f}" for r in runs)
        print(
            f"  --prefetch {depth:>3}: {med['calls_per_s']:>9,.0f} calls/s"
            f"   {med['cpu_us_client']:.1f} / {med['cpu_us_server']:.1f} / {med['cpu_us_workers']:.1f} us"
            f"   (rounds: {each})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
