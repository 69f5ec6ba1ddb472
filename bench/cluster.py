"""
Jobs on the shared PostgreSQL journal: C{python -m bench.cluster [--n N] [--runs R]}.

For 1, 2 and 3 C{twistd taskd} daemons (2 workers each, C{--prefetch 4})
sharing one throwaway PostgreSQL server (C{tests.pgserver}: a unix
socket, C{fsync=off}, as the C{postgres} user when run as root), and one
daemon on its SQLite journal beside them, in the same run:

- durable submits per second: N C{submit}s pipelined (1,000 in flight),
  spread over the daemons, each answered once its job is committed (the
  jobs are delayed an hour, so that running them takes nothing away);
- jobs end to end per second: N jobs of C{add} submitted to run at once,
  spread over the daemons, then a C{wait} for each (sent to any daemon),
  until the last has ended.

On a 2-core machine the daemons, their workers and PostgreSQL share the
same two cores: more daemons add overhead (claims, notifications), not
speed.  The figures show what the shared journal costs beside SQLite, and
that every job is answered once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.jobs import line, pipelined  # noqa: E402
from bench.run import Process  # noqa: E402


def daemon(journal: str) -> Process:
    # Submits are taken once the journal is open: on PostgreSQL, once the
    # daemon says it shares it.
    ready = r"pool ready" if not journal.startswith("postgresql:") else r"pool ready)(?=[\s\S]*sharing the PostgreSQL journal"
    return Process(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "taskd", "--listen", "tcp:0:interface=127.0.0.1", "--workers", "2", "--prefetch", "4",
         "--max-queue", "100000", "--journal", journal, "--max-jobs", "1000000"],
        wait=rf"(?=[\s\S]*{ready})[\s\S]*?starting on (\d+)",
    )


def spread(ports: list[int], lines: list[bytes], check: Any) -> float:
    """
    Send C{lines} split over C{ports} at once, one connection each.

    @return: the seconds until the last reply.
    """
    parts = [lines[k::len(ports)] for k in range(len(ports))]
    errors: list[BaseException] = []

    wrong: list[Any] = []

    def checked(i: int, reply: Any) -> bool:
        ok = bool(check(i, reply))
        if not ok and len(wrong) < 3:
            wrong.append(reply)
        return ok

    def send(port: int, part: list[bytes]) -> None:
        try:
            pipelined(port, part, 1000, checked)
        except BaseException as e:
            errors.append(AssertionError(f"{e}: {wrong}"))

    threads = [threading.Thread(target=send, args=(p, part)) for p, part in zip(ports, parts)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def once(n: int, journals: list[str]) -> dict[str, float]:
    daemons = [daemon(j) for j in journals]
    try:
        ports = [int(d.match.group(1)) for d in daemons]  # type: ignore[union-attr]
        accepted = lambda i, r: r.get("type") == "accepted"  # noqa: E731
        later = [line({"type": "submit", "function": "add", "args": [i, 1], "id": i, "delay": 3600}) for i in range(n)]
        submitSeconds = spread(ports, later, accepted)
        ids: dict[int, str] = {}

        def keep(i: int, r: Any) -> bool:
            ids[i] = r["job"]
            return bool(r.get("type") == "accepted")

        now = [line({"type": "submit", "function": "add", "args": [i, 1], "id": i}) for i in range(n)]
        t = time.perf_counter()
        spread(ports, now, keep)
        # Waits go to another daemon than the one that took the submit.
        waits = [line({"type": "wait", "job": ids[i], "id": i}) for i in range(n)]
        rotated = ports[1:] + ports[:1]
        spread(rotated, waits, lambda i, r: r.get("type") == "result" and r.get("result") == i + 1)
        endToEnd = time.perf_counter() - t
    finally:
        for d in daemons:
            d.stop()
    return {"durable_submits_per_s": n / submitSeconds, "jobs_end_to_end_per_s": n / endToEnd}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="jobs per measurement")
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args(argv)
    from tests.pgserver import PostgreSQLServer, dropDatabase, freshDatabase

    server = PostgreSQLServer()
    server.start()
    try:
        setups: dict[str, Any] = {"sqlite, 1 daemon": None}
        setups.update({f"postgresql, {k} daemon{'s' if k > 1 else ''}": k for k in (1, 2, 3)})
        results: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
        for _ in range(options.runs):
            # Interleaved: each setup once per round.
            for name, k in setups.items():
                if k is None:
                    work = tempfile.mkdtemp(prefix="taskd-cluster-bench-")
                    journals = [os.path.join(work, "journal.sqlite")]
                    results[name].append(once(options.n, journals))
                else:
                    dsn = freshDatabase(server)
                    results[name].append(once(options.n, [dsn] * k))
                    dropDatabase(dsn, server)
        for name, runs in results.items():
            for key in runs[0]:
                values = [r[key] for r in runs]
                print(f"{name:24} {key:24} median {statistics.median(values):8.0f}   runs {', '.join(f'{v:.0f}' for v in values)}")
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
