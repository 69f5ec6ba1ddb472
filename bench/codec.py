"""
The JSON codec's two implementations side by side: C{python -m bench.codec}
prints the best time per call of the standard library's and of orjson's
(C{taskd._json}'s C{stdlib*} and C{fast*} functions) on the lines and
values taskd handles.
"""

from __future__ import annotations

import sys
import timeit
from typing import Any, Callable

from taskd import _json


def best(f: Callable[[], object], n: int) -> float:
    """
    @return: the best of 5 runs of C{n} calls, in microseconds per call.
    """
    return min(timeit.repeat(f, number=n, repeat=5)) / n * 1e6


def main() -> None:
    if not _json.FAST:
        sys.exit("orjson is not installed: pip install '.[fast]'")
    line = b'{"function":"add","args":[12345,1],"id":12345}'
    big = b'{"function":"echo","args":["' + b"x" * 65536 + b'"],"id":1}'
    numbers = list(range(10000))
    error = {"type": "task_failed", "message": "boom", "started": True}
    cases: list[tuple[str, Callable[[Any], Any], Callable[[Any], Any], Any, int]] = [
        ("loads, a 47-byte request", _json.stdlibLoads, _json.fastLoads, line, 50000),
        ("loads, a 64 KiB request", _json.stdlibLoads, _json.fastLoads, big, 500),
        ("loads, 10,000 integers", _json.stdlibLoads, _json.fastLoads, _json.stdlibEncode(numbers), 100),
        ("loadsFrame, a result 12346", _json.stdlibLoadsFrame, _json.fastLoadsFrame, b"12346", 50000),
        ("checkFrame, a result 12346", _json.stdlibCheckFrame, _json.fastCheckFrame, b"12346", 50000),
        ("checkFrame, a 64 KiB string", _json.stdlibCheckFrame, _json.fastCheckFrame, b'"' + b"x" * 65536 + b'"', 500),
        ("encode, the integer 12346", _json.stdlibEncode, _json.fastEncode, 12346, 50000),
        ("encode, a 64 KiB string", _json.stdlibEncode, _json.fastEncode, "x" * 65536, 500),
        ("encode, 10,000 integers", _json.stdlibEncode, _json.fastEncode, numbers, 100),
        ("encodeASCII, an error object", _json.stdlibEncodeASCII, _json.fastEncodeASCII, error, 50000),
        ("encodeASCII, a call's arguments", _json.stdlibEncodeASCII, _json.fastEncodeASCII, {"args": [12345, 1], "kwargs": {}}, 50000),
    ]
    print(f"{'':34} {'stdlib us':>10} {'orjson us':>10} {'ratio':>6}")
    for label, stdlib, fast, data, n in cases:
        slow = best(lambda: stdlib(data), n)
        quick = best(lambda: fast(data), n)
        print(f"{label:34} {slow:10.2f} {quick:10.2f} {slow / quick:6.1f}")


if __name__ == "__main__":
    main()
