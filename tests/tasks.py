"""
Tasks that misbehave on purpose, for the pool's tests.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from taskd import task
from taskd._frames import HEADER


@task
def chatty(n: int) -> str:
    """
    Write to stdout and stderr, in ways that would corrupt a protocol
    spoken on them: half lines, fake frame headers, raw writes to fd 1.
    """
    for i in range(n):
        print(f"line {i} to stdout")
        print(f"line {i} to stderr", file=sys.stderr)
    sys.stdout.write("no newline yet ")
    sys.stdout.flush()
    os.write(1, HEADER.pack(5) + b"R1234\n")
    os.write(2, b"\x00\x00\x00\x02Ex\n")
    return "still framed"


@task
def unserializable() -> Any:
    return object()


@task
def nan() -> float:
    return float("nan")


@task
def big(n: int) -> str:
    return "x" * n


@task
def hugeError(n: int) -> None:
    raise RuntimeError("e" * n)


@task
def stubborn(seconds: float) -> str:
    """
    Ignore SIGTERM and sleep: only SIGKILL ends it.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)
    return "survived"


@task
def readStdin() -> str:
    return sys.stdin.read()


@task
def exitCleanly() -> None:
    sys.exit(4)


class Custom(Exception):
    pass


@task(name="tests.custom")
def raiseCustom() -> None:
    raise Custom("custom failure")


@task
def hog(chunkMiB: int = 16) -> int:
    """
    Allocate memory without end.
    """
    held = []
    while True:
        held.append(bytearray(chunkMiB * 1024 * 1024))


@task
def spin() -> None:
    """
    Spin the CPU without end.
    """
    while True:
        pass


@task
def touch(directory: str, name: str, seconds: float = 0.0) -> str:
    """
    Sleep, then create C{directory/name}: a trace that the call ran.
    """
    time.sleep(seconds)
    with open(os.path.join(directory, name), "w"):
        pass
    return name
