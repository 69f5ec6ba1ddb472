"""
Interleaved W1, W1a and W2 against another checkout and this one:
C{python -m bench.compare OTHER_CHECKOUT [ROUNDS]} starts a daemon (2
workers, C{--prefetch 4}) from each, runs the workloads against them in
turn, round after round (a shared machine's load then falls on both
alike), and prints each round and the medians, with CPU per call.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Any

from bench import rawclient, run
from bench.rawclient import request


def main(argv: list[str]) -> None:
    roots = {"other": os.path.abspath(argv[0]), "this": run.ROOT}
    rounds = int(argv[1]) if len(argv) > 1 else 5
    daemons: dict[str, run.Daemon] = {}
    base = [p for p in sys.path if p and os.path.abspath(p) != run.ROOT]
    add = [request("add", [i, 1], i) for i in range(20000)]
    perCall = [request("add", [i, 1]) for i in range(5000)]
    sequential = [request("add", [i, 1], i) for i in range(2000)]
    check = lambda i, r: r == i + 1  # noqa: E731
    results: dict[str, dict[str, list[dict[str, Any]]]] = {k: {"w1": [], "w1a": [], "w2": []} for k in roots}
    saved = run.ENV, run.ROOT
    try:
        for name, root in roots.items():
            # The daemon runs in its checkout (its current directory comes
            # first on its path) with that checkout first on PYTHONPATH.
            run.ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + base))
            run.ROOT = root
            daemons[name] = run.Daemon(2)
        run.ENV, run.ROOT = saved
        for i in range(rounds):
            for name, d in daemons.items():
                mine = results[name]
                mine["w1"].append(run.pipelinedCPU(d.port, add, check, d.pid, d.workerPids()))
                mine["w1a"].append(run.connectionsCPU(d.port, perCall, check, d.pid, d.workerPids()))
                times = sorted(rawclient.sequential(d.port, sequential, check))
                mine["w2"].append({"p50_us": 1e6 * times[len(times) // 2], "p99_us": 1e6 * times[int(len(times) * 0.99)]})
                last = {w: {k: round(v, 1) for k, v in runs[-1].items()} for w, runs in mine.items()}
                print(name, i + 1, json.dumps(last), "load", open("/proc/loadavg").read().split()[0], flush=True)
    finally:
        run.ENV, run.ROOT = saved
        for d in daemons.values():
            d.stop()
    for name in roots:
        for w, runs in results[name].items():
            print(name, w, {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]})


if __name__ == "__main__":
    main(sys.argv[1:])
