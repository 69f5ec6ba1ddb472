"""
Tasks that wait, for the tests of workers that run several calls at once
(C{--threads}, C{async def}): this module holds C{async def} tasks, so a
pool running it runs several calls in each worker.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

from taskd import progress, task


@task
def wait(seconds: float) -> int:
    """
    Sleep in a thread, like a task waiting on a socket.
    """
    time.sleep(seconds)
    return os.getpid()


@task(name="await")
async def await_(seconds: float) -> int:
    """
    Sleep on the worker's event loop.
    """
    await asyncio.sleep(seconds)
    return os.getpid()


@task
async def reportingAsync(n: int, seconds: float) -> str:
    """
    Report progress C{n} times from a coroutine, then answer.
    """
    for i in range(n):
        progress(i)
        await asyncio.sleep(seconds)
    return "done"


@task
def reportingThread(n: int, seconds: float) -> str:
    """
    Report progress C{n} times from a thread, then answer.
    """
    for i in range(n):
        progress(i)
        time.sleep(seconds)
    return "done"


@task
async def guarded(path: str, seconds: float) -> str:
    """
    Wait; write C{path} in a C{finally} block, and what ended the wait.
    """
    how = "returned"
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        how = "cancelled"
        raise
    finally:
        with open(path, "w") as f:
            f.write(how)
    return how


@task
def busy(path: str, seconds: float) -> str:
    """
    Run Python code for C{seconds} (a thread that can be stopped); write
    C{path} in a C{finally} block, with what ended it.
    """
    how = "returned"
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            pass
    except BaseException as e:
        how = type(e).__name__
        raise
    finally:
        with open(path, "w") as f:
            f.write(how)
    return how


@task
def blocked(seconds: float) -> str:
    """
    Block in C (a thread that cannot be stopped before it returns).
    """
    threading.Event().wait(seconds)
    return "woke"


@task
def die() -> None:
    """
    Kill the worker.
    """
    os.kill(os.getpid(), 9)


@task(mode="process")
def crunch(n: int) -> int:
    """
    CPU-bound work that keeps its worker to itself.
    """
    return sum(i * i for i in range(n))
