# -*- test-case-name: tests.test_frames,tests.test_protocol -*-
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
from typing import Any, Callable

#: Decode JSON text or UTF-8 bytes.
loads: Callable[[str | bytes | bytearray], Any] = json.loads

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
