"""
The daemon's relay in instructions per call, a count that a loaded machine
does not change: C{python -m bench.instructions [--observed]}.

Runs the daemon's path of L{bench.hotpath} (a connection on a
C{StringTransport} relaying pipelined C{add} calls, 100 at a time, to a
pool whose two workers are C{taskd.testing} fakes answering from real
pipes, their answers computed without C{taskd.worker}) under
C{valgrind --tool=callgrind} for 1,000 and for 3,000 calls, and prints the
difference divided by 2,000: what one call costs, start-up left out.
Needs valgrind; C{PYTHONHASHSEED=0} makes runs repeat exactly.

C{--connections} counts W1a's path instead, in a real daemon (C{twistd
taskd}, one worker) and in the bare line server of L{bench.servers} under
callgrind: connections made one at a time (connect, send a call, read the
reply, close), 1,500 minus 500, divided by 1,000: what one connection
costs each server, and their ratio, whatever the machine's load.

C{--large [SIZE]} counts W4's path (64 KiB echoes) in a real daemon, its
workers and the bare line server: see L{bench.large}.

C{--client [--window]} and C{--worker} count the Python client's path
(L{bench.clientpath}) and the worker's loop (L{bench.workerpath}) the same
way, per call.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable


def relay(n: int, observed: bool) -> None:
    """
    Relay C{n} calls through the daemon's path.
    """
    from bench.hotpath import daemonPath
    from taskd._frames import frame

    _, reactor, protocol, transport = daemonPath(n, observed)
    lines = [b'{"function":"add","args":[%d,1],"id":%d}\n' % (i, i) for i in range(n)]

    def answer() -> None:
        busy = True
        while busy:
            busy = False
            for process in reactor.processes:
                frames = process.written[:]
                del process.written[:]
                if frames:
                    busy = True
                    # The first argument plus one, read straight off the frame.
                    process.sendRaw(
                        b"".join(frame(b"R%d" % (int(f.split(b"[", 1)[1].split(b",", 1)[0]) + 1)) for f in frames)
                    )

    for start in range(0, n, 100):
        protocol.dataReceived(b"".join(lines[start : start + 100]))
        answer()
    assert transport.value().count(b"\n") == n
    if observed:
        # The observer's histograms take in the calls' times once a second
        # or when read (taskd.activity.TaskCounts): counted here too.
        protocol.factory.pool.observer.fold()


def count(n: int, observed: bool, extra: tuple[str, ...] = ()) -> int:
    """
    @param extra: more options for the measured run (C{--client}, ...).
    @return: the instructions callgrind counts for a run of C{n} calls.
    """
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", "bench.instructions", "--run", str(n), *extra]
    if observed:
        command.append("--observed")
    env = dict(os.environ, PYTHONHASHSEED="0")
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stderr
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise SystemExit(f"no count in callgrind's output:\n{out}")
    return int(match.group(1))


def underValgrind(
    valgrind: list[str],
    command: list[str],
    portFile: str,
    ready: re.Pattern[bytes] | None,
    timeout: float,
    serve: Callable[[int], object],
) -> tuple[str, int]:
    """
    Start C{command} under C{valgrind}, wait until it listens (its port
    read from its log with C{ready}, or from C{portFile}), C{serve(port)},
    and stop it (SIGTERM, by its PID).

    @return: what it and valgrind wrote, and its PID.
    """
    from bench.run import ENV, ROOT

    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            valgrind + command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env=dict(ENV, PYTHONHASHSEED="0"),
        )
        try:
            port = None
            deadline = time.monotonic() + timeout
            while port is None and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.2)
                if ready is not None:
                    log.seek(0)
                    match = ready.search(log.read())
                    port = int(match.group(1)) if match else None
                elif os.path.exists(portFile) and os.path.getsize(portFile):
                    with open(portFile) as f:
                        port = int(f.read())
            if port is None:
                log.seek(0)
                raise SystemExit(f"{command} did not start under valgrind:\n{log.read().decode(errors='replace')}")
            serve(port)
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
            process.wait()
            if os.path.exists(portFile):
                os.unlink(portFile)
        log.seek(0)
        return log.read().decode(errors="replace"), process.pid


def served(n: int, server: str, concurrent: int = 1) -> int:
    """
    @param server: C{"taskd"} or C{"line"} (the bare line server).
    @return: the instructions callgrind counts in C{server}'s process, from
        its start to its end, when it serves C{n} connections one at a time.
    """
    from bench.rawclient import connectionPerCall, request

    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    portFile = tempfile.mktemp()
    if server == "taskd":
        command = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "taskd", "--listen", "tcp:0:interface=127.0.0.1", "--workers", "1", "--journal", ":memory:",
        ]
        ready = re.compile(rb"starting on (\d+)[\s\S]*pool ready")
    else:
        command = [sys.executable, "-m", "bench.servers", "line", portFile]
        ready = None
    lines = [request("add", [i, 1]) for i in range(n)]
    out, _ = underValgrind(
        valgrind, command, portFile, ready, 300,
        lambda port: connectionPerCall(port, lines, concurrent, lambda i, result: result == i + 1),
    )
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise SystemExit(f"no count in callgrind's output:\n{out}")
    return int(match.group(1))


def main() -> None:
    if "--large" in sys.argv:
        # W4's path (issue 19, large payloads): bench.large's options follow.
        from bench import large

        large.main([a for a in sys.argv[1:] if a != "--large"])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--observed", action="store_true", help="with the daemon's observer (taskd.activity, as --http sets)")
    parser.add_argument("--connections", action="store_true", help="W1a's path: a connection per call, taskd and the bare line server")
    parser.add_argument("--concurrent", type=int, default=1, help="with --connections: connections open at once (1: the count repeats exactly)")
    parser.add_argument("--server", choices=["taskd", "line", "both"], default="both", help="with --connections: which to count")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    # -- the Python client's path (bench.clientpath), issue 19 ----------------
    parser.add_argument("--client", action="store_true", help="the Python client's path instead (bench.clientpath: W1's harness on a fake connection)")
    parser.add_argument("--window", action="store_true", help="with --client: the harness calls through TaskClient.callMany")
    parser.add_argument("--worker", action="store_true", help="the worker's loop instead (bench.workerpath: add frames from memory)")
    options = parser.parse_args()
    if options.connections:
        costs = {}
        for server in ("taskd", "line") if options.server == "both" else (options.server,):
            few, many = served(500, server, options.concurrent), served(1500, server, options.concurrent)
            costs[server] = (many - few) / 1000
            print(f"{server}: {costs[server]:,.0f} instructions per connection (callgrind; 1,500 connections minus 500)", flush=True)
        if len(costs) == 2:
            print(f"taskd / bare line server: {costs['taskd'] / costs['line']:.2f}")
        return
    if options.worker:
        if options.run is not None:
            from bench.workerpath import add, once
            from taskd._frames import requestFrame
            from taskd.registry import Registry

            registry = Registry()
            registry.register(add, name="add")
            once(b"".join(requestFrame("add", b'{"function":"add","args":[%d,1],"id":%d}' % (i, i)) for i in range(options.run)), options.run, registry)
            return
        few, many = count(1000, False, ("--worker",)), count(3000, False, ("--worker",))
        print(f"worker path: {(many - few) / 2000:,.0f} instructions per call (callgrind; 3,000 calls minus 1,000)")
        return
    if options.client:
        from bench.clientpath import clientPath

        if options.run is not None:
            clientPath(options.run, options.window)
            return
        extra = ("--client", "--window") if options.window else ("--client",)
        few, many = count(1000, False, extra), count(3000, False, extra)
        print(f"client path: {(many - few) / 2000:,.0f} instructions per call (callgrind; 3,000 calls minus 1,000)")
        return
    # -- end of the client's block ---------------------------------------------
    if options.run is not None:
        relay(options.run, options.observed)
        return
    few, many = count(1000, options.observed), count(3000, options.observed)
    print(f"daemon relay: {(many - few) / 2000:,.0f} instructions per call (callgrind; 3,000 calls minus 1,000)")


if __name__ == "__main__":
    main()
