"""
taskd: hand blocking or heavy work from a Twisted program to a pool of
worker processes, in-process or over a JSON-lines network protocol.

C{from taskd import task} is all a task module needs (and C{progress}, to
report how a call is doing); it imports nothing from Twisted, so workers
start fast.  The Twisted-side names (L{ProcessPool}, L{PoolService},
L{connect}, L{TaskClient}, L{ReconnectingClient}) are imported on first use.
"""

from typing import Any

from taskd.registry import Registry, registry, task

__all__ = [
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


def __getattr__(name: str) -> Any:
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
