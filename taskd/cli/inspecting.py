# -*- test-case-name: tests.test_cli -*-
"""
The commands that ask the daemon about itself: C{hello} (what it is: its
version, protocol version, tasks and limits), C{stats} (its counters) and
C{tasks} (what it serves), each printed for people, or as the daemon's
JSON with C{--json}.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet.defer import CancelledError

from taskd import errors
from taskd.cli.connecting import connecting
from taskd.cli.console import Unreachable, write
from taskd.cli.interruption import Interruption
from taskd.client import TaskClient


async def inspectCommand(reactor: Any, options: argparse.Namespace, interruption: Interruption) -> int:
    """
    Ask the daemon C{options.command} (C{"hello"}, C{"stats"} or
    C{"tasks"}) and print its answer on stdout.

    @return: 0, or -1 if interrupted.
    @raise Unreachable: if the daemon cannot answer the question.
    """
    try:
        protocol = await connecting(reactor, options, interruption)
    except CancelledError:
        return -1
    client = TaskClient(protocol)
    hello = protocol.serverHello
    assert hello is not None
    try:
        if options.command == "hello":
            fields: Any = {"version": hello.version, **hello.fields}
            text = _helloText(options.connect, fields)
        elif options.command == "stats":
            stats = await protocol.stats()
            fields = stats.fields
            text = "".join(f"{key}: {_shown(value)}\n" for key, value in fields.items())
        else:
            tasks = await protocol.tasks()
            fields = tasks.tasks
            text = "".join(
                f"{t.get('name')}{t.get('signature', '')}\n" + (f"    {t['doc']}\n" if t.get("doc") else "")
                for t in fields
            )
    except CancelledError:
        return -1
    except errors.TaskdError as e:
        raise Unreachable(f"{options.connect} cannot answer {options.command}: {e.type}: {e.message}")
    finally:
        await client.close()
    write(sys.stdout, json.dumps(fields) + "\n" if options.json else text)
    return 0


def _shown(value: Any) -> str:
    """
    A counter for people: a breakdown (C{queuedByTask}, say) as
    C{name: count} pairs, C{none} if empty.
    """
    if isinstance(value, dict):
        return ", ".join(f"{key}: {count}" for key, count in value.items()) or "none"
    return str(value)


def _helloText(where: str, fields: dict[str, Any]) -> str:
    return (
        f"{fields.get('server', '?')} {fields.get('serverVersion', '(version unknown)')} at {where}\n"
        f"protocol version: {fields.get('version')}\n"
        f"tasks: {', '.join(fields.get('tasks', []))}\n"
        f"longest request line: {fields.get('maxLineLength')} bytes\n"
        f"requests in flight per connection: {fields.get('maxInFlight')}\n"
    )
