# -*- test-case-name: tests.test_lifecycle -*-
"""
Lifecycles as explicit states and named transitions.

A class that mixes in L{Lifecycle} has a C{state} and changes it only
through the transitions its table names; anything else is a bug and fails
loudly with L{IllegalTransition}, instead of being ignored.  Not
C{automat}: these machines are small, their transitions carry no inputs or
outputs, and reading C{state} must cost no more than reading an attribute
(the scheduler does it several times per call).
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, Generic, Mapping, TypeVar

S = TypeVar("S", bound=Enum)


class IllegalTransition(RuntimeError):
    """
    A transition was asked for in a state that does not allow it.
    """


class Lifecycle(Generic[S]):
    """
    A state, changed by named transitions.

    @cvar transitions: each transition's name, the states it may be taken
        from, and the state it leads to.
    @ivar state: the current state.
    """

    transitions: ClassVar[Mapping[str, tuple[frozenset[Enum], Enum]]]
    state: S

    def _go(self, transition: str) -> S:
        """
        Take C{transition}.

        @return: the state it left.
        @raise IllegalTransition: if the current state does not allow it.
        """
        sources, target = self.transitions[transition]
        previous = self.state
        if previous not in sources:
            raise IllegalTransition(
                f"{transition!r} is not allowed in state {previous.name}"
            )
        self.state = target  # type: ignore[assignment]
        return previous

    def _can(self, transition: str) -> bool:
        """
        @return: whether C{transition} is allowed now.
        """
        return self.state in self.transitions[transition][0]
