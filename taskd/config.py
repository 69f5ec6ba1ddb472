# -*- test-case-name: tests.test_pool_unit,tests.test_tap -*-
"""
Configuration: every knob of the pool, its default and its range, in one
place.  The daemon's command line (L{taskd.tap}) builds a L{PoolConfig}
from its options; a program embedding the pool builds one directly or
passes the same names to L{taskd.pool.ProcessPool}.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

from attrs import field, frozen, validators

from taskd._frames import DEFAULT_MAX_RESULT
from taskd.registry import TaskOptions


def _atLeast(minimum: float) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and not value >= minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, not {value!r}")

    return check


def _moreThan(minimum: float) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and not value > minimum:
            raise ValueError(f"{attribute.name} must be more than {minimum}, not {value!r}")

    return check


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _taskLimits(value: Mapping[str, TaskOptions]) -> dict[str, TaskOptions]:
    limits = {}
    for name, options in dict(value).items():
        if not isinstance(options, TaskOptions):
            raise ValueError(f"taskLimits[{name!r}] must be a TaskOptions, not {options!r}")
        try:
            limits[name] = options.check()
        except ValueError as e:
            raise ValueError(f"taskLimits[{name!r}]: {e}") from None
    return limits


def parseTaskLimit(text: str) -> tuple[str, TaskOptions]:
    """
    Read a task's scheduling options as the daemon's C{--task-limit} takes
    them: C{NAME:concurrency=4,rate=10/s,priority=5,retries=3,backoff=2}
    (any of them, at least one).

    @return: the task name and its options.
    @raise ValueError: saying precisely what is wrong.
    """
    name, colon, rest = text.rpartition(":")
    if not colon or not name:
        raise ValueError("must be NAME:OPTION=VALUE,... (such as send_mail:concurrency=4,rate=10/s)")
    values: dict[str, Any] = {}
    for item in rest.split(","):
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or key not in ("concurrency", "rate", "priority", "retries", "backoff"):
            raise ValueError(
                f"{item!r} is not concurrency=N, rate=N/s|m|h, priority=N, retries=N or backoff=SECONDS"
            )
        if key in values:
            raise ValueError(f"{key} is given twice")
        if key == "rate":
            values[key] = value.strip()
        elif key == "backoff":
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"backoff must be a number of seconds, not {value!r}") from None
        else:
            try:
                values[key] = int(value)
            except ValueError:
                raise ValueError(f"{key} must be a whole number, not {value!r}") from None
    return name, TaskOptions(**values).check()


def _positiveOrNone(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds or None, not {value!r}")


def _cpuCount() -> int:
    return os.cpu_count() or 1


@frozen(kw_only=True)
class PoolConfig:
    """
    How a L{ProcessPool} runs: every limit and default in one place (the
    daemon's options build one too).  Invalid values raise C{ValueError}
    naming the field.

    @ivar tasks: the task modules, imported by the pool and every worker.
    @ivar workers: how many worker processes to keep running.
    @ivar maxQueue: how many calls may wait for a worker; past it,
        submitting fails at once with L{errors.PoolBusy}.
    @ivar timeout: the default limit, in seconds, on the time a call runs in
        its worker, or C{None} for no limit.  Time spent queued is not
        counted.
    @ivar maxTasksPerWorker: replace a worker after it has answered this
        many calls (C{None}: never).
    @ivar grace: on L{ProcessPool.stop}, how long running calls may go on.
    @ivar killGrace: how long a worker asked to exit has before it is
        killed, and how long what a worker's tasks left in its process
        group has between SIGTERM and SIGKILL.
    @ivar maxResult: the largest JSON-encoded result, in bytes.
    @ivar maxMemory: each worker's address-space limit in bytes
        (C{RLIMIT_AS}), or C{None}; a task past it gets C{MemoryError}.
    @ivar maxWorkerRSS: a worker whose resident memory is above this many
        bytes after a call is replaced (its call is answered as usual), or
        C{None}.
    @ivar prefetch: how many calls a worker may hold at once: the one it
        runs and, while calls are queued and no worker is idle, the next
        ones waiting in its pipe, so it never waits for the parent between
        calls.  1 (the default) sends a call only to an idle worker; more
        speeds up short tasks but lets a long task delay the calls behind
        it.
    @ivar prefetchTime: with C{prefetch} above 1, a call is sent ahead to
        a busy worker only if the calls it holds, with this one, are
        expected to run within this many seconds, each expected to take
        as long as its task's calls have been taking (see
        C{docs/pool.md}); C{None}: only C{prefetch} limits how many.
    @ivar threads: how many calls each worker may run at once on threads
        of its own (see C{docs/tasks.md}); 1, the default, runs one call at
        a time.  The pool runs up to C{workers * threads} plain calls at
        once.
    @ivar asyncConcurrency: how many calls of C{async def} tasks each
        worker may run at once on its event loop.
    @ivar minRestartDelay: the first delay before replacing a worker that
        failed to start; it doubles for each further failure in a row, up
        to C{maxRestartDelay}.  Workers killed (timeout, cancel) or crashed
        are replaced at once, C{workers} of them, then one per
        C{minRestartDelay} seconds.
    @ivar agingInterval: a queued call gains one level of priority per this
        many seconds it waits, so that a call of priority C{p} is overtaken
        only by calls of priority C{q} that arrive less than
        C{(q - p) * agingInterval} seconds after it; C{None}: strict
        priorities (see C{docs/scheduling.md}).
    @ivar taskLimits: scheduling options by task name, each overriding
        the options of C{@task(...)} it sets (see L{TaskOptions}).
    @ivar python: the interpreter workers run on.
    @ivar env: the workers' environment (the daemon's by default).
    """

    tasks: Sequence[str] = field(default=("taskd.examples",), converter=_names)
    workers: int = field(factory=_cpuCount, validator=_atLeast(1))
    maxQueue: int = field(default=1000, validator=_atLeast(0))
    timeout: float | None = field(default=None, validator=_moreThan(0))
    maxTasksPerWorker: int | None = field(default=None, validator=_atLeast(1))
    grace: float = field(default=10.0, validator=_atLeast(0))
    killGrace: float = field(default=5.0, validator=_atLeast(0))
    maxResult: int = field(default=DEFAULT_MAX_RESULT, validator=_atLeast(1))
    maxMemory: int | None = field(default=None, validator=_atLeast(1))
    maxWorkerRSS: int | None = field(default=None, validator=_atLeast(1))
    prefetch: int = field(default=1, validator=_atLeast(1))
    prefetchTime: float | None = field(default=0.005, validator=_positiveOrNone)
    threads: int = field(default=1, validator=_atLeast(1))
    asyncConcurrency: int = field(default=100, validator=_atLeast(1))
    minRestartDelay: float = field(default=0.5, validator=_atLeast(0))
    maxRestartDelay: float = field(default=30.0, validator=_atLeast(0))
    agingInterval: float | None = field(default=1.0, validator=_positiveOrNone)
    taskLimits: Mapping[str, TaskOptions] = field(factory=dict, converter=_taskLimits)
    python: str = sys.executable
    env: Mapping[str, str] | None = field(default=None, validator=validators.optional(validators.instance_of(dict)))
