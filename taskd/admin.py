# -*- test-case-name: tests.test_admin -*-
"""
Admin requests (C{{"type": "admin", "command": ...}}): list the running
calls, cancel one by its daemon-wide number, resize the pool, drain, and
restart the workers one at a time (see C{docs/operations.md}).

Who may: with an admin token (C{--admin-token-file}), a request that
carries it (C{"token"}), on any listener; without one, any request on a
loopback or C{unix:} listener, and none elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from taskd import errors
from taskd.listeners import isLoopback
from taskd.pool import ProcessPool
from taskd.wire import Admin, AdminReply, encodeAdminReply


def isLocalListener(transport: Any) -> bool:
    """
    @return: whether C{transport} was accepted by a loopback or C{unix:}
        listener: judged by the address the listening port is bound to
        (a listener on all interfaces is not local, even for a connection
        that came through loopback), or by the connection's own address
        where the port is not known.
    """
    port = None
    inner = transport
    for _ in range(4):  # through TLS (and the like) to the TCP connection
        port = getattr(inner, "server", None)
        if port is not None:
            break
        inner = getattr(inner, "transport", None)
        if inner is None:
            break
    try:
        host = port.getHost() if port is not None else transport.getHost()
    except Exception:
        return False
    if isinstance(host, UNIXAddress):
        return True
    if isinstance(host, (IPv4Address, IPv6Address)):
        return isLoopback(host.host)
    return False


class AdminCommands:
    """
    Runs admin requests against a daemon.
    """

    log = Logger()

    def __init__(
        self,
        pool: ProcessPool,
        drain: Callable[[], object],
        token: str | None = None,
    ) -> None:
        """
        @param drain: drains the daemon.
        @param token: the admin token, or C{None}.
        """
        self._pool = pool
        self._drain = drain
        self._digest = None if token is None else hashlib.sha256(token.encode("utf-8")).digest()

    def refusal(self, request: Admin, local: bool) -> errors.Forbidden | None:
        """
        @param local: whether the request came through a loopback or
            C{unix:} listener.
        @return: why C{request} is refused, or C{None} if it is allowed.
        """
        token = request.fields.get("token")
        if self._digest is None:
            if local:
                return None
            return errors.Forbidden(
                "admin requests are taken only on loopback and unix: listeners "
                "when the daemon has no --admin-token-file"
            )
        if not isinstance(token, str):
            return errors.Forbidden("this admin request needs the admin token ('token')")
        given = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        if not hmac.compare_digest(given, self._digest):
            return errors.Forbidden("the admin token is wrong")
        return None

    def handle(self, request: Admin, local: bool) -> Deferred[bytes]:
        """
        Run C{request} if it is allowed.

        @return: a C{Deferred} firing with the encoded reply, or failing
            with an L{errors.TaskdError}.
        """
        refused = self.refusal(request, local)
        if refused is not None:
            self.log.warn(
                "admin {command} refused: {why}", command=request.command, why=refused.message
            )
            return fail(refused)
        self.log.info("admin {command}", command=request.command)
        command = request.command
        try:
            if command == "running":
                return succeed(self._reply(command, calls=self._running()))
            if command == "cancel":
                return succeed(self._reply(command, cancelled=self._cancel(request.fields["number"])))
            if command == "workers":
                count = request.fields["count"]
                self._pool.resize(count)
                return succeed(self._reply(command, workers=count))
            if command == "drain":
                self._drain()
                return succeed(self._reply(command, draining=True))
            return self._pool.restartWorkers().addCallback(
                lambda replaced: self._reply("restart", replaced=replaced)
            )
        except errors.TaskdError as e:
            return fail(e)
        except ValueError as e:
            return fail(errors.BadRequest(f"admin {command}: {e}"))

    def _reply(self, command: str, **fields: Any) -> bytes:
        return encodeAdminReply(AdminReply(command, fields))

    def _running(self) -> list[dict[str, Any]]:
        now = self._pool.reactor.seconds()
        return [
            {
                "number": call.number,
                "task": call.name,
                "age": round(now - (call.startedAt or call.submittedAt), 3),
                "peer": call.origin,
                "pid": call.pid,
            }
            for call in self._pool.running()
        ]

    def _cancel(self, number: int) -> bool:
        if not self._pool.cancelCall(number):
            raise errors.BadRequest(f"no call in flight has number {number}")
        return True
