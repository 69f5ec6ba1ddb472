# -*- test-case-name: tests.test_registry -*-
"""
The registry of tasks: which names may run, and the functions behind them.

A task module marks its functions with L{task}::

    from taskd import task

    @task
    def send_mail(to, subject, body): ...

    @task(name="mail.bulk")
    def bulk(users): ...

The daemon imports the modules named in its configuration (C{--tasks}) in
the parent and in every worker.  Only names found here run: nothing a caller
sends is imported or evaluated.

This module is imported by every worker process, so it imports nothing from
Twisted.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Iterator, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """
    A mapping of task names to functions.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, Callable[..., Any]] = {}

    def register(self, function: F, name: str | None = None) -> F:
        """
        Register C{function} under C{name}, its C{__qualname__} by default.

        @raise ValueError: if another function already holds the name.
        @return: C{function} itself, so this works as a decorator.
        """
        if name is None:
            name = function.__qualname__
        if not isinstance(name, str) or not name or "\n" in name:
            raise ValueError(f"invalid task name {name!r}")
        existing = self._tasks.get(name)
        if existing is not None and _identity(existing) != _identity(function):
            raise ValueError(
                f"task name {name!r} is already registered to "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        self._tasks[name] = function
        return function

    @overload
    def task(self, function: F) -> F: ...

    @overload
    def task(self, *, name: str) -> Callable[[F], F]: ...

    def task(
        self, function: F | None = None, *, name: str | None = None
    ) -> F | Callable[[F], F]:
        """
        Decorator form of L{register}: C{@task} or C{@task(name="x")}.
        """
        if function is not None:
            return self.register(function)

        def decorate(f: F) -> F:
            return self.register(f, name)

        return decorate

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
