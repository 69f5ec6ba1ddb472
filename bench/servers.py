"""
The ceilings: a bare Twisted line server (C{python -m bench.servers
line PORTFILE}) and a bare child for pipe round trips (C{python -m
bench.servers pipechild}).
"""

from __future__ import annotations

import json
import sys

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _answer(message: dict) -> bytes:
    args = message.get("args") or []
    if message.get("function") == "add":
        result = args[0] + args[1]
    else:
        result = args[0] if args else None
    return (_dumps({"type": "result", "id": message.get("id"), "result": result}) + "\n").encode()


def lineServer(portFile: str) -> None:
    """
    A LineReceiver on TCP that answers each JSON line at once: the most a
    Twisted JSON-lines server can do, with no pool behind it.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    class Echo(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 16 * 1024 * 1024

        def lineReceived(self, line: bytes) -> None:
            self.transport.write(_answer(json.loads(line)))

    def listening(port) -> None:
        with open(portFile, "w") as f:
            f.write(str(port.getHost().port))

    # The daemons' accept queue (Twisted's default of 50 overflows in W1a:
    # each dropped connection then waits a second for its SYN again).
    TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1").listen(
        Factory.forProtocol(Echo)
    ).addCallback(listening)
    reactor.run()


def pipeChild() -> None:
    """
    Read JSON lines on stdin, answer each on stdout: one child's round trip
    over spawnProcess pipes, with no pool logic.
    """
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        out.write(_answer(json.loads(line)))
        out.flush()


if __name__ == "__main__":
    if sys.argv[1] == "line":
        lineServer(sys.argv[2])
    else:
        pipeChild()
