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


@task
def leaveChild(
    directory: str, then: str = "return", stubborn: bool = False, fork: bool = False
) -> int:
    """
    Start a 60-second child process that holds this worker's stdout and
    stderr (with C{fork}, a forked copy of the whole worker, holding its
    protocol pipes too), write its pid to C{directory/child.pid}, then
    C{"return"} its pid, C{"crash"} (SIGKILL to this worker) or C{"hang"}.
    With C{stubborn}, the child ignores SIGTERM.
    """
    if fork:
        pid = os.fork()
        if pid == 0:
            if stubborn:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(60)
            os._exit(0)
    else:
        import subprocess

        script = ("trap '' TERM; " if stubborn else "") + "exec sleep 60"
        pid = subprocess.Popen(["sh", "-c", script]).pid
    with open(os.path.join(directory, "child.pid.tmp"), "w") as f:
        f.write(str(pid))
    os.rename(os.path.join(directory, "child.pid.tmp"), os.path.join(directory, "child.pid"))
    if then == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif then == "hang":
        time.sleep(3600)
    return pid


@task
def garbage(kind: str) -> str:
    """
    Write something that is not a valid frame to the worker's reply pipe,
    as a task (or a library it uses) that grabs fd 4 would, then return.
    """
    data = {
        "resultNotJSON": HEADER.pack(9) + b"Rnot json",
        "resultWithNewline": HEADER.pack(6) + b"R[1,\n2]",
        "errorNotJSON": HEADER.pack(5) + b"E{nop",
        "noise": b"1734439522 bytes of noise\n",
    }[kind]
    os.write(4, data)
    return "written"


_held: list[bytearray] = []


@task
def grow(mib: int) -> int:
    """
    Allocate C{mib} MiB and keep them: the worker's resident memory grows.
    """
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _held.append(block)
    return len(_held)


@task
def leaveReporter(delay: float) -> str:
    """
    Start a thread that reports progress after C{delay} seconds, and
    return at once: the thread outlives the call.
    """
    import threading

    from taskd import progress

    def late() -> None:
        time.sleep(delay)
        progress("late report of an ended call")

    threading.Thread(target=late, daemon=True).start()
    return "left a thread"


@task
def reportFromThread() -> str:
    """
    Report progress from a thread this call starts and waits for.
    """
    import threading

    from taskd import progress

    thread = threading.Thread(target=progress, args=("from my thread",))
    thread.start()
    thread.join()
    return "joined"


def _stamp(path: str, line: str) -> None:
    # One small O_APPEND write: lines from several workers do not mix.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


@task
def stamped(path: str, seconds: float) -> None:
    """
    Append when this call started and ended (wall-clock seconds) to
    C{path}, sleeping C{seconds} in between.
    """
    start = time.time()
    time.sleep(seconds)
    _stamp(path, f"{start!r} {time.time()!r}")


@task
def ratestamp(path: str) -> None:
    """
    Append when this call started to C{path}.
    """
    _stamp(path, repr(time.time()))


def _run(path: str, i: int) -> int:
    _stamp(path, str(i))
    time.sleep(0.005)
    return i + 1


@task(retries=3, backoff=0.01)
def idempotentRun(path: str, i: int) -> int:
    """
    Record that call C{i} ran, in C{path}; safe to run again.
    """
    return _run(path, i)


@task
def onceRun(path: str, i: int) -> int:
    """
    Record that call C{i} ran, in C{path}; never to be run twice.
    """
    return _run(path, i)


def _recordRun(path: str, tag: str, hold: str | None) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, tag.encode() + b"\n")
    finally:
        os.close(fd)
    while hold is not None and not os.path.exists(hold):
        time.sleep(0.02)
    return tag


@task
def recordRun(path: str, tag: str, hold: str | None = None) -> str:
    """
    Append C{tag} to the file C{path} (one line per run: the jobs' tests
    count runs), then, given C{hold}, wait until that file exists.
    """
    return _recordRun(path, tag, hold)


@task(retries=1)
def recordRunSafely(path: str, tag: str, hold: str | None = None) -> str:
    """
    L{recordRun}, for a task that opts into being run again.
    """
    return _recordRun(path, tag, hold)
