# -*- test-case-name: tests.test_docs -*-
"""
The commands about background jobs: C{submit} (queue a job, print its
id), C{job} (print its state as JSON) and C{wait} (wait for it to end and
print its result as C{call} does, its error on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from taskd import errors
from taskd.cli.calling import describeFailure, splitArguments
from taskd.cli.connecting import connecting
from taskd.cli.console import EXIT_FAILED, write
from taskd.cli.interruption import Interruption
from taskd.client import TaskClient


async def jobCommand(reactor: Any, options: argparse.Namespace, interruption: Interruption) -> int:
    """
    Run C{options.command}: C{"submit"}, C{"job"} or C{"wait"}.

    @return: the exit status (1 if the daemon answered with an error, or
        the job ended otherwise than done), or -1 if interrupted (a job
        goes on: an interrupted C{wait} only stops waiting).
    """
    try:
        protocol = await connecting(reactor, options, interruption)
    except CancelledError:
        return -1
    client = TaskClient(protocol)
    try:
        if options.command == "submit":
            args, kwargs = splitArguments(options.args)
            d = client.submitWith(
                options.function, args, kwargs, delay=options.delay, at=options.at,
                key=options.key, timeout=options.timeout,
            )
            interruption.onInterrupt(d.cancel)
            handle = await d
            write(sys.stdout, handle.id + "\n")
            if handle.existing:
                write(sys.stderr, f"taskd: key {options.key!r} belongs to this earlier job; nothing was queued\n")
        elif options.command == "job":
            asking = client.job(options.job).status()
            interruption.onInterrupt(asking.cancel)
            status = await asking
            fields = {"job": status.job, "state": status.state, **status.fields}
            write(sys.stdout, json.dumps(fields) + "\n")
        else:
            progress = None
            if options.progress:
                progress = lambda value: write(  # noqa: E731
                    sys.stderr, f"progress: {json.dumps(value)}\n"
                )
            waiting = client.job(options.job).result(progress)
            interruption.onInterrupt(waiting.cancel)
            result = await waiting
            write(sys.stdout, json.dumps(result) + "\n")
    except CancelledError:
        write(sys.stderr, f"taskd: interrupted ({interruption.name}); the job goes on\n")
        return -1
    except Exception:
        failure = Failure()
        write(sys.stderr, f"taskd: {describeFailure(failure)}\n")
        if isinstance(failure.value, errors.TaskFailed) and failure.value.remoteTraceback:
            write(sys.stderr, failure.value.remoteTraceback)
        return EXIT_FAILED
    finally:
        await client.close()
    return 0
