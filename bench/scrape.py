"""
What one C{/metrics} scrape and one status page update cost the daemon's
reactor: C{python -m bench.scrape}.

In process: an L{taskd.activity.Activity} with C{T} tasks (each with 100
calls ended, one of them failed) and C{W} ready workers (given the pids of
processes running on the machine, so that their resident memory is read
from C{/proc} as a scrape reads it), timed in CPU time over 200 scrapes, for a scrape right after
calls of every task ended (each task's lines written again) and for one
with no call ended since the last (each task's lines kept); and one
status page snapshot, as sent each second while someone watches.

Then a real C{twistd taskd --http}: the daemon's CPU time (from
C{/proc}) per request of C{/metrics} and of C{/healthz} (the HTTP
request alone), 200 requests each, after 2,000 W1 calls.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

from twisted.internet.task import Clock

from taskd.activity import Activity
from taskd.metrics import DaemonMetrics


class _Call:
    def __init__(self, name: str, number: int) -> None:
        self.name = name
        self.number = number
        self.submittedAt = 999.9
        self.startedAt = 1000.0
        self.pid = os.getpid()
        self.origin = None
        self.priority = 0

    def cancel(self) -> None:
        pass


def inProcess(tasks: int, workers: int, n: int = 200) -> dict[str, float]:
    """
    @return: CPU milliseconds of a scrape (with and without calls ended
        since the last) and of a status page snapshot.
    """
    clock = Clock()
    clock.advance(1000)
    activity = Activity(clock)
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    for pid in pids[:workers]:
        activity.workerStarted(pid)
    names = [f"task{t}" for t in range(tasks)]
    for name in names:
        for i in range(100):
            activity.callEnded(_Call(name, i), "result", 0.001 * i)
        activity.callEnded(_Call(name, 100), "task_failed", 0.01)
    stats: dict[str, Any] = {"workers": workers, "idle": 1, "busy": 1, "processes": workers, "connections": 3}
    metrics = DaemonMetrics(activity, lambda: stats, lambda: False)
    metrics.render()
    start = time.process_time()
    for _ in range(n):
        metrics.render()
    unchanged = (time.process_time() - start) / n
    spent = 0.0
    for i in range(n):
        for name in names:
            activity.callEnded(_Call(name, i), "result", 0.002)
        start = time.process_time()
        metrics.render()
        spent += time.process_time() - start
    changed = spent / n
    start = time.process_time()
    for _ in range(n):
        json.dumps(activity.snapshot(stats))
    snapshot = (time.process_time() - start) / n
    activity.stop()
    return {"scrape_ms": changed * 1e3, "scrape_unchanged_ms": unchanged * 1e3, "snapshot_ms": snapshot * 1e3}


def daemon(n: int = 200) -> dict[str, float]:
    """
    @return: the daemon's CPU milliseconds per request of C{/metrics} and
        of C{/healthz}.
    """
    from bench.rawclient import request
    from bench.run import Daemon, cpuSeconds, pipelinedCPU

    d = Daemon(2, 4, "--http", "tcp:0:interface=127.0.0.1")
    out = {}
    try:
        lines = [request("add", [i, 1], i) for i in range(2000)]
        pipelinedCPU(d.port, lines, lambda i, r: r == i + 1, d.pid)
        for path in ("metrics", "healthz"):
            url = f"http://127.0.0.1:{d.httpPort}/{path}"
            urllib.request.urlopen(url).read()
            before = cpuSeconds(d.pid)
            for _ in range(n):
                with urllib.request.urlopen(url) as r:
                    r.read()
            out[f"{path}_ms"] = (cpuSeconds(d.pid) - before) / n * 1e3
    finally:
        d.stop()
    return out


def main() -> None:
    for tasks, workers in ((1, 2), (5, 2), (20, 8), (100, 32)):
        r = inProcess(tasks, workers)
        print(
            f"in process, {tasks} tasks, {workers} workers: scrape {r['scrape_ms']:.2f} ms CPU"
            f" ({r['scrape_unchanged_ms']:.2f} ms with no call ended since the last),"
            f" status page update {r['snapshot_ms']:.2f} ms"
        )
    r = daemon()
    print(
        f"twistd taskd --http, 2 workers, after W1: {r['metrics_ms']:.2f} ms of the daemon's CPU a /metrics request,"
        f" {r['healthz_ms']:.2f} ms a /healthz request"
    )


if __name__ == "__main__":
    main()
