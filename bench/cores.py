"""
What the machine's two cores give two CPU-bound processes, W3's
reference: C{python -m bench.cores [ROUNDS]}.  Each round burns 100 × 20
ms of CPU (L{taskd.examples.burn}) in one process, then the same split
over two forked processes, and prints both times and their ratio (2.0 on
two idle, independent cores).
"""

from __future__ import annotations

import os
import sys
import time

from bench.run import calibrateBurn
from taskd.examples import burn


def main(argv: list[str]) -> None:
    rounds = int(argv[0]) if argv else 5
    n = calibrateBurn()

    def work(calls: int) -> None:
        for _ in range(calls):
            burn(n)

    for _ in range(rounds):
        start = time.perf_counter()
        work(100)
        one = time.perf_counter() - start
        start = time.perf_counter()
        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                work(50)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        two = time.perf_counter() - start
        print(f"1 process {one:.2f} s, 2 processes {two:.2f} s: {one / two:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
