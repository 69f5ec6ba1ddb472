"""
W4's path in instructions per call, a count that a loaded machine does not
change: C{python -m bench.instructions --large [SIZE]} (or C{python -m
bench.large [SIZE]}).

A real daemon (C{twistd taskd}, two workers, C{--prefetch 4}, as W4 has
it) and the bare line server of L{bench.servers} run under C{valgrind
--tool=callgrind --trace-children=yes}; the raw client of
L{bench.rawclient} sends them C{echo} calls of a C{SIZE}-character string
(64 KiB by default), at most 50 unanswered, as W4 does.  Each process's
count is taken at its end, for 100 and for 300 calls; the difference
divided by 200 is what one call costs the daemon, its workers (their sum)
and the line server, start-up left out.

C{--cpu [RUNS]} measures instead of counting: W4 itself (2,000 calls)
against a daemon and the line server, alternately, C{RUNS} times each
(default 3), and prints each run's MB/s and the user and system CPU time
per call of the client, the server and the workers (from
C{/proc/PID/stat}), then their medians.

C{--syscalls} counts instead the daemon's system calls per call during
500 calls of W4 (C{strace -c} attached to its threads): reads of the
reply pipes, sends, receives, polls.

C{--functions} also prints, for the daemon and a worker, the C functions
whose own (exclusive) instructions per call are largest (the difference
of C{callgrind_annotate}'s figures between the two runs): where a call's
cost goes below the interpreter (JSON, copies, system calls).

Needs valgrind; C{PYTHONHASHSEED=0} makes runs repeat (the daemon's reads
and writes depend on timing, so counts move a little: see the figures in
docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

#: W4's value size and calls in flight.
SIZE = 65536
IN_FLIGHT = 50

#: The two call counts measured.
FEW, MANY = 100, 300


class Counted:
    """
    What one callgrind run of a server found.

    @ivar server: the server process's own instructions.
    @ivar workers: its workers' instructions, summed.
    @ivar files: the callgrind output file of each process (PID to path).
    @ivar serverPid: the server's PID.
    """

    def __init__(self, server: int, workers: int, files: dict[int, str], serverPid: int) -> None:
        self.server = server
        self.workers = workers
        self.files = files
        self.serverPid = serverPid

    def workerFiles(self) -> list[str]:
        """
        @return: the callgrind files of every other process (the workers).
        """
        return [path for pid, path in self.files.items() if pid != self.serverPid]


def served(n: int, server: str, size: int, outDir: str) -> Counted:
    """
    Run C{server} (C{"taskd"} or C{"line"}) under callgrind, send it C{n}
    echo calls of C{size} characters, at most L{IN_FLIGHT} unanswered,
    and stop it.

    @param outDir: where callgrind's files go (one per process).
    """
    from bench.rawclient import pipelined, request
    from bench.instructions import underValgrind
    from bench.run import PREFETCH

    valgrind = [
        "valgrind", "--tool=callgrind", "--trace-children=yes",
        f"--callgrind-out-file={outDir}/{server}.{n}.%p",
    ]
    portFile = tempfile.mktemp()
    if server == "taskd":
        command = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "taskd", "--listen", "tcp:0:interface=127.0.0.1", "--workers", "2",
            "--prefetch", str(PREFETCH), "--journal", ":memory:",
        ]
        ready: re.Pattern[bytes] | None = re.compile(rb"starting on (\d+)[\s\S]*pool ready")
    else:
        command = [sys.executable, "-m", "bench.servers", "line", portFile]
        ready = None
    value = "x" * size
    lines = [request("echo", [value], i) for i in range(n)]
    out, serverPid = underValgrind(
        valgrind, command, portFile, ready, 600,
        lambda port: pipelined(port, lines, IN_FLIGHT, lambda i, result: result == value),
    )
    counts: dict[int, int] = {}
    for pid, collected in re.findall(r"==(\d+)== Collected : (\d+)", out):
        # A worker forks, then execs: the last count of a PID is its whole.
        counts[int(pid)] = int(collected)
    if serverPid not in counts:
        raise SystemExit(f"no count for {server} in callgrind's output:\n{out}")
    files = {
        int(name.rsplit(".", 1)[1]): os.path.join(outDir, name)
        for name in os.listdir(outDir)
        if name.startswith(f"{server}.{n}.")
    }
    workers = sum(c for pid, c in counts.items() if pid != serverPid)
    return Counted(counts[serverPid], workers, files, serverPid)


def functions(path: str) -> dict[str, int]:
    """
    @return: each function's own (exclusive) instructions in the callgrind
        file at C{path}, as C{callgrind_annotate} gives them.
    """
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", path], capture_output=True, text=True, check=True
    ).stdout
    costs: dict[str, int] = {}
    for line in out.splitlines():
        match = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)", line)
        if match and "PROGRAM TOTALS" not in line:
            # "/path/to/file.c:function [/path/to/lib.so]" -> "file.c:function"
            name = re.sub(r" \[[^]]*\]$", "", match.group(2).strip()).rsplit("/", 1)[-1]
            costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def summed(paths: list[str]) -> dict[str, int]:
    """
    @return: L{functions} of each callgrind file in C{paths}, added up.
    """
    costs: dict[str, int] = {}
    for path in paths:
        for name, cost in functions(path).items():
            costs[name] = costs.get(name, 0) + cost
    return costs


def top(few: list[str], many: list[str], calls: int, limit: int = 25) -> list[tuple[str, float]]:
    """
    @return: the C{limit} functions whose own instructions grew most
        between the callgrind files C{few} and C{many} (each list's added
        up), per call.
    """
    a, b = summed(few), summed(many)
    grown = [(name, (b[name] - a.get(name, 0)) / calls) for name in b]
    grown.sort(key=lambda item: -item[1])
    return grown[:limit]


def times(pid: int) -> tuple[float, float]:
    """
    @return: the user and system CPU seconds process C{pid} has used.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu(runs: int, size: int, calls: int = 2000) -> None:
    """
    Run W4 against a daemon and the line server, alternately, C{runs}
    times each; print MB/s and CPU per call, each run's and the medians.
    """
    import statistics

    from bench.rawclient import pipelined, request
    from bench.run import Daemon, Process

    value = "x" * size
    lines = [request("echo", [value], i) for i in range(calls)]
    daemon = Daemon(2)
    portFile = tempfile.mktemp()
    line = Process([sys.executable, "-m", "bench.servers", "line", portFile])
    try:
        for _ in range(200):
            if os.path.exists(portFile) and os.path.getsize(portFile):
                break
            time.sleep(0.05)
        with open(portFile) as f:
            linePort = int(f.read())
        targets = {
            "taskd": (daemon.port, {"server": [daemon.pid], "workers": daemon.workerPids()}),
            "line": (linePort, {"server": [line.popen.pid]}),
        }
        found: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for run in range(runs):
            for name, (port, processes) in targets.items():
                before = {part: [times(p) for p in pids] for part, pids in processes.items()}
                mine = os.times()
                seconds = pipelined(port, lines, IN_FLIGHT, lambda i, result: result == value)
                t = os.times()
                row = {"mb_per_s": calls * size * 2 / seconds / 1e6}
                row["client_user"] = (t.user - mine.user) / calls * 1e6
                row["client_sys"] = (t.system - mine.system) / calls * 1e6
                for part, pids in processes.items():
                    after = [times(p) for p in pids]
                    for i, kind in enumerate(("user", "sys")):
                        row[f"{part}_{kind}"] = sum(a[i] - b[i] for a, b in zip(after, before[part])) / calls * 1e6
                found[name].append(row)
                print(f"{name} run {run + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
        print(f"medians of {runs} (MB/s; CPU in microseconds per call):")
        for name, rows in found.items():
            print(f"  {name}: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):.1f}" for k in rows[0]))
    finally:
        daemon.stop()
        line.stop()
        if os.path.exists(portFile):
            os.unlink(portFile)


def syscalls(size: int, calls: int = 500) -> None:
    """
    Count the daemon's system calls per call during W4 (C{strace -c}).
    """
    from bench.rawclient import pipelined, request
    from bench.run import Daemon

    value = "x" * size
    lines = [request("echo", [value], i) for i in range(calls)]
    daemon = Daemon(2)
    out = tempfile.mktemp()
    try:
        pipelined(daemon.port, lines[:IN_FLIGHT], IN_FLIGHT, lambda i, result: result == value)
        threads = sum((["-p", tid] for tid in os.listdir(f"/proc/{daemon.pid}/task")), [])
        tracer = subprocess.Popen(["strace", "-c", "-o", out, *threads], stderr=subprocess.DEVNULL)
        time.sleep(1)  # attached
        pipelined(daemon.port, lines, IN_FLIGHT, lambda i, result: result == value)
        tracer.send_signal(signal.SIGINT)
        tracer.wait()
        with open(out) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 5 and parts[3].isdigit():
                    print(f"{parts[-1]:<14} {int(parts[3]) / calls:6.2f} per call")
    finally:
        daemon.stop()
        if os.path.exists(out):
            os.unlink(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.large", description=__doc__)
    parser.add_argument("size", nargs="?", type=int, default=SIZE, help="characters per echoed string (default 65536)")
    parser.add_argument("--server", choices=["taskd", "line", "both"], default="both", help="which to count")
    parser.add_argument("--functions", action="store_true", help="also the C functions that cost most per call")
    parser.add_argument("--cpu", nargs="?", type=int, const=3, metavar="RUNS", help="measure W4's MB/s and CPU per call instead (RUNS alternate runs)")
    parser.add_argument("--keep", action="store_true", help="keep callgrind's files (for callgrind_annotate --tree=caller) and print where")
    parser.add_argument("--syscalls", action="store_true", help="count the daemon's system calls per call instead (strace -c)")
    options = parser.parse_args(argv)
    if options.syscalls:
        syscalls(options.size)
        return
    if options.cpu:
        cpu(options.cpu, options.size)
        return
    outDir = tempfile.mkdtemp(prefix="bench-large-")
    try:
        perCall: dict[str, float] = {}
        for server in ("taskd", "line") if options.server == "both" else (options.server,):
            few = served(FEW, server, options.size, outDir)
            many = served(MANY, server, options.size, outDir)
            calls = MANY - FEW
            perCall[server] = (many.server - few.server) / calls
            print(
                f"{server}: {perCall[server]:,.0f} instructions per {options.size}-character echo "
                f"(callgrind; {MANY} calls minus {FEW})", flush=True,
            )
            if server == "taskd":
                perCall["workers"] = (many.workers - few.workers) / calls
                print(f"taskd's workers: {perCall['workers']:,.0f} instructions per echo", flush=True)
            if options.functions:
                pairs = [(server, [few.files[few.serverPid]], [many.files[many.serverPid]])]
                if server == "taskd":
                    pairs.append(("taskd's workers", few.workerFiles(), many.workerFiles()))
                for name, a, b in pairs:
                    print(f"  {name}, own instructions per call by function:")
                    for function, cost in top(a, b, calls):
                        print(f"    {cost:>12,.0f}  {function}")
        if "taskd" in perCall and "line" in perCall:
            print(f"taskd (daemon) / bare line server: {perCall['taskd'] / perCall['line']:.2f}")
            print(f"taskd (daemon + workers) / bare line server: {(perCall['taskd'] + perCall['workers']) / perCall['line']:.2f}")
    finally:
        if options.keep:
            print(f"callgrind's files: {outDir}")
        else:
            shutil.rmtree(outDir, ignore_errors=True)


if __name__ == "__main__":
    main()
