# -*- test-case-name: tests.test_pool_unit -*-
"""
Lifecycles as explicit states and named transitions.

A L{Lifecycle} holds one object's state (a worker process's, the pool's)
and changes it only through the transitions its table names; anything
else is a bug and fails loudly with L{IllegalTransition}, instead of being
ignored.  Not C{automat}: these machines are small, their transitions
carry no inputs or outputs, and a dictionary look-up is all a transition
costs.
"""

from __future__ import annotations

from enum import Enum
from typing import Generic, Mapping, TypeVar

S = TypeVar("S", bound=Enum)


class IllegalTransition(RuntimeError):
    """
    A transition was asked for in a state that does not allow it.
    """


class Lifecycle(Generic[S]):
    """
    The state of one object, changed by named transitions.

    @ivar state: the current state.
    """

    def __init__(self, table: Mapping[str, tuple[frozenset[S], S]], initial: S) -> None:
        """
        @param table: each transition's name, the states it may start
            from, and the state it leads to.
        """
        self._table = table
        self.state = initial

    def go(self, transition: str) -> S:
        """
        Take C{transition}.

        @return: the state it left.
        @raise IllegalTransition: if the current state does not allow it.
        """
        sources, target = self._table[transition]
        previous = self.state
        if previous not in sources:
            raise IllegalTransition(
                f"{transition!r} is not allowed in state {previous.name}"
            )
        self.state = target
        return previous

    def can(self, transition: str) -> bool:
        """
        @return: whether C{transition} is allowed now.
        """
        return self.state in self._table[transition][0]
