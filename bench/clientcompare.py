"""
Interleaved W1 with the raw client and with the taskd client, against
another checkout and this one: C{python -m bench.clientcompare
OTHER_CHECKOUT [ROUNDS] [--window]}.  Starts a daemon (2 workers,
C{--prefetch 4}) from each checkout; each round runs, against each in
turn, W1 with the raw client and W1 with the taskd client, the client's
process running that checkout's code (its C{bench.measure} and
C{taskd.client}); prints every run and the medians, with CPU per call
of the client, the daemon and the workers.  C{--window}: this checkout's
taskd client also runs W1 through L{taskd.client.TaskClient.callMany}.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Any

from bench import run
from bench.rawclient import request


def main(argv: list[str]) -> None:
    window = "--window" in argv
    argv = [a for a in argv if a != "--window"]
    roots = {"other": os.path.abspath(argv[0]), "this": run.ROOT}
    rounds = int(argv[1]) if len(argv) > 1 else 5
    base = [p for p in sys.path if p and os.path.abspath(p) != run.ROOT]
    envs = {name: dict(os.environ, PYTHONPATH=os.pathsep.join([root] + base)) for name, root in roots.items()}
    add = [request("add", [i, 1], i) for i in range(20000)]
    check = lambda i, r: r == i + 1  # noqa: E731
    kinds = ["raw", "client"] + (["window"] if window else [])
    results: dict[str, dict[str, list[dict[str, Any]]]] = {k: {kind: [] for kind in kinds} for k in roots}
    daemons: dict[str, run.Daemon] = {}
    saved = run.ENV, run.ROOT
    try:
        for name, root in roots.items():
            # Each daemon and client runs in its checkout, first on its path.
            run.ENV, run.ROOT = envs[name], root
            daemons[name] = run.Daemon(2)
        for i in range(rounds):
            for name, d in daemons.items():
                run.ENV, run.ROOT = envs[name], roots[name]
                mine = results[name]
                mine["raw"].append(run.pipelinedCPU(d.port, add, check, d.pid, d.workerPids()))
                spec = {"kind": "taskd-client", "port": d.port, "workload": "w1", "n": len(add)}
                mine["client"].append(run.clientCPU(spec, d.pid, d.workerPids()))
                if window and name == "this":
                    mine["window"].append(run.clientCPU(dict(spec, window=True), d.pid, d.workerPids()))
                last = {w: {k: round(v, 1) for k, v in runs[-1].items()} for w, runs in mine.items() if runs}
                print(name, i + 1, json.dumps(last), "load", open("/proc/loadavg").read().split()[0], flush=True)
    finally:
        run.ENV, run.ROOT = saved
        for d in daemons.values():
            d.stop()
    for name in roots:
        for w, runs in results[name].items():
            if runs:
                print(name, w, {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]})
        ratios = [c["calls_per_s"] / r["calls_per_s"] for c, r in zip(results[name]["client"], results[name]["raw"])]
        print(name, "client / raw, each round:", [round(x, 2) for x in ratios], "median", round(statistics.median(ratios), 2))


if __name__ == "__main__":
    main(sys.argv[1:])
