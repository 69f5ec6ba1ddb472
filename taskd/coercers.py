# -*- test-case-name: tests.test_tap -*-
"""
The coercers of C{twistd taskd}'s option values: each turns the string
given on the command line into the option's value, or raises C{ValueError}
saying what the value must be (C{"must be a whole number of at least
1"}); L{namingErrors} makes those errors name the option and the value as
well (C{--workers '0': must be a whole number of at least 1}).

They are apart from L{taskd.tap} so that the options table there reads as
a table, and so that any other command line of taskd can take the same
values with the same words; they know nothing of the daemon.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.python import usage

from taskd.tracebacks import TRACEBACK_MODES


def wholeNumber(value: str) -> int:
    """
    @return: C{value} as an C{int}.
    @raise ValueError: if it is not a whole number.
    """
    try:
        return int(value)
    except ValueError:
        raise ValueError("must be a whole number") from None


def positiveInt(value: str) -> int:
    """
    @return: C{value} as an C{int} of at least 1.
    @raise ValueError: otherwise.
    """
    if wholeNumber(value) < 1:
        raise ValueError("must be a whole number of at least 1")
    return int(value)


def nonNegativeInt(value: str) -> int:
    """
    @return: C{value} as an C{int} of at least 0.
    @raise ValueError: otherwise.
    """
    if wholeNumber(value) < 0:
        raise ValueError("must be a whole number of at least 0")
    return int(value)


def positiveSeconds(value: str) -> float:
    """
    @return: C{value} as a finite number of seconds, more than 0.
    @raise ValueError: otherwise.
    """
    try:
        n = float(value)
    except ValueError:
        n = float("nan")
    if not n > 0 or n == float("inf"):
        raise ValueError("must be a number of seconds above 0")
    return n


def seconds(value: str) -> float:
    """
    @return: C{value} as a finite number of seconds, 0 or more.
    @raise ValueError: otherwise (C{nan} and C{inf} included).
    """
    try:
        n = float(value)
    except ValueError:
        n = float("nan")
    if not n >= 0 or n == float("inf"):
        raise ValueError("must be a number of seconds (0 or more)")
    return n


def tracebackMode(value: str) -> str:
    """
    @return: C{value}, one of L{TRACEBACK_MODES}.
    @raise ValueError: if it is none of them.
    """
    if value not in TRACEBACK_MODES:
        raise ValueError(f"must be one of {', '.join(TRACEBACK_MODES)}, not {value!r}")
    return value


def naming(option: str, coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    """
    Wrap an option's coercer so that its error names the option and the
    value: C{--workers '0': must be a whole number of at least 1}.
    (twistd's own message names neither.)

    @param option: the option's long name, without C{--}.
    @param coerce: the coercer, which raises C{ValueError} in words.
    @return: a coercer that raises C{usage.UsageError} instead.
    """

    def coerced(value: str) -> Any:
        try:
            return coerce(value)
        except ValueError as e:
            raise usage.UsageError(f"--{option} {value!r}: {e}") from None

    coerced.coerceDoc = getattr(coerce, "coerceDoc", "")  # type: ignore[attr-defined]
    return coerced


def namingErrors(rows: list[list[Any]]) -> list[list[Any]]:
    """
    @param rows: an C{optParameters} table of C{usage.Options}.
    @return: the same table, each coercer wrapped with L{naming}.
    """
    return [row[:4] + [naming(row[0], row[4])] if len(row) > 4 else row for row in rows]
