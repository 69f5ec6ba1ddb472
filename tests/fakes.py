"""
The project's own test helpers around L{taskd.testing}'s fake process
reactor.
"""

from __future__ import annotations

from typing import Any

from taskd._frames import frame
from taskd.pool import ProcessPool
from taskd.registry import Registry
from taskd.testing import FakeProcess, FakeProcessReactor

__all__ = ["FakeProcess", "FakeProcessReactor", "PoolTestsMixin", "frame", "makeRegistry"]


def makeRegistry() -> Registry:
    reg = Registry()
    for name in ("add", "sleep", "pid"):
        reg.register(lambda *a, **k: None, name)
    return reg


class PoolTestsMixin:
    def makePool(self, workers: int = 1, **kw: Any) -> tuple[ProcessPool, FakeProcessReactor]:
        reactor = FakeProcessReactor()
        self.addCleanup(reactor.closeAll)  # type: ignore[attr-defined]
        kw.setdefault("registry", makeRegistry())
        pool = ProcessPool(reactor, tasks=[], workers=workers, **kw)
        return pool, reactor

    def startedPool(self, workers: int = 1, **kw: Any) -> tuple[ProcessPool, FakeProcessReactor]:
        pool, reactor = self.makePool(workers, **kw)
        d = pool.start()
        for p in reactor.processes:
            p.ready()
        self.successResultOf(d)  # type: ignore[attr-defined]
        return pool, reactor
