"""
The C{async def} task of workload W8 (C{python -m bench.w8}): wait 100 ms
on the worker's event loop.
"""

from __future__ import annotations

import asyncio

from taskd import task


@task(name="wait")
async def wait(seconds: float) -> None:
    await asyncio.sleep(seconds)
