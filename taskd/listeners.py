# -*- test-case-name: tests.test_tap,tests.test_security -*-
"""
What the daemon makes of a C{--listen} value: a Twisted server endpoint
description (C{tcp:12345:interface=127.0.0.1}, C{unix:/run/taskd.sock},
C{mtls:...}, C{systemd:...}) read as text, before and around listening.

 - L{checkEndpoint}: is it valid?  Parsed with Twisted's own parser,
   without listening; the answer is a precise sentence.
 - L{isLocal}, L{defaultTracebacks}, L{exposureWarnings}: who can reach it,
   and so how much of a traceback its clients get and what is unsafe.
 - L{listenDescription}: the description the daemon really listens on
   (C{unix:} sockets get L{DEFAULT_UNIX_MODE}).
 - L{describeListenError}: a listener that could not start, in one line.
 - L{skipTLSImports}, L{nameSystemdSockets}: what must happen before
   Twisted's endpoint and TCP modules are first imported.

This is a room of its own, apart from L{taskd.tap} (which only calls it),
because all of it is about one string and none of it about the daemon's
options or services: it imports nothing of taskd, and Twisted's endpoint
modules only inside the functions that need them (importing them early
would defeat L{skipTLSImports}).
"""

from __future__ import annotations

import ipaddress

import os
import re
import sys
from typing import Any, Mapping, MutableMapping, Sequence

from twisted.internet.error import CannotListenError

#: The mode of a C{unix:} listener's socket file when C{mode=} is not given:
#: the daemon's user and group may connect, no one else.
DEFAULT_UNIX_MODE = "660"

# Listeners with a port, which checkEndpoint checks before Twisted does.
_PORT_ENDPOINTS = ("tcp", "tcp6", "ssl", "mtls")

# Listeners that never need TLS.
_PLAIN_ENDPOINTS = ("tcp", "tcp6", "unix", "systemd")

def isLoopback(interface: str) -> bool:
    """
    @return: whether C{interface} (a listener's C{interface=}) is a loopback
        address, or C{localhost}.
    """
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def splitDescription(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    Split an endpoint description (C{tcp:80:interface=127.0.0.1}) into its
    type, positional arguments and keyword arguments, honouring C{\\:}.

    @return: C{("tcp", ["80"], {"interface": "127.0.0.1"})}.
    """
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    kind, args, kwargs = parts[0], [], {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            kwargs[key] = value
        else:
            args.append(part)
    return kind, args, kwargs


def serverEndpointTypes() -> list[str]:
    """
    @return: the server endpoint types Twisted knows here: its own, then
        those of plugins (C{mtls}, ...) in alphabetical order.
    """
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    plugins = {p.prefix for p in getPlugins(IStreamServerEndpointStringParser)}
    return ["tcp", "tcp6", "ssl", "unix", "systemd", *sorted(plugins - {"tcp", "tcp6", "ssl", "unix", "systemd"})]


def checkEndpoint(description: str) -> str | None:
    """
    Check a server endpoint string as C{--listen} takes it, without
    listening: parse it with Twisted's own parser, giving it a stand-in
    for the reactor (parsers only store it; C{twisted.internet.testing}'s
    C{MemoryReactor} would cost the daemon 2 MB of memory).

    @return: what is wrong with it, in words (C{"port must be a number from
        0 to 65535, not 'abc'"}), or C{None} if it is valid.
    """
    kind, args, kwargs = splitDescription(description)
    if not args and not kwargs and kind.isdigit():
        return f"not an endpoint; for TCP port {kind} on loopback write tcp:{kind}:interface=127.0.0.1"
    if kind in _PORT_ENDPOINTS:
        port = args[0] if args else kwargs.get("port")
        if port is None:
            return f"{kind} needs a port: {kind}:PORT"
        if not port.isdigit() or int(port) > 65535:
            return f"port must be a number from 0 to 65535, not {port!r}"
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(_ParsingOnly(), description)
    except AttributeError:
        # A plugin's parser that uses the reactor at once: the real
        # listener will tell.
        return None
    except ValueError as e:
        if str(e).startswith("Unknown endpoint type"):
            return f"unknown endpoint type {kind!r}; valid types: " + ", ".join(t + ":" for t in serverEndpointTypes())
        return _plain(str(e))
    except TypeError as e:
        m = re.search(r"unexpected keyword argument '([^']*)'", str(e))
        if m:
            return f"{kind} endpoints take no parameter {m.group(1)!r}"
        m = re.search(r"missing \d+ required positional arguments?: (.*)", str(e))
        if m:
            return f"{kind} endpoints need {m.group(1)}"
        return _plain(str(e))
    except OSError as e:
        return f"cannot read {e.filename}: {e.strerror}" if e.filename else str(e)
    except (IndexError, KeyError) as e:
        if kind == "systemd":
            return _systemdProblem(kwargs)
        return f"{type(e).__name__}: {e}"
    except Exception as e:
        if "multiple values for argument 'interface'" in str(e):
            return "an IPv6 address needs its colons escaped: interface=\\:\\:1"
        return f"{type(e).__name__}: {e}"
    return None


class _ParsingOnly:
    """
    Stands for the reactor while an endpoint string is parsed, never
    used to listen.
    """


def _plain(message: str) -> str:
    # "invalid literal for int() with base 10: 'x'" means: not a number.
    m = re.fullmatch(r"invalid literal for int\(\) with base 10: (.*)", message)
    return f"{m.group(1)} is not a whole number" if m else message


def _systemdProblem(kwargs: Mapping[str, str]) -> str:
    from twisted.python.systemd import ListenFDs

    fds = ListenFDs.fromEnvironment()
    have = len(fds.inheritedDescriptors())
    if "name" in kwargs:
        names = sorted(fds.inheritedNamedDescriptors())
        return f"systemd passed no socket named {kwargs['name']!r} (names: {', '.join(names) or 'none'})"
    return (
        f"there is no socket number {kwargs.get('index')} from systemd: it passed "
        f"{have} socket{'' if have == 1 else 's'} to this process (LISTEN_FDS, LISTEN_PID)"
    )


def nameSystemdSockets(environ: MutableMapping[str, str], pid: int | None = None) -> None:
    """
    Sockets passed without names (C{systemd-socket-activate} without
    C{--fdname}: C{LISTEN_FDS} set, C{LISTEN_FDNAMES} not) are named
    C{unknown}, as C{sd_listen_fds_with_names(3)} does; Twisted instead
    ignores them all, and C{systemd:domain=INET:index=0} then fails.  To
    take effect this must run before Twisted's endpoints module is imported.

    @param environ: the process's environment (C{os.environ}), changed in
        place.
    @param pid: this process's id (C{os.getpid()} by default): sockets
        passed to another process are left alone.
    """
    if pid is None:
        pid = os.getpid()
    if environ.get("LISTEN_PID") != str(pid) or "LISTEN_FDNAMES" in environ:
        return
    try:
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return
    if count > 0:
        environ["LISTEN_FDNAMES"] = ":".join(["unknown"] * count)


def skipTLSImports(
    listen: Sequence[str], modules: MutableMapping[str, Any] = sys.modules
) -> None:
    """
    Twisted imports pyOpenSSL and cryptography (about 13 MB of memory) when
    its TCP transport is first imported, if they are installed, whether any
    connection uses TLS or not.  A daemon with no TLS listener marks them
    unavailable before that, so Twisted takes the path it takes where
    pyOpenSSL is not installed.  Once anything has imported either, this
    does nothing.  Tasks are unaffected: they run in worker processes.

    @param listen: the C{--listen} values.
    @param modules: C{sys.modules} (tests pass their own).
    """
    if any(splitDescription(d)[0] not in _PLAIN_ENDPOINTS for d in listen):
        return
    if "OpenSSL" not in modules and "twisted.internet.tcp" not in modules:
        modules["OpenSSL"] = None


def isLocal(description: str) -> bool:
    """
    @return: whether only processes on this host can reach C{description}
        (a C{unix:} socket, or a TCP or TLS listener on a loopback address).
    """
    kind, _, kwargs = splitDescription(description)
    if kind == "unix":
        return True
    return kind in _PORT_ENDPOINTS and isLoopback(kwargs.get("interface", ""))


def defaultTracebacks(listen: Sequence[str]) -> str:
    """
    @return: the C{--tracebacks} default for these listeners: C{"full"} when
        every one is local (whoever connects can read the install anyway),
        C{"short"} when any may be reached from other hosts (paths, library
        versions and source lines are not theirs to see).
    """
    return "full" if all(isLocal(d) for d in listen) else "short"


def listenDescription(description: str) -> str:
    """
    @return: C{description} as the daemon listens on it: a C{unix:} socket
        without C{mode=} gets L{DEFAULT_UNIX_MODE} (Twisted's default lets
        every local user connect).
    """
    kind, _, kwargs = splitDescription(description)
    if kind == "unix" and "mode" not in kwargs:
        return f"{description}:mode={DEFAULT_UNIX_MODE}"
    return description


def exposureWarnings(description: str, token: bool) -> list[str]:
    """
    @param token: whether clients must authenticate (C{--auth-token-file}).
    @return: what is unsafe about listening on C{description}: a network
        address beyond loopback without TLS (calls, results and the token
        travel in clear text) or without authentication (anyone who can
        reach it runs tasks); a C{unix:} socket every local user may
        connect to, without authentication.
    """
    kind, _, kwargs = splitDescription(description)
    if kind == "unix":
        try:
            mode = int(kwargs.get("mode", DEFAULT_UNIX_MODE), 8)
        except ValueError:
            return []  # Twisted refuses it when it listens
        if mode & 0o002 and not token:
            return [
                f"{description} lets every local user connect (mode "
                f"{mode:o}) and there is no authentication: any of them can "
                "run tasks; leave mode= out (660) or set --auth-token-file"
            ]
        return []
    if kind not in _PORT_ENDPOINTS:
        return []  # the like of systemd: sockets: their owner sets access
    interface = kwargs.get("interface", "")
    if isLoopback(interface):
        return []
    where = interface or ("all interfaces" if kind != "tcp6" else "all IPv6 interfaces")
    warnings = []
    if kind in ("tcp", "tcp6"):
        warnings.append(
            f"{description} listens on {where} without TLS: calls, results"
            + (" and the auth token" if token else "")
            + " cross the network in clear text; use ssl: or mtls:"
        )
    if not token and kind != "mtls":
        warnings.append(
            f"{description} listens on {where} without authentication: "
            "anyone who can reach it can run tasks; set --auth-token-file "
            "or use mtls:"
        )
    return warnings


def describeListenError(error: CannotListenError | OSError) -> str:
    """
    @return: C{"cannot listen on 127.0.0.1:12345: address already in
        use"}: the address and the reason, without Twisted's decoration.
    """
    if not isinstance(error, CannotListenError):
        # Adopting a socket passed by systemd that is not one, say.
        where = f" on {error.filename}" if error.filename else ""
        return f"cannot listen{where}: {error.strerror or error}"
    reason = error.socketError
    why = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    if error.port is None or error.port == "":
        where = str(error.interface)
    elif isinstance(error.port, int):
        where = f"{error.interface or '0.0.0.0'}:{error.port}"
    else:
        where = str(error.port)  # a UNIX socket's path
    return f"cannot listen on {where}: {why[:1].lower() + why[1:]}"
