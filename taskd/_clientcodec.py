# -*- test-case-name: tests.test_callmany,tests.test_client -*-
"""
What the client's side of a connection (L{taskd._clientprotocol}) writes
for a call, and what it fires with a call's outcome.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from taskd import _json, errors
from taskd.wire import Call, encodeRequest

#: How the daemon's result replies start (see L{taskd.wire.encodeResult}).
RESULT_HEAD = b'{"type":"result","id":'


class Answer(Protocol):
    """
    Where a call's outcome goes: a C{Deferred}, or anything with its
    C{callback} and C{errback}.
    """

    def callback(self, result: Any) -> None:
        """
        The call's result.
        """

    def errback(self, error: Any) -> None:
        """
        The call's error (an L{errors.TaskdError}, or C{Failure}).
        """


def encodePlainCall(name: str, args: Sequence[Any], id: int) -> bytes:
    """
    Encode a call with positional arguments only and no options: the
    line L{encodeRequest} makes of the same L{Call}, without making it.

    @raise errors.BadRequest: if the arguments are not JSON.
    """
    try:
        if args:
            return _json.encodeASCII({"function": name, "args": list(args), "id": id}) + b"\n"
        return _json.encodeASCII({"function": name, "id": id}) + b"\n"
    except (TypeError, ValueError) as e:
        raise errors.BadRequest(f"arguments cannot be sent as JSON: {e}") from None
    except RecursionError:
        raise errors.BadRequest("arguments nested too deeply to be sent as JSON") from None


def encodeCall(
    name: str,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None,
    id: int,
    timeout: float | None,
    progress: Callable[[Any], object] | None,
    priority: int | None,
    deadline: float | None,
) -> bytes:
    """
    Encode a call with any options.

    @raise errors.BadRequest: if the arguments are not JSON.
    """
    try:
        return encodeRequest(
            Call(
                name,
                list(args),
                dict(kwargs or {}),
                id,
                timeout,
                progress=progress is not None,
                priority=priority,
                deadline=deadline,
            )
        )
    except (TypeError, ValueError) as e:
        raise errors.BadRequest(f"arguments cannot be sent as JSON: {e}") from None
    except RecursionError:
        raise errors.BadRequest("arguments nested too deeply to be sent as JSON") from None
