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
  checkpoints the WAL into the file);
- figures the machine's load changes little (L{bench.turns}, inside the
  daemon): the reactor thread's CPU time per durable submit during the
  burst, and its longest turns in CPU time (the p99 and the longest).

C{--against OTHER_CHECKOUT} runs the same measurements against a daemon
of another checkout, interleaved run by run, and prints both.
C{--profile FILE} writes a cProfile of the daemon's reactor thread during
the (first run's) submit burst.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import selectors
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import rawclient, run, turns  # noqa: E402
from bench.run import Process  # noqa: E402


def daemon(journal: str, root: str, instrument: dict[str, str]) -> Process:
    """
    Start a daemon of the checkout at C{root}, with L{bench.turns} in it
    (C{instrument}: its environment variables).
    """
    base = [p for p in sys.path if p and os.path.abspath(p) != run.ROOT]
    saved = run.ENV, run.ROOT
    run.ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + base), **instrument)
    run.ROOT = root
    try:
        return Process(
            [sys.executable, "-c", turns.command(), "-n", "--pidfile=",
             "taskd", "--listen", "tcp:0:interface=127.0.0.1", "--workers", "2", "--prefetch", "4",
             "--max-queue", "100000", "--journal", journal, "--max-jobs", "1000000"],
            wait=r"starting on (\d+)[\s\S]*pool ready",
        )
    finally:
        run.ENV, run.ROOT = saved


def threadCPU(pid: int) -> float:
    """
    @return: the CPU seconds the main (reactor) thread of C{pid} has used.
    """
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def watched(port: int, burst: Callable[[], float], window: list[float] | None = None) -> tuple[list[float], float]:
    """
    Run C{burst} while L{lateness} watches the daemon from another process.

    @param window: given, it is set to the burst's start and end (wall
        clock).
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
    if window is not None:
        window[:] = [start, end]
    return sorted(rtt for sent, rtt in rtts if start <= sent <= end), result


def once(n: int, root: str = run.ROOT, profile: str | None = None, phase: str = "submit") -> dict[str, float]:
    work = tempfile.mkdtemp(prefix="taskd-w7-")
    journal = os.path.join(work, "journal.sqlite")
    turnsFile = os.path.join(work, "turns.json")
    instrument = {"TASKD_BENCH_TURNS": turnsFile}
    if profile:
        instrument["TASKD_BENCH_PROFILE"] = os.path.abspath(profile)
    d = daemon(journal, root, instrument)
    pid = d.popen.pid
    window: list[float] = []
    try:
        port = int(d.match.group(1))  # type: ignore[union-attr]
        accepted = lambda i, r: r.get("type") == "accepted"  # noqa: E731
        calls = [rawclient.request("add", [i, 1], i) for i in range(n)]
        pipelined(port, calls[:1000], 100, lambda i, r: True)  # warm up
        callRtts, callSeconds = watched(port, lambda: pipelined(port, calls, 1000, lambda i, r: r.get("result") == i + 1))
        later = [line({"type": "submit", "function": "add", "args": [i, 1], "id": i, "delay": 3600}) for i in range(n)]
        cpuBefore = threadCPU(pid)
        if profile and phase == "submit":
            os.kill(pid, signal.SIGUSR2)
        during, submitSeconds = watched(port, lambda: pipelined(port, later, 1000, accepted), window)
        if profile and phase == "submit":
            os.kill(pid, signal.SIGUSR2)
        submitCPU = threadCPU(pid) - cpuBefore
        now = [line({"type": "submit", "function": "add", "args": [i, 1], "id": i}) for i in range(n)]
        ids: list[str] = []

        def keep(i: int, r: Any) -> bool:
            ids.append(r["job"])
            return bool(r.get("type") == "accepted")

        if profile and phase == "e2e":
            os.kill(pid, signal.SIGUSR2)
        t = time.perf_counter()
        pipelined(port, now, 1000, keep)
        waits = [line({"type": "wait", "job": job, "id": i}) for i, job in enumerate(ids)]
        pipelined(port, waits, 1000, lambda i, r: r.get("type") == "result")
        endToEnd = time.perf_counter() - t
        if profile and phase == "e2e":
            os.kill(pid, signal.SIGUSR2)
    finally:
        d.stop()
    size = os.path.getsize(journal)
    with open(turnsFile) as f:
        turnsRead = json.load(f)
    shutil.rmtree(work)
    burstTurns = [t for t in turnsRead["turns"] if window[0] <= t[0] <= window[1]]
    inBurst = sorted(t[1] for t in burstTurns)
    if turnsRead.get("counted"):
        print("longest turns in the submit burst (CPU ms, then calls of", ", ".join(turnsRead["counted"]) + "):", file=sys.stderr)
        for t in sorted(burstTurns, key=lambda t: -t[1])[:12]:
            print(f"  {1000 * t[1]:6.2f} {t[2]}", file=sys.stderr)
    return {
        "durable_submits_per_s": n / submitSeconds,
        "plain_calls_per_s": n / callSeconds,
        "jobs_end_to_end_per_s": n / endToEnd,
        "stats_rtt_during_burst_p50_ms": 1000 * during[len(during) // 2],
        "stats_rtt_during_burst_p99_ms": 1000 * during[min(len(during) - 1, int(len(during) * 0.99))],
        "stats_rtt_during_calls_p99_ms": 1000 * callRtts[min(len(callRtts) - 1, int(len(callRtts) * 0.99))],
        "journal_kib_per_1000_jobs": size / 1024 / (2 * n) * 1000,
        "reactor_cpu_us_per_submit": 1e6 * sum(inBurst) / n,
        "reactor_cpu_us_per_submit_proc": 1e6 * submitCPU / n,
        "reactor_turns_in_burst": len(inBurst),
        "reactor_turn_cpu_p99_ms": 1000 * inBurst[min(len(inBurst) - 1, int(len(inBurst) * 0.99))],
        "reactor_turn_cpu_max_ms": 1000 * inBurst[-1],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="jobs (and calls) per measurement")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against", metavar="OTHER_CHECKOUT", help="interleave runs against this checkout's daemon")
    parser.add_argument("--profile", metavar="FILE", help="cProfile (CPU time) the daemon's reactor thread during the first run's submit burst")
    parser.add_argument("--profile-phase", choices=["submit", "e2e"], default="submit", help="profile the submit burst (default) or the end-to-end jobs")
    options = parser.parse_args(argv)
    sides = {"this": run.ROOT}
    if options.against:
        sides = {"other": os.path.abspath(options.against), "this": run.ROOT}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for i in range(options.runs):
        for name, root in sides.items():
            profile = options.profile if i == 0 and name == "this" else None
            runs[name].append(once(options.n, root, profile, options.profile_phase))
            load = open("/proc/loadavg").read().split()[0]
            print(f"{name} run {i + 1}: load {load}, " + ", ".join(f"{k} {v:.1f}" for k, v in runs[name][-1].items()), file=sys.stderr, flush=True)
    for name, mine in runs.items():
        if len(sides) > 1:
            print(f"{name}: {sides[name]}")
        for key in mine[0]:
            values = [r[key] for r in mine]
            print(f"{key:34} median {statistics.median(values):10.1f}   runs {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
