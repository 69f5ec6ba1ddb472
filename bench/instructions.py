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
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys


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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--observed", action="store_true", help="with the daemon's observer (taskd.activity, as --http sets)")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    # -- the Python client's path (bench.clientpath), issue 19 ----------------
    parser.add_argument("--client", action="store_true", help="the Python client's path instead (bench.clientpath: W1's harness on a fake connection)")
    parser.add_argument("--window", action="store_true", help="with --client: the harness calls through TaskClient.map")
    parser.add_argument("--worker", action="store_true", help="the worker's loop instead (bench.workerpath: add frames from memory)")
    options = parser.parse_args()
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
