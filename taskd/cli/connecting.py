# -*- test-case-name: tests.test_cli -*-
"""
Connecting a command to the daemon: the client endpoint from C{--connect}
(tried again for C{--wait} seconds while nothing listens), the token from
C{--token-file} or C{$TASKD_TOKEN}, the hello, and one line saying why
any of it failed (L{UsageProblem} for what the user wrote, L{Unreachable}
for what the daemon did).  Also closing the connection after an
interruption, once the daemon has the cancels.

The calls themselves go through the public client API
(L{taskd.client.TaskClient}), as any program's would.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import struct
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater

from taskd import errors
from taskd.cli.console import Unreachable, UsageProblem
from taskd.cli.interruption import Interruption
from taskd.client import TaskClient, TaskClientProtocol, authenticate

#: Seconds to wait, once interrupted, for the daemon to take the cancels
#: and close the connection.
CLOSE_TIMEOUT = 5.0


def readToken(path: str | None, option: str, variable: str) -> str | None:
    """
    @return: the token in the file at C{path} (given as C{option}), or, if
        C{path} is C{None}, the environment variable C{variable}'s, if set.
    @raise UsageProblem: if the file cannot be read or is empty.
    """
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise UsageProblem(f"{option} {path!r}: cannot read it: {reason}")
        if not token:
            raise UsageProblem(f"{option} {path!r}: the file is empty")
        return token
    return os.environ.get(variable) or None


def _token(options: argparse.Namespace) -> str | None:
    return readToken(options.token_file, "--token-file", "TASKD_TOKEN")


class CLIProtocol(TaskClientProtocol):
    """
    The client protocol, which a signal handler can make reset its
    connection.
    """

    def abortNow(self) -> None:
        """
        From a signal handler: make the socket's close a reset, so that
        the daemon cancels what this connection still has in flight even
        though this process exits without a word.
        """
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket) and handle.family in (socket.AF_INET, socket.AF_INET6):
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _open(reactor: Any, options: argparse.Namespace) -> CLIProtocol:
    """
    Connect and say hello (with the token, if given), as
    L{taskd.client.connect} does.

    @raise UsageProblem: for a bad C{--connect} or C{--token-file}.
    @raise Unreachable: if the daemon cannot be reached or refuses.
    """
    from twisted.internet.endpoints import clientFromString

    description = options.connect
    token = _token(options)
    try:
        endpoint = clientFromString(reactor, description)
    except ValueError as e:
        if str(e).startswith("Unknown endpoint type"):
            kind = description.split(":", 1)[0]
            raise UsageProblem(
                f"--connect {description!r}: unknown endpoint type {kind!r}; "
                "use tcp:HOST:PORT, tls:HOST:PORT or unix:PATH"
            )
        raise UsageProblem(f"--connect {description!r}: {e}")
    except TypeError as e:
        raise UsageProblem(f"--connect {description!r}: incomplete ({e}); write tcp:HOST:PORT, tls:HOST:PORT or unix:PATH")
    except Exception as e:
        raise UsageProblem(f"--connect {description!r}: {type(e).__name__}: {e}")
    deadline = reactor.seconds() + options.wait
    while True:
        try:
            protocol: CLIProtocol = await endpoint.connect(Factory.forProtocol(CLIProtocol))
            break
        except CancelledError:
            raise
        except ConnectError as e:
            if not _notYet(e):
                raise Unreachable(f"cannot connect to {description}: {e}")
            # Not listening (yet), or its unix: socket not made yet: with
            # --wait, try again.
            if reactor.seconds() >= deadline:
                raise Unreachable(f"cannot connect to {description}: {e}")
            await deferLater(reactor, 0.1, lambda: None)
        except Exception as e:
            raise Unreachable(f"cannot connect to {description}: {e}")
    try:
        await authenticate(protocol, token, reactor)
    except errors.Unauthenticated as e:
        if token is None:
            raise Unreachable(
                f"{description} requires a token and none was given: "
                "pass --token-file FILE or set TASKD_TOKEN"
            )
        raise Unreachable(f"{description} refused the token: {e.message}")
    except errors.NotConnected as e:
        raise Unreachable(f"{description}: {e.message}")
    except BaseException as e:
        if isinstance(e, CancelledError):
            raise
        raise Unreachable(f"{description} did not answer the hello: {e}")
    return protocol


def _notYet(error: ConnectError) -> bool:
    """
    @return: whether C{error} says the daemon may just not be there yet:
        nothing listens on the port, or the C{unix:} socket file is not
        made yet.
    """
    return isinstance(error, ConnectionRefusedError) or getattr(error, "osError", None) == errno.ENOENT


def connecting(reactor: Any, options: argparse.Namespace, interruption: Interruption) -> Deferred[CLIProtocol]:
    """
    Connect to C{options.connect} and say hello (with the token of
    C{options.token_file} or C{$TASKD_TOKEN}, if any), keeping on trying
    for C{options.wait} seconds while nothing listens; cancelled by an
    interruption.

    @return: a Deferred that fires with the connected protocol, its
        C{serverHello} set; or fails with L{UsageProblem} for a bad
        C{--connect} or C{--token-file}, L{Unreachable} if the daemon cannot
        be reached or refuses, C{CancelledError} if interrupted.
    """
    d = Deferred.fromCoroutine(_open(reactor, options))
    interruption.onInterrupt(d.cancel)
    return d


async def closeAfterCancel(reactor: Any, protocol: CLIProtocol) -> None:
    """
    Close the connection once the cancels are written; the daemon then
    closes its side after answering them.  Abort after L{CLOSE_TIMEOUT}.
    """
    client = TaskClient(protocol)
    lost = client.close()
    timer = reactor.callLater(CLOSE_TIMEOUT, protocol.transport.abortConnection)
    await lost
    if timer.active():
        timer.cancel()
