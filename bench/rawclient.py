"""
A minimal JSON-lines client with plain sockets and selectors, no Twisted,
so that the client's own cost does not hide the daemon's.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from typing import Any, Callable


def pipelined(
    port: int,
    lines: list[bytes],
    inFlight: int,
    check: Callable[[int, Any], bool],
) -> float:
    """
    Send C{lines} (each a request with C{"id": index}) on one connection
    with at most C{inFlight} unanswered, check every reply.

    @return: seconds from the first send to the last reply.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    n = len(lines)
    sent = received = 0
    out = bytearray()
    buffer = b""
    bad = 0
    start = time.perf_counter()
    while received < n:
        while sent < n and sent - received < inFlight:
            out += lines[sent]
            sent += 1
        selector.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
        events = selector.select()
        for _, mask in events:
            if mask & selectors.EVENT_WRITE and out:
                written = sock.send(out)
                del out[:written]
            if mask & selectors.EVENT_READ:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError(f"closed after {received} replies")
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    reply = json.loads(line)
                    if reply.get("type") != "result" or not check(reply["id"], reply["result"]):
                        bad += 1
                    received += 1
    elapsed = time.perf_counter() - start
    selector.close()
    sock.close()
    if bad:
        raise AssertionError(f"{bad} wrong replies")
    return elapsed


def sequential(port: int, lines: list[bytes], check: Callable[[int, Any], bool]) -> list[float]:
    """
    Send one line at a time and wait for its reply.

    @return: each call's round trip, in seconds.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    times = []
    for line in lines:
        t = time.perf_counter()
        sock.sendall(line)
        reply = json.loads(reader.readline())
        times.append(time.perf_counter() - t)
        if reply.get("type") != "result" or not check(reply["id"], reply["result"]):
            raise AssertionError(f"wrong reply {reply!r}")
    sock.close()
    return times


def connectionPerCall(
    port: int, lines: list[bytes], concurrent: int, check: Callable[[int, Any], bool]
) -> float:
    """
    For each line: connect, send it, read the reply, close; at most
    C{concurrent} connections at once.

    @return: seconds for all of them.
    """
    selector = selectors.DefaultSelector()
    n = len(lines)
    started = done = 0
    start = time.perf_counter()

    def begin(i: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        sock.send(lines[i])
        selector.register(sock, selectors.EVENT_READ, [i, b""])

    while done < n:
        while started < n and started - done < concurrent:
            begin(started)
            started += 1
        for key, _ in selector.select():
            sock = key.fileobj
            state = key.data
            chunk = sock.recv(65536)  # type: ignore[union-attr]
            state[1] += chunk
            if state[1].endswith(b"\n") or not chunk:
                selector.unregister(sock)
                sock.close()  # type: ignore[union-attr]
                reply = json.loads(state[1])
                if reply.get("type") != "result" or not check(state[0], reply["result"]):
                    raise AssertionError(f"wrong reply {reply!r}")
                done += 1
    selector.close()
    return time.perf_counter() - start


def request(function: str, args: list[Any], id: int | None = None) -> bytes:
    message: dict[str, Any] = {"function": function, "args": args}
    if id is not None:
        message["id"] = id
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"
