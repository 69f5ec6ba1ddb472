"""
The task of workload W8 (C{python -m bench.w8}): wait 100 ms, in a thread
(as a task waiting on a socket would).  No C{async def} task here: a
module holding one makes the pool run several calls in each worker.
"""

from __future__ import annotations

import time

from taskd import task


@task
def wait(seconds: float) -> None:
    time.sleep(seconds)
