# -*- test-case-name: tests.test_registry -*-
"""
The registry of tasks: which names may run, and the functions behind them.

A task module marks its functions with L{task}::

    from taskd import task

    @task
    def send_mail(to, subject, body): ...

    @task(name="mail.bulk")
    def bulk(users): ...

    @task(priority=10, concurrency=2, rate="10/s")
    def reset_password(user): ...

    @task(retries=3, backoff=2.0, retryOn=(ConnectionError,))
    def fetch(url): ...

    @task
    async def ping(host): ...            # runs on the worker's event loop

    @task(mode="process")
    def resize(image): ...               # has a worker to itself

The scheduling options (L{TaskOptions}: a default priority, a cap on
calls running at once, a rate limit, retries) are kept per task name; the
pool reads them (see C{docs/scheduling.md}).

The daemon imports the modules named in its configuration (C{--tasks}) in
the parent and in every worker.  Only names found here run: nothing a caller
sends is imported or evaluated.

This module is imported by every worker process, so it imports nothing from
Twisted.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Iterator, NamedTuple, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])

#: The lowest and highest priority a call or a task may have.
MIN_PRIORITY, MAX_PRIORITY = -100, 100

_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parseRate(text: str) -> float:
    """
    Read a rate limit such as C{"10/s"}, C{"30/m"} or C{"100/h"}: a
    positive number of calls per second, minute or hour.

    @return: the rate in calls per second.
    @raise ValueError: naming what is wrong with C{text}.
    """
    if not isinstance(text, str):
        raise ValueError(f"rate must be a string such as '10/s', not {text!r}")
    count, slash, per = text.partition("/")
    if not slash or per not in _PER:
        raise ValueError(f"rate {text!r} must be COUNT/s, COUNT/m or COUNT/h (such as '10/s')")
    try:
        number = float(count)
    except ValueError:
        raise ValueError(f"rate {text!r}: {count!r} is not a number") from None
    if not 0 < number < float("inf"):
        raise ValueError(f"rate {text!r}: the count must be a positive number")
    return number / _PER[per]


#: How a task's calls run in a worker (L{TaskOptions.mode}): on one of
#: the worker's threads (the default for a plain function; with the
#: default C{--threads 1}, one call at a time as always), ...
THREAD = "thread"
#: ... on the worker's asyncio event loop (the default for an C{async def}
#: function), ...
ASYNC = "async"
#: ... or alone in its worker, which runs nothing else meanwhile and is
#: killed if the call times out or is cancelled (CPU-bound work).
PROCESS = "process"
#: Every mode.
MODES = (THREAD, ASYNC, PROCESS)


#: The most retries a task may ask for.
MAX_RETRIES = 100

#: The longest first backoff a task may ask for, in seconds.
MAX_BACKOFF = 3600.0


def _typeNames(value: Iterable[type[BaseException] | str]) -> tuple[str, ...]:
    """
    @return: the names of exception types, as a worker reports them in an
        error's C{"exception"} field: C{"ValueError"} for builtins,
        C{"module.Class"} for others.
    @raise ValueError: for anything but exception classes and names.
    """
    if isinstance(value, (str, type)):
        value = (value,)
    names = []
    for item in value:
        if isinstance(item, str) and item:
            names.append(item)
        elif isinstance(item, type) and issubclass(item, BaseException):
            module = item.__module__
            names.append(item.__qualname__ if module == "builtins" else f"{module}.{item.__qualname__}")
        else:
            raise ValueError(f"retryOn must hold exception classes or their names, not {item!r}")
    return tuple(names)


class TaskOptions(NamedTuple):
    """
    How the pool schedules one task's calls; C{None} leaves an option
    unset.  (A C{NamedTuple}, not an attrs class: this module is imported
    by every worker, which imports nothing it does not need.)

    @ivar priority: the default priority of the task's calls, from
        L{MIN_PRIORITY} to L{MAX_PRIORITY} (higher runs first); a call's
        own priority overrides it.
    @ivar concurrency: at most this many of the task's calls run at once,
        across all workers.
    @ivar rate: at most this many of the task's calls start per second,
        minute or hour (C{"10/s"}, C{"30/m"}, C{"100/h"}; see L{parseRate}).
    @ivar retries: run a call again, up to this many times, after its
        worker crashed, it timed out, or it raised an exception named in
        C{retryOn}.  Only for tasks that are safe to run twice.
    @ivar backoff: seconds before the first retry (1 by default); each
        further retry waits twice as long as the one before, with jitter.
    @ivar retryOn: the exception types (classes, or names as in an error's
        C{"exception"} field) that are retried as well.
    @ivar mode: how its calls run in a worker: C{THREAD}, C{ASYNC} (only
        for an C{async def} function, and the default for one) or
        C{PROCESS}; see C{docs/tasks.md}.
    """

    priority: int | None = None
    concurrency: int | None = None
    rate: str | None = None
    retries: int | None = None
    backoff: float | None = None
    retryOn: tuple[str, ...] | None = None
    mode: str | None = None

    def check(self) -> TaskOptions:
        """
        @return: C{self}, with C{retryOn} as a tuple of names, if every
            option is in its range.
        @raise ValueError: naming the option that is not.
        """
        priority, concurrency = self.priority, self.concurrency
        if priority is not None and (
            type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY
        ):
            raise ValueError(
                f"priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}, not {priority!r}"
            )
        if concurrency is not None and (type(concurrency) is not int or concurrency < 1):
            raise ValueError(f"concurrency must be a whole number of at least 1, not {concurrency!r}")
        if self.rate is not None:
            parseRate(self.rate)
        retries, backoff = self.retries, self.backoff
        if retries is not None and (type(retries) is not int or not 0 <= retries <= MAX_RETRIES):
            raise ValueError(f"retries must be a whole number from 0 to {MAX_RETRIES}, not {retries!r}")
        if backoff is not None and (
            isinstance(backoff, bool)
            or not isinstance(backoff, (int, float))
            or not 0 <= backoff <= MAX_BACKOFF
        ):
            raise ValueError(f"backoff must be a number of seconds from 0 to {MAX_BACKOFF:g}, not {backoff!r}")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {self.mode!r}")
        if self.retryOn is not None:
            return self._replace(retryOn=_typeNames(self.retryOn))
        return self

    def merged(self, override: TaskOptions) -> TaskOptions:
        """
        @return: these options, with each option C{override} sets replacing
            this one's.
        """
        return self._replace(
            **{key: value for key, value in override._asdict().items() if value is not None}
        )


class Registry:
    """
    A mapping of task names to functions.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, Callable[..., Any]] = {}
        self._options: dict[str, TaskOptions] = {}

    def register(
        self,
        function: F,
        name: str | None = None,
        **options: Any,
    ) -> F:
        """
        Register C{function} under C{name}, its C{__qualname__} by default,
        with its scheduling options (the fields of
        L{taskd.registry.TaskOptions}, by name).

        @raise ValueError: if another function already holds the name, or
            for an option out of its range.
        @return: C{function} itself, so this works as a decorator.
        """
        if name is None:
            name = function.__qualname__
        if not isinstance(name, str) or not name or "\n" in name:
            raise ValueError(f"invalid task name {name!r}")
        try:
            checked = _options(options)
            _modeOf(function, checked.mode)
        except ValueError as e:
            raise ValueError(f"task {name!r}: {e}") from None
        existing = self._tasks.get(name)
        if existing is not None and _identity(existing) != _identity(function):
            raise ValueError(
                f"task name {name!r} is already registered to "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        self._tasks[name] = function
        if checked == _NO_OPTIONS:
            self._options.pop(name, None)
        else:
            self._options[name] = checked
        return function

    @overload
    def task(self, function: F) -> F: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        priority: int | None = None,
        concurrency: int | None = None,
        rate: str | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        retryOn: Iterable[type[BaseException] | str] | None = None,
        mode: str | None = None,
    ) -> Callable[[F], F]: ...

    def task(
        self, function: F | None = None, *, name: str | None = None, **options: Any
    ) -> F | Callable[[F], F]:
        """
        Decorator form of L{register}: C{@task}, C{@task(name="x")},
        C{@task(priority=5, concurrency=2, rate="10/s")},
        C{@task(retries=3, retryOn=(ConnectionError,))}, C{@task(mode="process")}.
        """
        if function is not None:
            return self.register(function)
        # Check now, so the error points at the decorator's line.
        try:
            _options(options)
        except ValueError as e:
            raise ValueError(f"task {name or '(unnamed)'!r}: {e}") from None

        def decorate(f: F) -> F:
            return self.register(f, name, **options)

        return decorate

    def options(self, name: str) -> TaskOptions:
        """
        @return: the scheduling options task C{name} was registered with
            (all unset if none, or if there is no such task).
        """
        return self._options.get(name, _NO_OPTIONS)

    def optionsByName(self) -> dict[str, TaskOptions]:
        """
        @return: the tasks registered with scheduling options, and theirs.
        """
        return dict(self._options)

    def mode(self, name: str) -> str:
        """
        @return: how task C{name}'s calls run in a worker (C{THREAD},
            C{ASYNC} or C{PROCESS}; C{THREAD} if there is no such task).
        """
        function = self._tasks.get(name)
        if function is None:
            return THREAD
        return _modeOf(function, self.options(name).mode)

    def get(self, name: str) -> Callable[..., Any] | None:
        """
        @return: the function registered under C{name}, or C{None}.
        """
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)


_NO_OPTIONS = TaskOptions()


def _options(options: dict[str, Any]) -> TaskOptions:
    """
    @return: the L{TaskOptions} named by C{options}, checked.
    @raise ValueError: for an unknown option or one out of its range.
    """
    unknown = sorted(set(options) - set(TaskOptions._fields))
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} (options: {', '.join(TaskOptions._fields)})"
        )
    return TaskOptions(**options).check()


def _modeOf(function: Callable[..., Any], mode: str | None) -> str:
    """
    @return: the mode C{function}'s calls run in: C{mode} if set, else
        C{ASYNC} for an C{async def} function and C{THREAD} for others.
    @raise ValueError: for C{ASYNC} on a function that is not C{async def},
        or another mode on one that is.
    """
    coroutine = _isCoroutineFunction(function)
    if mode is None:
        return ASYNC if coroutine else THREAD
    if coroutine and mode != ASYNC:
        raise ValueError(f"an async def task runs in mode 'async', not {mode!r}")
    if mode == ASYNC and not coroutine:
        raise ValueError("mode 'async' is for async def functions only")
    return mode


#: The code flag of an C{async def} function (C{inspect.CO_COROUTINE};
#: C{inspect} itself costs a worker 20 ms to import).
_CO_COROUTINE = 0x80


def _isCoroutineFunction(function: Callable[..., Any]) -> bool:
    """
    @return: whether C{function} is an C{async def} function (a wrapper
        made with C{functools.wraps} counts as what it is itself).
    """
    code = getattr(function, "__code__", None)
    return code is not None and bool(code.co_flags & _CO_COROUTINE)


def _identity(function: Callable[..., Any]) -> tuple[str, str]:
    # A module imported twice (as __main__ and by name, or reloaded) makes
    # a new function object for the same task; that is not a conflict.
    return (function.__module__, function.__qualname__)


def loadTaskModules(modules: Iterable[str]) -> None:
    """
    Import each named task module, so its C{@task} decorators run.

    The names come from the daemon's configuration, never from a client.

    @raise ImportError: (or whatever the module raises) if one fails.
    """
    for module in modules:
        importlib.import_module(module)


#: The registry the L{task} decorator fills, used by the daemon and workers.
registry = Registry()

#: Decorator registering a function in the default L{registry}.
task = registry.task
