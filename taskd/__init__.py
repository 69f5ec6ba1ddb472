"""
taskd: hand blocking or heavy work from a Twisted program to a pool of
worker processes, in-process or over a JSON-lines network protocol.

C{from taskd import task} is all a task module needs (and C{progress}, to
report how a call is doing); it imports nothing from Twisted, so workers
start fast.  The Twisted-side names (L{ProcessPool}, L{PoolService},
L{connect}, L{TaskClient}, L{ReconnectingClient}) are imported on first use,
and so is C{__version__} (the installed distribution's version, see
L{version}).
"""

from typing import Any

from taskd.registry import Registry, registry, task

__all__ = [
    "__version__",
    "version",
    "task",
    "progress",
    "registry",
    "Registry",
    "ProcessPool",
    "PoolConfig",
    "PoolService",
    "connect",
    "TaskClient",
    "ReconnectingClient",
]


def version() -> str:
    """
    taskd's version: the installed distribution's (from its metadata), or,
    in a source checkout used without installing it, the one in the
    checkout's C{setup.cfg}; C{"0+unknown"} if neither can be read.
    C{taskd.__version__} is the same string.
    """
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distributionVersion

    try:
        return distributionVersion("taskd")
    except PackageNotFoundError:
        return _checkoutVersion()


def _checkoutVersion() -> str:
    import configparser
    import os

    config = configparser.ConfigParser()
    here = os.path.dirname(os.path.abspath(__file__))
    config.read(os.path.join(os.path.dirname(here), "setup.cfg"), encoding="utf-8")
    return config.get("metadata", "version", fallback="0+unknown")


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return version()
    if name == "progress":
        from taskd.worker import progress

        return progress
    if name == "PoolConfig":
        from taskd.config import PoolConfig

        return PoolConfig
    if name in ("ProcessPool", "PoolService"):
        from taskd import pool

        return getattr(pool, name)
    if name in ("connect", "TaskClient"):
        from taskd import client

        return getattr(client, name)
    if name == "ReconnectingClient":
        from taskd.reconnecting import ReconnectingClient

        return ReconnectingClient
    raise AttributeError(f"module 'taskd' has no attribute {name!r}")
