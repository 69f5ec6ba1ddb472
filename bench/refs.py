"""
The reference systems' side of the workloads: ampoule's AMP commands and
child, and plain functions for multiprocessing.
"""

from __future__ import annotations

from twisted.protocols import amp

from taskd import examples

try:
    from ampoule import child as _ampchild
except ImportError:  # pragma: no cover: the bench extra is not installed
    _ampchild = None


class Add(amp.Command):
    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"result", amp.Integer())]


class Echo(amp.Command):
    arguments = [(b"value", amp.Unicode())]
    response = [(b"result", amp.Unicode())]


class Burn(amp.Command):
    arguments = [(b"n", amp.Integer())]
    response = [(b"result", amp.Integer())]


if _ampchild is not None:

    class AmpChild(_ampchild.AMPChild):
        @Add.responder
        def add(self, a: int, b: int) -> dict[str, int]:
            return {"result": examples.add(a, b)}

        @Echo.responder
        def echo(self, value: str) -> dict[str, str]:
            return {"result": examples.echo(value)}

        @Burn.responder
        def burn(self, n: int) -> dict[str, int]:
            return {"result": examples.burn(n)}


def add(a: int, b: int) -> int:
    return examples.add(a, b)


def echo(value: str) -> str:
    return examples.echo(value)


def burn(n: int) -> int:
    return examples.burn(n)
