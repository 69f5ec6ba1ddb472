"""
W7, background jobs: C{python -m bench.jobs [--n N] [--runs R]}.

Against one C{twistd taskd} daemon (2 workers, a journal file in a
temporary directory, C{synchronous=FULL}) on 127.0.0.1, in the same run:

- durable submits per second: C{submit}s pipelined (1,000 in flight),
  each answered once its job is synced to disk (the jobs are delayed an
  hour, so that running them takes nothing from the submits);
- plain calls per second, pipelined the same way, for comparison;
- end-to-end jobs per second: N jobs submitted to run at once, then a
  C{wait} for each, until the last has ended;
- the daemon's lateness during a submit burst: the round trip of a
  C{stats} request sent every 10 ms on another connection while the
  submits go (its p50 and p99);
- the journal's size per 1,000 ended jobs (after a clean stop, which
  checkpoints the WAL into the file).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import selectors
import socket
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import rawclient  # noqa: E402
from bench.run import Process  # noqa: E402


def daemon(journal: str) -> Process:
    return Process(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "taskd", "--listen", "tcp:0:interface=127.0.0.1", "--workers", "2", "--prefetch", "4",
         "--max-queue", "100000", "--journal", journal, "--max-jobs", "1000000"],
        wait=r"starting on (\d+)[\s\S]*pool ready",
    )


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def pipelined(port: int, lines: list[bytes], inFlight: int, check: Callable[[int, Any], bool]) -> float:
    """
    Like L{rawclient.pipelined}, with C{check} given each whole reply (an
    C{accepted} is no C{result}).
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    n, sent, received, bad = len(lines), 0, 0, 0
    out, buffer = bytearray(), b""
    start = time.perf_counter()
    while received < n:
        while sent < n and sent - received < inFlight:
            out += lines[sent]
            sent += 1
        selector.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
        for _, mask in selector.select():
            if mask & selectors.EVENT_WRITE and out:
                del out[: sock.send(out)]
            if mask & selectors.EVENT_READ:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError(f"closed after {received} replies")
                *complete, buffer = (buffer + chunk).split(b"\n")
                for line in complete:
                    reply = json.loads(line)
                    bad += not check(reply.get("id"), reply)
                    received += 1
    elapsed = time.perf_counter() - start
    selector.close()
    sock.close()
    if bad:
        raise AssertionError(f"{bad} wrong replies")
    return elapsed


def lateness(port: int, stop: Any, out: Any) -> None:
    """
    Send C{stats} every 10 ms until C{stop}; send C{out} the list of
    (when it was sent, its round trip).  Run in a process of its own: in
    the process that sends the burst, a round trip would include waiting
    for the GIL (up to its 5 ms switch interval), which is not the
    daemon's lateness.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    rtts: list[tuple[float, float]] = []
    while not stop.is_set():
        sent, t = time.time(), time.perf_counter()
        sock.sendall(b'{"type":"stats"}\n')
        reader.readline()
        rtts.append((sent, time.perf_counter() - t))
        time.sleep(0.01)
    sock.close()
    out.send(rtts)


def watched(port: int, burst: Callable[[], float]) -> tuple[list[float], float]:
    """
    Run C{burst} while L{lateness} watches the daemon from another process.

    @return: the sorted round trips of C{stats} sent during the burst, and
        what C{burst} returned.
    """
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    receiving, sending = context.Pipe(duplex=False)
    watcher = context.Process(target=lateness, args=(port, stop, sending))
    watcher.start()
    try:
        time.sleep(1.0)  # the watcher's start-up
        start = time.time()
        result = burst()
        end = time.time()
    finally:
        stop.set()
        rtts = receiving.recv()
        watcher.join()
    return sorted(rtt for sent, rtt in rtts if start <= sent <= end), result


def once(n: int) -> dict[str, float]:
    work = tempfile.mkdtemp(prefix="taskd-w7-")
    journal = os.path.join(work, "journal.sqlite")
    d = daemon(journal)
    try:
        port = int(d.match.group(1))  # type: ignore[union-attr]
        accepted = lambda i, r: r.get("type") == "accepted"  # noqa: E731
        calls = [rawclient.request("add", [i, 1], i) for i in range(n)]
        pipelined(port, calls[:1000], 100, lambda i, r: True)  # warm up
        callRtts, callSeconds = watched(port, lambda: pipelined(port, calls, 1000, lambda i, r: r.get("result") == i + 1))
        later = [line({"type": "submit", "function": "add", "args": [i, 1], "id": i, "delay": 3600}) for i in range(n)]
        during, submitSeconds = watched(port, lambda: pipelined(port, later, 1000, accepted))
        now = [line({"type": "submit", "function": "add", "args": [i, 1], "id": i}) for i in range(n)]
        ids: list[str] = []

        def keep(i: int, r: Any) -> bool:
            ids.append(r["job"])
            return bool(r.get("type") == "accepted")

        t = time.perf_counter()
        pipelined(port, now, 1000, keep)
        waits = [line({"type": "wait", "job": job, "id": i}) for i, job in enumerate(ids)]
        pipelined(port, waits, 1000, lambda i, r: r.get("type") == "result")
        endToEnd = time.perf_counter() - t
    finally:
        d.stop()
    size = os.path.getsize(journal)
    return {
        "durable_submits_per_s": n / submitSeconds,
        "plain_calls_per_s": n / callSeconds,
        "jobs_end_to_end_per_s": n / endToEnd,
        "stats_rtt_during_burst_p50_ms": 1000 * during[len(during) // 2],
        "stats_rtt_during_burst_p99_ms": 1000 * during[min(len(during) - 1, int(len(during) * 0.99))],
        "stats_rtt_during_calls_p99_ms": 1000 * callRtts[min(len(callRtts) - 1, int(len(callRtts) * 0.99))],
        "journal_kib_per_1000_jobs": size / 1024 / (2 * n) * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="jobs (and calls) per measurement")
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args(argv)
    runs = [once(options.n) for _ in range(options.runs)]
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:34} median {statistics.median(values):10.1f}   runs {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
