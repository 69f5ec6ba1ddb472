# -*- test-case-name: tests.test_json,tests.test_wire -*-
"""
The one JSON codec of the daemon, its workers and its client.

Compact (no spaces), strict (NaN and the infinities are refused, as JSON
has no place for them), and UTF-8 where text may be large.  Everything
that encodes JSON for the wire or the worker pipes comes through here, so
that a faster codec can be swapped in at one place.

Imported by every worker process: nothing from Twisted.
"""

from __future__ import annotations

import json
import re
from json import JSONDecodeError
from json.scanner import make_scanner
from typing import Any, Callable

# JSON's whitespace, as json.decoder.WHITESPACE has it.
_BLANK = frozenset(" \t\n\r")
_blanks = re.compile(r"[ \t\n\r]*")


def _skip(s: str, idx: int) -> int:
    """
    @return: where the whitespace at C{idx} in C{s} ends.
    """
    return _blanks.match(s, idx).end()  # type: ignore[union-attr]


def _rejectConstant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_scan = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_scanStrict = make_scanner(json.JSONDecoder(parse_constant=_rejectConstant))  # type: ignore[arg-type]


def _decode(scan: Any, s: str) -> Any:
    """
    What C{json.loads} does with a string, without its per-call set-up
    (two regular-expression matches and a decoder method call, which cost
    more than decoding a short line).
    """
    idx = _skip(s, 0) if s[:1] in _BLANK else 0
    try:
        value, end = scan(s, idx)
    except StopIteration as e:
        raise JSONDecodeError("Expecting value", s, e.value) from None
    if end != len(s):
        if s[end] in _BLANK:
            end = _skip(s, end)
        if end != len(s):
            raise JSONDecodeError("Extra data", s, end)
    return value


def loads(data: str | bytes | bytearray) -> Any:
    """
    Decode JSON text, or UTF-8 bytes, as C{json.loads} does.

    @raise ValueError: if it is not one JSON value.
    """
    if isinstance(data, str):
        if data[:1] == "\ufeff":
            raise JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
    else:
        data = bytes(data)
        encoding = "utf-8-sig" if data[:3] == b"\xef\xbb\xbf" else "utf-8"
        data = data.decode(encoding, "surrogatepass")
    return _decode(_scan, data)


def loadsFrame(data: bytes) -> Any:
    """
    Decode what a worker sent, strictly: UTF-8, one JSON value on one line,
    no NaN or infinities.

    @raise ValueError: if it is anything else.
    """
    text = data.decode("utf-8")
    if "\n" in text:
        raise ValueError("a line break")
    return _decode(_scanStrict, text)

#: Encode as compact ASCII JSON text (non-ASCII characters escaped).
dumps: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False
).encode

_dumpsUnicode = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False, ensure_ascii=False
).encode


def encode(value: Any) -> bytes:
    """
    Encode C{value} as compact UTF-8 JSON: faster than escaping every
    non-ASCII character, and shorter.  A string holding a lone surrogate
    cannot be UTF-8; JSON's escapes carry it instead.

    @raise TypeError: if C{value} holds something JSON cannot.
    @raise ValueError: for NaN or an infinity, or a circular reference.
    @raise RecursionError: if C{value} is nested too deeply.
    """
    text = _dumpsUnicode(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return dumps(value).encode("ascii")


def encodeASCII(value: Any) -> bytes:
    """
    Encode C{value} as compact ASCII JSON bytes.
    """
    return dumps(value).encode("ascii")
