# -*- test-case-name: tests.test_admin -*-
"""
The admin requests' messages (see C{docs/operations.md} and
L{taskd.admin}): L{Admin} and L{AdminReply}, decoding an admin request
with precise errors, encoding both.  L{taskd.wire} re-exports these names
and calls L{decodeAdmin} from its one entry point.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from taskd import _json
from taskd._wirecall import badRequest as _bad

@frozen
class Admin:
    """
    An admin request (see C{docs/operations.md}): C{command} is one of
    L{ADMIN_COMMANDS}; C{fields} are its other fields (C{"token"}, the
    admin token; C{"number"}, C{"count"}).
    """

    command: str
    fields: dict[str, Any]


#: The admin requests' commands.
ADMIN_COMMANDS = ("running", "cancel", "workers", "drain", "restart")


@frozen
class AdminReply:
    """
    The answer to an L{Admin} request: its C{command}, and what it says.
    """

    command: str
    fields: dict[str, Any]


def encodeAdminReply(reply: AdminReply) -> bytes:
    """
    Encode the answer to an admin request.
    """
    return _json.encodeASCII({"type": "admin", "command": reply.command, **reply.fields}) + b"\n"



def decodeAdmin(message: dict[str, Any]) -> Admin:
    """
    Decode an admin request from its object C{message}.

    @raise taskd.wire.ProtocolError: if it is not valid.
    """
    command = message.get("command")
    if command not in ADMIN_COMMANDS:
        raise _bad(f"an admin request needs a 'command', one of {', '.join(ADMIN_COMMANDS)}")
    name = {"cancel": "number", "workers": "count"}.get(command)
    if name is not None:
        value = message.get(name)
        if type(value) is not int or value < 1:
            raise _bad(f"admin {command} needs {name!r}, a whole number above 0")
    token = message.get("token")
    if token is not None and not isinstance(token, str):
        raise _bad("'token' must be a string")
    return Admin(command, {k: v for k, v in message.items() if k not in ("type", "command")})



def encodeAdmin(request: Admin) -> bytes:
    """
    Encode an admin request as a line, line ending included.
    """
    return _json.encodeASCII({"type": "admin", "command": request.command, **request.fields}) + b"\n"


def decodeAdminReply(message: dict[str, Any]) -> AdminReply:
    """
    Decode the answer to an admin request from its object C{message}.
    """
    return AdminReply(
        str(message.get("command")),
        {k: v for k, v in message.items() if k not in ("type", "command")},
    )


__all__ = ["Admin", "ADMIN_COMMANDS", "AdminReply", "decodeAdmin", "encodeAdmin", "encodeAdminReply", "decodeAdminReply"]
