# -*- test-case-name: tests.test_pool -*-
"""
Built-in example tasks, loaded by default.

They are what the README, the tests and the benchmark call, and a model for
your own task modules: plain functions, JSON in, JSON out.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from taskd.registry import task
from taskd.worker import progress


@task
def add(a: float, b: float) -> float:
    """
    Return C{a + b}.
    """
    return a + b


@task
def echo(value: Any) -> Any:
    """
    Return C{value} unchanged.
    """
    return value


@task
def sleep(seconds: float) -> float:
    """
    Block for C{seconds}, then return it.  Stands for blocking I/O.
    """
    time.sleep(seconds)
    return seconds


@task
def steps(n: int, pause: float = 0.1) -> int:
    """
    Take C{n} steps of C{pause} seconds, reporting progress after each
    (C{{"done": i, "of": n}}); return C{n}.
    """
    for i in range(1, n + 1):
        time.sleep(pause)
        progress({"done": i, "of": n})
    return n


@task
def burn(n: int) -> int:
    """
    Burn CPU: sum the squares below C{n} in pure Python.
    """
    total = 0
    for i in range(n):
        total += i * i
    return total


@task
def fail(message: str = "failed on purpose") -> None:
    """
    Raise C{ValueError(message)}.
    """
    raise ValueError(message)


@task
def crash(how: str = "exit") -> None:
    """
    Kill the worker running this task: C{"exit"} (C{os._exit(70)}),
    C{"kill"} (SIGKILL) or C{"segfault"} (a real segmentation fault).
    """
    if how == "exit":
        os._exit(70)
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover: the signal arrives first


@task
def pid() -> int:
    """
    Return the process id of the worker that ran this task.
    """
    return os.getpid()
