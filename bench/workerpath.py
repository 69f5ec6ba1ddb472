"""
The worker's own path per call, in-process: C{python -m bench.workerpath
[--profile]} feeds L{taskd.worker.serve} 20,000 C{add} request frames from
memory, writes the replies to C{/dev/null}, and prints the best of 5 runs
in microseconds per call (decode, run, encode, frame, write; no pipe
waits).  C{--stdlib}: with the standard library's JSON codec.
"""

from __future__ import annotations

import io
import os
import sys
import time

from taskd._frames import requestFrame
from taskd.registry import Registry
from taskd.worker import serve


def add(a: int, b: int) -> int:
    return a + b


def once(stream: bytes, calls: int, registry: Registry) -> float:
    with open(os.devnull, "wb") as out:
        start = time.perf_counter()
        serve(registry, io.BufferedReader(io.BytesIO(stream)), out, 1 << 24)  # type: ignore[arg-type]
        return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    if "--stdlib" in sys.argv:
        from taskd import _json

        _json.loads, _json.encode = _json.stdlibLoads, _json.stdlibEncode  # type: ignore[assignment]
    registry = Registry()
    registry.register(add, name="add")
    calls = 20000
    stream = b"".join(requestFrame("add", b'{"function":"add","args":[%d,1],"id":%d}' % (i, i)) for i in range(calls))
    if "--profile" in sys.argv:
        import cProfile
        import pstats

        cProfile.runctx("once(stream, calls, registry)", globals(), locals(), "/tmp/workerpath.prof")
        pstats.Stats("/tmp/workerpath.prof").sort_stats("tottime").print_stats(15)
        return
    print(f"worker path: {min(once(stream, calls, registry) for _ in range(5)):.2f} us per call")


if __name__ == "__main__":
    main()
