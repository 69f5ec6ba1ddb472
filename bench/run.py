"""
The benchmark: C{python -m bench [--quick] [--runs N] [--json FILE]}.

Starts everything it needs on 127.0.0.1 (C{twistd taskd} daemons, the
ceiling line server), runs each workload C{--runs} times against taskd
and the references, and prints medians and the target ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as "python bench/run.py"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import mixed, rawclient  # noqa: E402
from bench.rawclient import request  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in sys.path if p]))


class Process:
    """
    A subprocess we started, stopped by its PID when done.
    """

    def __init__(self, args: list[str], wait: str | None = None) -> None:
        self.log = tempfile.TemporaryFile()
        self.popen = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
        self.match: re.Match[bytes] | None = None
        if wait is not None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                self.log.seek(0)
                self.match = re.search(wait.encode(), self.log.read())
                if self.match:
                    return
                if self.popen.poll() is not None:
                    break
                time.sleep(0.05)
            self.stop()
            self.log.seek(0)
            raise RuntimeError(f"{args} did not start:\n{self.log.read().decode(errors='replace')}")

    def output(self) -> bytes:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


#: The daemon's --prefetch in the benchmark: the workloads are short tasks.
PREFETCH = 4

#: W1's second taskd row: more calls sent ahead to each worker.
DEEP_PREFETCH = 32


class Daemon(Process):
    def __init__(self, workers: int, prefetch: int = PREFETCH, *options: str) -> None:
        super().__init__(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             # A deeper accept queue than Twisted's default 50: W1a and the
             # idle-connections measurement open connections in bursts.
             "taskd", "--listen", "tcp:0:interface=127.0.0.1:backlog=1024", "--workers", str(workers),
             "--prefetch", str(prefetch), "--max-queue", "100000", "--max-connections", "20000",
             "--journal", ":memory:", *options],
            wait=r"starting on (\d+)[\s\S]*pool ready",
        )
        assert self.match is not None
        self.port = int(self.match.group(1))
        self.pid = self.popen.pid
        self.httpPort = None
        if "--http" in options:
            m = re.search(rb"StatusSite starting on (\d+)", self.output())
            assert m is not None
            self.httpPort = int(m.group(1))

    def workerPids(self) -> list[int]:
        with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
            return [int(p) for p in f.read().split()]


class Scraper:
    """
    Fetches a daemon's C{/metrics} once a second, as Prometheus would (at
    15 times its usual rate), while a workload runs: from a process of its
    own, so that the scraping does not take the benchmark client's CPU (a
    thread in the client's process slowed the client, and through it the
    daemon's batches).

    The process is started, and its modules imported, before the runs
    (L{begin} and L{end} tell it when to scrape): a Python process
    starting at the beginning of each measured run took 50 to 80 ms of the
    machine's CPU from that run alone.  It scrapes once at L{begin} and
    then once a second, so that every run has a scrape in it, however
    short (with the first scrape a second in, only the runs that lasted
    over a second had one: the slow runs).
    """

    _SCRIPT = (
        "import os, select, sys, time, urllib.request\n"
        "url = f'http://127.0.0.1:{sys.argv[1]}/metrics'\n"
        "print('ready', flush=True)\n"
        "scraping, n, due = False, 0, 0.0\n"
        "while True:\n"
        "    wait = max(0.0, due - time.monotonic()) if scraping else None\n"
        "    if select.select([0], [], [], wait)[0]:\n"
        "        line = sys.stdin.readline()\n"
        "        if not line:\n"
        "            break\n"
        "        scraping = line.strip() == 'begin'\n"
        "        if scraping:\n"
        "            n, due = 0, time.monotonic()\n"
        "        else:\n"
        "            print(n, flush=True)\n"
        "        continue\n"
        "    with urllib.request.urlopen(url, timeout=10) as r:\n"
        "        assert b'taskd_calls_total' in r.read()\n"
        "    n, due = n + 1, due + 1.0\n"
    )

    def __init__(self, port: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", self._SCRIPT, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None and self._process.stdin is not None
        self._in, self._out = self._process.stdin, self._process.stdout
        if self._out.readline().strip() != "ready":
            raise RuntimeError("the scraper did not start")

    def begin(self) -> None:
        """
        Scrape now, and then once a second.
        """
        self._in.write("begin\n")
        self._in.flush()

    def end(self) -> int:
        """
        Stop scraping.

        @return: how many scrapes were made since L{begin}.
        """
        self._in.write("end\n")
        self._in.flush()
        return int(self._out.readline())

    def stop(self) -> None:
        """
        End the process.
        """
        self._in.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def httpCost(runs: int, lines: list[bytes], check: Callable[[int, Any], bool], workers: int = 2) -> dict[str, list[dict[str, Any]]]:
    """
    W1 against two daemons started alike, one with C{--http} (the pool's
    observer on, C{/metrics} scraped once at the start of each run and
    then every second), runs interleaved.  The scraper's process runs
    throughout, idle but for the C{--http} runs.
    """
    off, on = Daemon(workers), Daemon(workers, PREFETCH, "--http", "tcp:0:interface=127.0.0.1")
    results: dict[str, list[dict[str, Any]]] = {"taskd_raw_http_off": [], "taskd_raw_http_on": []}
    scraper = None
    try:
        assert on.httpPort is not None
        scraper = Scraper(on.httpPort)
        for i in range(runs):
            r = pipelinedCPU(off.port, lines, check, off.pid, off.workerPids())
            results["taskd_raw_http_off"].append(r)
            scraper.begin()
            r = pipelinedCPU(on.port, lines, check, on.pid, on.workerPids())
            r["scrapes"] = scraper.end()
            results["taskd_raw_http_on"].append(r)
            print(f"  W1 --http off/on run {i + 1}: {results['taskd_raw_http_off'][-1]['calls_per_s']:,.0f} / {r['calls_per_s']:,.0f} calls/s ({r['scrapes']} scrapes)", file=sys.stderr)
    finally:
        if scraper is not None:
            scraper.stop()
        off.stop()
        on.stop()
    return results


def rssMB(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpuSeconds(pid: int) -> float:
    """
    User plus system CPU time a process has used.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def withCPU(run: Callable[[], float], calls: int, server: int, workers: Sequence[int] = ()) -> dict[str, Any]:
    """
    Run C{calls} calls (C{run} returns the seconds they took), and measure
    the CPU time per call of the client (this process), the server and
    its workers: on 2 shared cores, their sum bounds the throughput.
    """
    before = [cpuSeconds(p) for p in [server, *workers]]
    mine = os.times()
    seconds = run()
    t = os.times()
    after = [cpuSeconds(p) for p in [server, *workers]]
    perCall = 1e6 / calls
    result = {
        "calls_per_s": calls / seconds,
        "cpu_us_client": (t.user + t.system - mine.user - mine.system) * perCall,
        "cpu_us_server": (after[0] - before[0]) * perCall,
    }
    if workers:
        result["cpu_us_workers"] = (sum(after[1:]) - sum(before[1:])) * perCall
    return result


def pipelinedCPU(port: int, lines: list[bytes], check: Callable[[int, Any], bool], server: int, workers: Sequence[int] = ()) -> dict[str, Any]:
    """
    W1 with the raw client, with the CPU time per call (L{withCPU}).
    """
    return withCPU(lambda: rawclient.pipelined(port, lines, 100, check), len(lines), server, workers)


def connectionsCPU(port: int, lines: list[bytes], check: Callable[[int, Any], bool], server: int, workers: Sequence[int] = ()) -> dict[str, Any]:
    """
    W1a (a connection per call) with the raw client, with the CPU time per
    call (L{withCPU}).
    """
    return withCPU(lambda: rawclient.connectionPerCall(port, lines, 100, check), len(lines), server, workers)


def clientCPU(spec: dict[str, Any], server: int, workers: Sequence[int]) -> dict[str, Any]:
    """
    W1 with the taskd client (in a process of its own, which measures its
    own CPU time per call), with the daemon's and workers' CPU per call.
    """
    before = [cpuSeconds(p) for p in [server, *workers]]
    result = measure(spec)
    after = [cpuSeconds(p) for p in [server, *workers]]
    perCall = 1e6 / spec["n"]
    result["cpu_us_server"] = (after[0] - before[0]) * perCall
    result["cpu_us_workers"] = (sum(after[1:]) - sum(before[1:])) * perCall
    return result


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.measure", json.dumps(spec)],
        capture_output=True, env=ENV, cwd=ROOT, timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{spec['kind']} {spec.get('workload')} failed:\n{out.stdout.decode()}{out.stderr.decode()}")
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def calibrateBurn(target: float = 0.02) -> int:
    from taskd.examples import burn

    n = 10000
    while True:
        t = time.perf_counter()
        burn(n)
        took = time.perf_counter() - t
        if took > 0.005:
            return int(n * target / took)
        n *= 2


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> None:
    results: dict[str, Any]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few hundred calls, one run: to check the benchmark works, not to judge speed")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--skip-ampoule", action="store_true", help="leave out ampoule (if the bench extra is not installed)")
    parser.add_argument("--http-only", action="store_true", help="only W1 with --http off and on (needs prometheus_client)")
    parser.add_argument("--only", metavar="W1,W1A,...", help="only these workloads (w1, w1a, w2, w3, w4, w5, w6, memory), comma-separated")
    options = parser.parse_args(argv)
    quick = options.quick
    runs = 1 if quick else options.runs
    n1 = 300 if quick else 20000
    n2 = 100 if quick else 2000
    n3 = 20 if quick else 200
    n4 = 50 if quick else 2000
    n5 = 50 if quick else 1000
    nInline = 20 if quick else 100
    idleConnections = 200 if quick else 10000
    if options.http_only:
        results = {"machine": machine(), "quick": quick, "runs": runs}
        lines = [request("add", [i, 1], i) for i in range(n1)]
        results["w1"] = httpCost(runs, lines, lambda i, r: r == i + 1)
        report(results)
        if options.json:
            with open(options.json, "w") as f:
                json.dump(results, f, indent=1)
        return
    only = None if options.only is None else set(options.only.lower().split(","))

    def want(workload: str) -> bool:
        return only is None or workload in only or (workload == "w1http" and "w1" in only and "nohttp" not in only)

    burnN = calibrateBurn() if want("w3") else 0
    results = {"machine": machine(), "quick": quick, "runs": runs, "burn_n": burnN}
    ampoule = not options.skip_ampoule

    def repeat(name: str, f: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i in range(runs):
            r = f()
            out.append(r)
            print(f"  {name} run {i + 1}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()})}", file=sys.stderr)
        return out

    daemon = Daemon(2)
    line = None
    idleRss = rssMB(daemon.pid)
    try:
        portFile = tempfile.mktemp()
        line = Process([sys.executable, "-m", "bench.servers", "line", portFile], wait=None)
        for _ in range(200):
            if os.path.exists(portFile) and open(portFile).read():
                break
            time.sleep(0.05)
        linePort = int(open(portFile).read())
        os.remove(portFile)

        addLines = [request("add", [i, 1], i) for i in range(n1)]
        addCheck = lambda i, r: r == i + 1  # noqa: E731
        value = "x" * 65536
        echoLines = [request("echo", [value], i) for i in range(n4)]
        echoCheck = lambda i, r: r == value  # noqa: E731

        w1: dict[str, Any] = {}
        if want("w1"):
            results["w1"] = w1
            w1["taskd_raw"] = repeat("W1 taskd raw", lambda: pipelinedCPU(daemon.port, addLines, addCheck, daemon.pid, daemon.workerPids()))
            plain = Daemon(2, prefetch=1)
            try:
                w1["taskd_raw_prefetch1"] = repeat("W1 taskd raw, --prefetch 1", lambda: {"calls_per_s": n1 / rawclient.pipelined(plain.port, addLines, 100, addCheck)})
            finally:
                plain.stop()
            # Issue 19's W1 target is for the best --prefetch: short calls
            # gain from more calls waiting in each worker's pipe.
            deep = Daemon(2, prefetch=DEEP_PREFETCH)
            try:
                w1["taskd_raw_deep"] = repeat(f"W1 taskd raw, --prefetch {DEEP_PREFETCH}", lambda: pipelinedCPU(deep.port, addLines, addCheck, deep.pid, deep.workerPids()))
            finally:
                deep.stop()
            w1["taskd_client"] = repeat("W1 taskd client", lambda: clientCPU({"kind": "taskd-client", "port": daemon.port, "workload": "w1", "n": n1}, daemon.pid, daemon.workerPids()))
            # The same through TaskClient.callMany, docs/client.md's way to run many calls.
            w1["taskd_client_window"] = repeat("W1 taskd client, callMany", lambda: clientCPU({"kind": "taskd-client", "port": daemon.port, "workload": "w1", "n": n1, "window": True}, daemon.pid, daemon.workerPids()))
            w1["ceiling_tcp"] = repeat("W1 line ceiling", lambda: pipelinedCPU(linePort, addLines, addCheck, line.popen.pid))
            w1["ceiling_pipe"] = repeat("W1 pipe ceiling", lambda: measure({"kind": "pipe", "workload": "w1", "n": n1}))
            w1["multiprocessing"] = repeat("W1 multiprocessing", lambda: measure({"kind": "multiprocessing", "workers": 2, "workload": "w1", "n": n1}))
            if want("w1http"):
                w1.update(httpCost(runs, addLines, addCheck))
            if ampoule:
                w1["ampoule"] = repeat("W1 ampoule", lambda: measure({"kind": "ampoule", "workers": 2, "workload": "w1", "n": n1}))

        if want("w1a"):
            w1a = results["w1a"] = {}
            perCallLines = [request("add", [i, 1]) for i in range(n1)]
            w1a["taskd_raw"] = repeat("W1a taskd", lambda: connectionsCPU(daemon.port, perCallLines, addCheck, daemon.pid, daemon.workerPids()))
            w1a["ceiling_tcp"] = repeat("W1a line ceiling", lambda: connectionsCPU(linePort, perCallLines, addCheck, line.popen.pid))

        if want("w2"):
            w2 = results["w2"] = {}

            def seq(port: int) -> dict[str, Any]:
                times = sorted(rawclient.sequential(port, [request("add", [i, 1], i) for i in range(n2)], addCheck))
                return {"p50_us": 1e6 * times[len(times) // 2], "p99_us": 1e6 * times[int(len(times) * 0.99)]}

            w2["taskd_raw"] = repeat("W2 taskd raw", lambda: seq(daemon.port))
            w2["taskd_client"] = repeat("W2 taskd client", lambda: measure({"kind": "taskd-client", "port": daemon.port, "workload": "w2", "n": n2}))
            w2["ceiling_tcp"] = repeat("W2 line ceiling", lambda: seq(linePort))
            w2["ceiling_pipe"] = repeat("W2 pipe ceiling", lambda: measure({"kind": "pipe", "workload": "w2", "n": n2}))
            w2["multiprocessing"] = repeat("W2 multiprocessing", lambda: measure({"kind": "multiprocessing", "workers": 2, "workload": "w2", "n": n2}))
            if ampoule:
                w2["ampoule"] = repeat("W2 ampoule", lambda: measure({"kind": "ampoule", "workers": 2, "workload": "w2", "n": n2}))

        if want("w3"):
            w3 = results["w3"] = {}
            burnLines = [request("burn", [burnN], i) for i in range(n3)]
            anyCheck = lambda i, r: isinstance(r, int)  # noqa: E731
            for workers in (1, 2):
                # 20 ms tasks: --prefetch 1, as pool.md advises for tasks that
                # long (with 4, a worker that runs dry near the end idles while
                # the other still holds up to 3 calls).
                w3Daemon = Daemon(workers, prefetch=1)
                try:
                    w3[f"taskd_{workers}"] = repeat(f"W3 taskd {workers} worker(s)", lambda: {"seconds": rawclient.pipelined(w3Daemon.port, burnLines, 100, anyCheck)})
                finally:
                    w3Daemon.stop()
            for workers in (1, 2):
                w3[f"multiprocessing_{workers}"] = repeat(f"W3 multiprocessing {workers}", lambda: measure({"kind": "multiprocessing", "workers": workers, "workload": "w3", "n": n3, "burn": burnN}))
                if ampoule:
                    w3[f"ampoule_{workers}"] = repeat(f"W3 ampoule {workers}", lambda: measure({"kind": "ampoule", "workers": workers, "workload": "w3", "n": n3, "burn": burnN}))

        if want("w4"):
            w4 = results["w4"] = {}
            def w4CPU(port: int, server: int, workers: Sequence[int] = ()) -> dict[str, Any]:
                # MB/s, and each process's CPU time per call (issue 19).
                r = withCPU(lambda: rawclient.pipelined(port, echoLines, 50, echoCheck), n4, server, workers)
                return dict(r, mb_per_s=r["calls_per_s"] * 65536 * 2 / 1e6)

            w4["taskd_raw"] = repeat("W4 taskd raw", lambda: w4CPU(daemon.port, daemon.pid, daemon.workerPids()))
            w4["ceiling_tcp"] = repeat("W4 line ceiling", lambda: w4CPU(linePort, line.popen.pid))
            w4["multiprocessing"] = repeat("W4 multiprocessing", lambda: measure({"kind": "multiprocessing", "workers": 2, "workload": "w4", "n": n4, "size": 65536}))
            if ampoule:
                # AMP caps a value near 64 KiB: ampoule echoes 60 KiB.
                w4["ampoule_60k"] = repeat("W4 ampoule (60 KiB)", lambda: measure({"kind": "ampoule", "workers": 2, "workload": "w4", "n": n4, "size": 61440}))

        if want("w5"):
            w5 = results["w5"] = {}
            w5["taskd"] = repeat("W5 taskd", lambda: measure({"kind": "w5", "port": daemon.port, "n": n5, "inline": False}))
            w5["inline"] = repeat("W5 inline", lambda: measure({"kind": "w5", "n": nInline, "inline": True}))

        if want("w6"):
            w6 = results["w6"] = {}
            n6 = 10 if quick else 100
            for name, prefetch, daemonOptions, priority in mixed.SETTINGS:
                w6Daemon = Daemon(2, prefetch, *daemonOptions)
                try:
                    w6[name] = repeat(f"W6 short calls, {name}", lambda: mixed.shortCalls(w6Daemon.port, n6, priority))
                finally:
                    w6Daemon.stop()

        if want("memory"):
            memory = results["memory"] = {}
            memory["daemon_idle_mb"] = idleRss  # measured before any workload
            memory["daemon_after_workloads_mb"] = rssMB(daemon.pid)
            memory["worker_mb"] = [round(rssMB(p), 1) for p in daemon.workerPids()]
            baseFds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
            socks = []
            for _ in range(idleConnections):
                socks.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=10))
            deadline = time.monotonic() + 30
            while len(os.listdir(f"/proc/{daemon.pid}/fd")) < baseFds + idleConnections and time.monotonic() < deadline:
                time.sleep(0.1)
            memory["accepted_connections"] = len(os.listdir(f"/proc/{daemon.pid}/fd")) - baseFds
            memory["idle_connections"] = idleConnections
            memory["daemon_with_connections_mb"] = rssMB(daemon.pid)
            for s in socks:
                s.close()

    finally:
        daemon.stop()
        if line is not None:
            line.stop()

    report(results)
    if options.json:
        with open(options.json, "w") as f:
            json.dump(results, f, indent=2)


def machine() -> dict[str, Any]:
    import twisted

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "twisted": twisted.__version__, "platform": platform.platform()}


def report(r: dict[str, Any]) -> None:
    def m(section: str, name: str, key: str) -> float | None:
        runs = r.get(section, {}).get(name)
        return median(runs, key) if runs and key in runs[0] else None

    rows = []

    def row(workload: str, system: str, value: float | None, unit: str) -> None:
        if value is not None:
            rows.append((workload, system, f"{value:,.1f}", unit))

    for name in ("taskd_raw", "taskd_raw_prefetch1", "taskd_raw_deep", "taskd_raw_http_off", "taskd_raw_http_on", "taskd_client", "taskd_client_window", "ampoule", "multiprocessing", "ceiling_tcp", "ceiling_pipe"):
        row("W1 throughput", name, m("w1", name, "calls_per_s"), "calls/s")
    for name in ("taskd_raw", "taskd_raw_deep", "taskd_raw_http_off", "taskd_raw_http_on", "taskd_client", "taskd_client_window", "ceiling_tcp"):
        for part in ("client", "server", "workers"):
            row(f"W1 CPU per call, {part}", name, m("w1", name, f"cpu_us_{part}"), "us")
    for name in ("taskd_raw", "ceiling_tcp"):
        row("W1a connection per call", name, m("w1a", name, "calls_per_s"), "calls/s")
    for name in ("taskd_raw", "ceiling_tcp"):
        for part in ("client", "server", "workers"):
            row(f"W1a CPU per call, {part}", name, m("w1a", name, f"cpu_us_{part}"), "us")
    for name in ("taskd_raw", "taskd_client", "ampoule", "multiprocessing", "ceiling_tcp", "ceiling_pipe"):
        row("W2 latency p50", name, m("w2", name, "p50_us"), "us")
        row("W2 latency p99", name, m("w2", name, "p99_us"), "us")
    for name in ("taskd_1", "taskd_2", "ampoule_1", "ampoule_2", "multiprocessing_1", "multiprocessing_2"):
        row("W3 200 x 20 ms CPU", name, m("w3", name, "seconds"), "s")
    for name in ("taskd_raw", "ampoule_60k", "multiprocessing", "ceiling_tcp"):
        row("W4 64 KiB echo", name, m("w4", name, "mb_per_s"), "MB/s")
    for name in ("taskd_raw", "ceiling_tcp"):
        for part in ("client", "server", "workers"):
            row(f"W4 CPU per call, {part}", name, m("w4", name, f"cpu_us_{part}"), "us")
    for name in ("taskd", "inline"):
        for key in ("p50_ms", "p99_ms", "max_ms"):
            row(f"W5 lateness {key[:-3]}", name, m("w5", name, key), "ms")
    for name, *_ in mixed.SETTINGS:
        row("W6 short among long, p50", name, m("w6", name, "p50_ms"), "ms")
        row("W6 short among long, p99", name, m("w6", name, "p99_ms"), "ms")
    mem = r.get("memory", {})
    row("memory", "daemon idle RSS (at start)", mem.get("daemon_idle_mb"), "MB")
    row("memory", "daemon RSS after the workloads", mem.get("daemon_after_workloads_mb"), "MB")
    row("memory", f"daemon with {mem.get('accepted_connections')} idle connections", mem.get("daemon_with_connections_mb"), "MB")
    for i, w in enumerate(mem.get("worker_mb", [])):
        row("memory", f"worker {i + 1} RSS", w, "MB")
    print(f"\ntaskd benchmark ({'quick' if r['quick'] else r['runs']} run(s), medians; taskd with --prefetch {PREFETCH} unless named, W3 with --prefetch 1) on {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, Twisted {r['machine']['twisted']}")
    width = max(len(x[0]) + len(x[1]) for x in rows) + 3
    for workload, system, value, unit in rows:
        print(f"  {workload + ' / ' + system:<{width}} {value:>12} {unit}")

    targets = []

    def target(name: str, value: float | None, goal: float, higher: bool = True) -> None:
        if value is None:
            targets.append((name, "n/a", "SKIP"))
            return
        ok = value >= goal if higher else value < goal
        targets.append((name, f"{value:.2f} ({'>=' if higher else '<'} {goal})", "PASS" if ok else "MISS"))

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    target("W1 raw / ampoule", ratio(m("w1", "taskd_raw", "calls_per_s"), m("w1", "ampoule", "calls_per_s")), 10)
    target("W1 raw / TCP line ceiling", ratio(m("w1", "taskd_raw", "calls_per_s"), m("w1", "ceiling_tcp", "calls_per_s")), 0.5)
    best = max((v for v in (m("w1", "taskd_raw", "calls_per_s"), m("w1", "taskd_raw_deep", "calls_per_s")) if v is not None), default=None)
    target(f"W1 raw, best of --prefetch {PREFETCH} and {DEEP_PREFETCH} / TCP line ceiling (issue 19)", ratio(best, m("w1", "ceiling_tcp", "calls_per_s")), 0.6)
    target("W1 taskd client / raw client", ratio(m("w1", "taskd_client", "calls_per_s"), m("w1", "taskd_raw", "calls_per_s")), 0.8)
    target("W1 taskd client with callMany / raw client", ratio(m("w1", "taskd_client_window", "calls_per_s"), m("w1", "taskd_raw", "calls_per_s")), 0.8)
    target("W1a / bare line server, a connection per call", ratio(m("w1a", "taskd_raw", "calls_per_s"), m("w1a", "ceiling_tcp", "calls_per_s")), 0.8)
    target("W1 taskd client / ampoule", ratio(m("w1", "taskd_client", "calls_per_s"), m("w1", "ampoule", "calls_per_s")), 6)
    target("W2 p50 ampoule / taskd raw", ratio(m("w2", "ampoule", "p50_us"), m("w2", "taskd_raw", "p50_us")), 1 / 0.3)
    target("W3 speedup 1 -> 2 workers", ratio(m("w3", "taskd_1", "seconds"), m("w3", "taskd_2", "seconds")), 1.85)
    target("W4 raw / ampoule", ratio(m("w4", "taskd_raw", "mb_per_s"), m("w4", "ampoule_60k", "mb_per_s")), 2)
    target("W5 p99 lateness with taskd, ms", m("w5", "taskd", "p99_ms"), 5, higher=False)
    # --http's cost: each on run against the off run just before it.
    on, off = r.get("w1", {}).get("taskd_raw_http_on"), r.get("w1", {}).get("taskd_raw_http_off")
    pairs = None if not on or not off else statistics.median(a["calls_per_s"] / b["calls_per_s"] for a, b in zip(on, off))
    target("W1 --http on / off, median of the interleaved pairs", pairs, 0.95)
    target("daemon idle RSS, MB", mem.get("daemon_idle_mb"), 40, higher=False)
    grow = None if mem.get("daemon_with_connections_mb") is None else mem["daemon_with_connections_mb"] - mem["daemon_after_workloads_mb"]
    target(f"RSS growth with {mem.get('idle_connections')} connections, MB", grow, 100, higher=False)
    if r["quick"]:
        # A few hundred calls on a busy CI machine say nothing about speed:
        # no verdicts, so that a green log holds no "MISS".
        print("\nquick mode: this checks that the benchmark runs; it does not judge speed (no targets checked).")
        r["targets"] = []
        return
    print("\ntargets:")
    for name, value, verdict in targets:
        print(f"  {verdict:4}  {name}: {value}")
    r["targets"] = [{"name": n, "value": v, "verdict": x} for n, v, x in targets]


if __name__ == "__main__":
    main()
