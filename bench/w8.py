"""
Workload W8, waiting work: C{python -m bench.w8}.

1,000 calls that each wait 100 ms, all sent at once on one connection,
against three daemons started one after another: C{--workers 100} (one
call per process), C{--workers 4 --threads 25} (the same 100 calls at
once, on threads) and C{--workers 2} serving an C{async def} task.  For
each: the seconds from the first call to the last reply, and the total
resident memory of the daemon and its workers (measured after the run,
with every worker started and every thread made).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as "python bench/w8.py"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import rawclient  # noqa: E402
from bench.rawclient import request  # noqa: E402
from bench.run import Process, rssMB  # noqa: E402

N = 1000
WAIT = 0.1

#: name, daemon options.
SETUPS = [
    ("processes", ["--workers", "100", "--tasks", "bench.w8tasks"]),
    ("threads", ["--workers", "4", "--threads", "25", "--tasks", "bench.w8tasks"]),
    ("async", ["--workers", "2", "--tasks", "bench.w8async"]),
]


def run(options: list[str]) -> dict[str, float]:
    """
    Start a daemon with C{options}, time W8 on it, measure its memory, stop
    it.
    """
    started = time.monotonic()
    daemon = Process(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "taskd", "--listen", "tcp:0:interface=127.0.0.1", "--max-in-flight", str(N), *options],
        wait=r"starting on (\d+)[\s\S]*pool ready",
    )
    try:
        ready = time.monotonic() - started
        assert daemon.match is not None
        port = int(daemon.match.group(1))
        lines = [request("wait", [WAIT], i) for i in range(N)]
        seconds = rawclient.pipelined(port, lines, N, lambda i, result: result is None)
        pid = daemon.popen.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            workers = [int(p) for p in f.read().split()]
        rss = rssMB(pid) + sum(rssMB(w) for w in workers)
        return {"ready_s": round(ready, 2), "seconds": round(seconds, 3), "rss_mb": round(rss, 1), "processes": 1 + len(workers)}
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.w8", description=__doc__)
    parser.add_argument("--json", help="also write the figures to this file")
    options = parser.parse_args()
    results = {name: run(args) for name, args in SETUPS}
    base = results["processes"]
    print(f"W8: {N:,} calls x {WAIT * 1000:.0f} ms waits, all at once, on {os.cpu_count()} CPUs")
    print(f"{'setup':<10} {'options':<42} {'ready s':>8} {'run s':>7} {'RSS MB':>8} {'time x':>7} {'memory %':>9}")
    for name, args in SETUPS:
        r = results[name]
        print(
            f"{name:<10} {' '.join(a for a in args if not a.startswith('bench.') and a != '--tasks'):<42} "
            f"{r['ready_s']:>8.2f} {r['seconds']:>7.2f} {r['rss_mb']:>8.1f} "
            f"{r['seconds'] / base['seconds']:>7.2f} {100 * r['rss_mb'] / base['rss_mb']:>8.1f}%"
        )
    if options.json:
        with open(options.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
