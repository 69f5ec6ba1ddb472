# -*- test-case-name: tests.test_admin -*-
"""
The admin commands of C{python -m taskd}: C{running} (the calls running,
each with its daemon-wide number), C{cancel NUMBER}, C{workers COUNT}
(resize the pool), C{drain} and C{restart} (a rolling restart of the
workers), each with the admin token of C{--admin-token-file} or
C{$TASKD_ADMIN_TOKEN} if given.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet.defer import CancelledError

from taskd import errors
from taskd.cli.connecting import connecting, readToken
from taskd.cli.console import Unreachable, write
from taskd.cli.interruption import Interruption
from taskd.client import TaskClient

#: The admin commands.
ADMIN_COMMANDS = ("running", "cancel", "workers", "drain", "restart")


def adminToken(options: argparse.Namespace) -> str | None:
    """
    @return: the admin token of C{--admin-token-file}, or of
        C{$TASKD_ADMIN_TOKEN}, or C{None}.
    @raise UsageProblem: if the file cannot be read or is empty.
    """
    return readToken(options.admin_token_file, "--admin-token-file", "TASKD_ADMIN_TOKEN")


async def adminCommand(reactor: Any, options: argparse.Namespace, interruption: Interruption) -> int:
    """
    Make the admin request C{options.command} and print its answer.

    @return: 0, or -1 if interrupted.
    @raise Unreachable: if the daemon refuses or cannot do it.
    """
    token = adminToken(options)
    fields: dict[str, Any] = {} if token is None else {"token": token}
    if options.command == "cancel":
        fields["number"] = options.number
    elif options.command == "workers":
        fields["count"] = options.count
    try:
        protocol = await connecting(reactor, options, interruption)
    except CancelledError:
        return -1
    client = TaskClient(protocol)
    try:
        reply = await protocol.admin(options.command, **fields)
    except CancelledError:
        return -1
    except errors.TaskdError as e:
        raise Unreachable(f"{options.connect} refused {options.command}: {e.type}: {e.message}")
    finally:
        await client.close()
    answer = reply.fields
    write(sys.stdout, json.dumps(answer) + "\n" if options.json else _text(options.command, answer))
    return 0


def _text(command: str, answer: dict[str, Any]) -> str:
    if command == "running":
        calls = answer.get("calls", [])
        if not calls:
            return "no call is running\n"
        rows = [("#", "task", "age", "peer", "worker")] + [
            (str(c["number"]), str(c["task"]), f"{c['age']:.1f}s", str(c["peer"]), str(c["pid"]))
            for c in calls
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n" for r in rows)
    if command == "cancel":
        return "cancelled\n"
    if command == "workers":
        return f"workers: {answer.get('workers')}\n"
    if command == "drain":
        return "draining: no new connections; /healthz answers 503\n"
    return f"restarted: {answer.get('replaced')} workers replaced\n"


def addAdminCommands(commands: Any, common: argparse.ArgumentParser) -> None:
    """
    Add the admin commands to C{python -m taskd}'s subcommands.

    @param common: the options every command takes.
    """
    from taskd.cli.options import positiveArgument

    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument(
        "--admin-token-file",
        default=None,
        help="a file holding the daemon's admin token [default: $TASKD_ADMIN_TOKEN, if set]",
    )
    admin.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    parents = [common, admin]
    commands.add_parser(
        "running",
        parents=parents,
        help="admin: the calls running now, each with its number",
        description="List the calls running now: daemon-wide number, task, age, peer and worker.",
    )
    cancel = commands.add_parser(
        "cancel",
        parents=parents,
        help="admin: cancel a call by its number (see running)",
        description="Cancel the call in flight with this daemon-wide number; its caller gets a 'cancelled' error.",
    )
    cancel.add_argument("number", type=positiveArgument, help="the call's number")
    workers = commands.add_parser(
        "workers",
        parents=parents,
        help="admin: run COUNT workers from now on",
        description="Resize the pool to COUNT workers, without failing a call: busy workers let go leave when their calls are answered.",
    )
    workers.add_argument("count", type=positiveArgument, help="how many workers")
    commands.add_parser(
        "drain",
        parents=parents,
        help="admin: stop taking connections and fail health checks",
        description="Drain: stop listening, answer 503 on /healthz, finish the work in hand. Stop the daemon (SIGTERM) when it is idle.",
    )
    commands.add_parser(
        "restart",
        parents=parents,
        help="admin: replace every worker, one at a time (new task code)",
        description="Rolling restart: replace each worker by a fresh one that imports the task modules again, one at a time, failing no call. Prints when done.",
    )
