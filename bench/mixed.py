"""
W6: short calls among long ones.  A flood of long calls (C{sleep(0.02)})
keeps the queue of a two-worker daemon full while one caller makes short
calls (C{add}) one at a time: their round trips, with no policy, with the
short calls at a higher priority, and with the long task capped to one
worker (C{--task-limit sleep:concurrency=1}).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

from bench import rawclient
from bench.rawclient import request

#: The long calls' task time, in seconds, and how many are kept unanswered.
LONG = 0.02
LONG_IN_FLIGHT = 10


def flood(port: int, stop: threading.Event, counted: list[Any]) -> None:
    """
    Keep C{LONG_IN_FLIGHT} long calls unanswered on one connection until
    C{stop} is set, then read the replies still owed.  (Without ids: they
    are answered in order.)  A wrong reply is kept in C{counted[1]}.
    """
    try:
        _flood(port, stop, counted)
    except Exception as e:
        counted[1] = e


def _flood(port: int, stop: threading.Event, counted: list[Any]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    line = request("sleep", [LONG])
    sock.sendall(line * LONG_IN_FLIGHT)
    owed = LONG_IN_FLIGHT
    while owed:
        reply = json.loads(reader.readline())
        if reply.get("type") != "result":
            raise AssertionError(f"wrong reply {reply!r}")
        counted[0] += 1
        if stop.is_set():
            owed -= 1
        else:
            sock.sendall(line)
    sock.close()


def shortCalls(port: int, n: int, priority: int | None) -> dict[str, Any]:
    """
    Make C{n} short calls one at a time while the flood runs.

    @return: the short calls' p50 and p99 round trips in milliseconds, and
        how many long calls ran meanwhile.
    """
    stop = threading.Event()
    counted: list[Any] = [0, None]
    flooder = threading.Thread(target=flood, args=(port, stop, counted))
    flooder.start()
    try:
        time.sleep(0.2)  # the queue fills
        message: dict[str, Any] = {"function": "add", "args": [1, 1]}
        if priority is not None:
            message["priority"] = priority
        lines = [json.dumps(dict(message, id=i)).encode() + b"\n" for i in range(n)]
        times = sorted(rawclient.sequential(port, lines, lambda i, r: r == 2))
    finally:
        stop.set()
        flooder.join()
    if counted[1] is not None:
        raise counted[1]
    return {
        "p50_ms": 1e3 * times[len(times) // 2],
        "p99_ms": 1e3 * times[min(len(times) - 1, int(len(times) * 0.99))],
        "long_calls": counted[0],
    }


#: The settings: name, the daemon's --prefetch and other options, the
#: short calls' priority.  The last two send calls ahead (32 a worker at
#: most): without a time limit, and with --prefetch-time's default (the
#: long task, seen to take 20 ms, then waits for an idle worker).
SETTINGS = [
    ("no_policy", 1, (), None),
    ("priority", 1, (), 10),
    ("cap", 1, ("--task-limit", "sleep:concurrency=1"), None),
    ("priority_prefetch32_untimed", 32, ("--prefetch-time", "0"), 10),
    ("priority_prefetch32", 32, (), 10),
]


def main() -> None:
    """
    C{python -m bench.mixed [N] [RUNS]}: W6 alone, N short calls per
    setting (100), RUNS runs (3); prints each run and the medians.
    """
    import statistics
    import sys

    from bench.run import Daemon

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for name, prefetch, options, priority in SETTINGS:
        daemon = Daemon(2, prefetch, *options)
        try:
            results = [shortCalls(daemon.port, n, priority) for _ in range(runs)]
        finally:
            daemon.stop()
        for r in results:
            print(f"  {name} run: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['long_calls']} long calls")
        print(
            f"W6 {name}: short calls p50 {statistics.median(r['p50_ms'] for r in results):.1f} ms, "
            f"p99 {statistics.median(r['p99_ms'] for r in results):.1f} ms"
        )


if __name__ == "__main__":
    main()
