"""
The Python client's own path per call, in-process: C{python -m
bench.clientpath [--profile] [--n N]}.

Runs W1's loop exactly as C{bench.measure} runs it for the taskd client
(C{add} calls through L{taskd.client.TaskClient.call}, at most 100 at once
in 100 lanes that each make their next call when their last is
answered, each result checked) on a
L{taskd.client.TaskClientProtocol} connected to a C{StringTransport}
(C{maxInFlight} 100, as the daemon's hello says), and answers the calls
from precomputed reply lines, 20 to a read: no daemon, no sockets, no
reactor.  Prints the best of 5 runs in microseconds of CPU time per call:
the client's Python path (encoding, writing, reading, decoding, the
C{Deferred}s, the harness) and nothing else.  C{--window}: the harness
calls through L{taskd.client.TaskClient.callMany} instead.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

#: Reply lines handed to the client per C{dataReceived}.
CHUNK = 20


def clientPath(n: int, window: bool = False) -> float:
    """
    Make C{n} W1 calls through the client on a fake connection.

    @return: the CPU seconds it took.
    """
    from bench.measure import _TaskdCaller, _workload
    from taskd.client import TaskClient, TaskClientProtocol

    protocol = TaskClientProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.setMaxInFlight(100)
    client = TaskClient(protocol)
    # Call i has id i + 1 and arguments [i, 1]: its result is its id.
    replies = b"".join(b'{"type":"result","id":%d,"result":%d}\n' % (k, k) for k in range(1, n + 1))
    ends = [0]
    for k in range(n):
        ends.append(replies.index(b"\n", ends[-1]) + 1)
    results: list[Any] = []
    spec = {"workload": "w1", "n": n, "window": window}
    start = time.process_time()
    done: Deferred[Any] = Deferred.fromCoroutine(_workload(spec, _TaskdCaller(client), None))
    done.addCallback(results.append)
    written = answered = 0
    while not results:
        written += transport.value().count(b"\n")
        transport.clear()
        if answered == written:
            raise RuntimeError(f"stuck after {answered} replies: {done!r}")
        while answered < written:
            upTo = min(written, answered + CHUNK)
            protocol.dataReceived(replies[ends[answered] : ends[upTo]])
            answered = upTo
    took = time.process_time() - start
    assert answered == n, answered
    return took


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.clientpath", description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--window", action="store_true", help="the harness uses TaskClient.callMany")
    options = parser.parse_args()
    if options.profile:
        import cProfile
        import pstats

        cProfile.runctx("clientPath(options.n, options.window)", globals(), locals(), "/tmp/clientpath.prof")
        pstats.Stats("/tmp/clientpath.prof").sort_stats("tottime").print_stats(20)
        return
    best = min(clientPath(options.n, options.window) for _ in range(5))
    print(f"client path: {best / options.n * 1e6:.2f} us of CPU per call (best of 5)")


if __name__ == "__main__":
    main()
