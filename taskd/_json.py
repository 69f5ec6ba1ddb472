# -*- test-case-name: tests.test_json,tests.test_wire -*-
"""
The one JSON codec of the daemon, its workers and its client.

Compact (no spaces), strict (NaN and the infinities are refused, as JSON
has no place for them), and UTF-8 where text may be large.  Everything
that encodes JSON for the wire or the worker pipes comes through here, so
that a faster codec can be swapped in at one place.

Two implementations give the same values, bytes and errors:

  - the standard library's (C{stdlibLoads}, C{stdlibEncode}, ...), always
    there;
  - C{orjson}'s, when it is installed (C{pip install 'taskd[fast]'}):
    orjson alone is 5 to 20 times faster on our lines; with the checks
    below, 1.5 to 6 times on short ones (C{python -m bench.codec}).
    Wherever orjson and the standard
    library would differ, the fast functions hand the value to the
    standard library's: orjson refuses integers beyond 64 bits, lone
    surrogates, NaN and the infinities in text, non-string keys, a byte
    order mark, subclasses of the built-in types; it decodes an integer
    beyond 64 bits as a float, encodes NaN as C{null}, writes some floats
    in another (equal) form (C{1e-7} for C{1e-07}), and encodes values the
    standard library refuses (a C{UUID}, an C{Enum} member).  So a fast
    function uses orjson only for values made of exact C{dict}, C{list},
    C{tuple}, C{str}, C{int}, C{float}, C{bool} and C{None}, and checks
    what it makes of floats and long runs of digits.

L{loads}, L{loadsUTF8}, L{loadsFrame}, L{checkFrame}, L{encode} and
L{encodeASCII} are the fast ones when orjson is there (L{FAST}), the
standard library's otherwise.  The tests run both.

Imported by every worker process: nothing from Twisted.
"""

from __future__ import annotations

import json
import re
from json import JSONDecodeError
from json.scanner import make_scanner
from typing import Any, Callable

try:
    import orjson
except ImportError:  # pragma: no cover - the fast extra is not installed
    orjson = None  # type: ignore[assignment]

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


# -- the standard library's codec ----------------------------------------------


def stdlibLoads(data: str | bytes | bytearray) -> Any:
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


def stdlibLoadsUTF8(data: bytes) -> Any:
    """
    Decode strict UTF-8 bytes (no encoded surrogates) holding JSON text:
    C{stdlibLoads(data.decode("utf-8"))}, in one step.

    @raise UnicodeDecodeError: if C{data} is not UTF-8 (a C{ValueError}).
    @raise ValueError: if it is not one JSON value.
    """
    return stdlibLoads(data.decode("utf-8"))


def stdlibLoadsFrame(data: bytes) -> Any:
    """
    Decode what a worker sent, strictly: UTF-8, one JSON value on one line,
    no NaN or infinities.

    @raise ValueError: if it is anything else.
    """
    text = data.decode("utf-8")
    if "\n" in text:
        raise ValueError("a line break")
    return _decode(_scanStrict, text)


def stdlibCheckFrame(data: bytes) -> None:
    """
    Check that C{data} is a frame L{stdlibLoadsFrame} accepts.

    @raise ValueError: if it is not.
    """
    stdlibLoadsFrame(data)


#: Encode as compact ASCII JSON text (non-ASCII characters escaped).
dumps: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False
).encode

_dumpsUnicode = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False, ensure_ascii=False
).encode


def stdlibEncode(value: Any) -> bytes:
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


def stdlibEncodeASCII(value: Any) -> bytes:
    """
    Encode C{value} as compact ASCII JSON bytes.
    """
    return dumps(value).encode("ascii")


# -- orjson's, where it gives what the standard library gives -------------------

# The types orjson encodes as the standard library does (given the checks
# of _fastBytes), and those of them that hold no other value.
_SCALARS = frozenset((str, int, float, bool, type(None)))
_CONTAINERS = frozenset((list, tuple, dict))
_PLAIN = _SCALARS | _CONTAINERS
# What _plain finds.
_NOT_PLAIN, _NO_FLOATS, _FLOATS = 0, 1, 3
# Deeper than this, the standard library's encoder decides (orjson stops at
# 255 levels; a value that holds itself never ends).
_MAX_DEPTH = 200
# The shortest run of digits that may be an integer orjson decodes as a
# float: below -2**63 (19 digits) or from 2**64 (20 digits) on.
_DIGITS = b"0123456789"
_LONG_RUN = b"0" * 19
_DIGITS_ONLY = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
# What orjson writes where the standard library writes something else:
# NaN and the infinities (refused by it) as null, floats of exponent -5 as
# 0.0000..., of -6 to -9 as 1e-6 rather than 1e-06.
_FLOAT_SUSPECTS = (b"null", b"e-", b"0.0000")
_NEEDS_ESCAPE_IN_ASCII = b"\x7f"


def _plain(value: Any, depth: int = 0) -> int:
    """
    Tell whether C{value} is made of the types orjson encodes as the
    standard library does (L{_PLAIN}), not nested too deeply.  Keys are not
    looked at: orjson refuses every key that is not an exact C{str}.

    @return: L{_NOT_PLAIN}, L{_NO_FLOATS} or L{_FLOATS}.
    """
    kind = type(value)
    if kind in _SCALARS:
        return _FLOATS if kind is float else _NO_FLOATS
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return _NOT_PLAIN
    types = set(map(type, items))
    if types <= _SCALARS:
        return _FLOATS if float in types else _NO_FLOATS
    if not types <= _PLAIN or depth >= _MAX_DEPTH:
        return _NOT_PLAIN
    found = _FLOATS if float in types else _NO_FLOATS
    for item in items:
        if type(item) in _CONTAINERS:
            inner = _plain(item, depth + 1)
            if not inner:
                return _NOT_PLAIN
            found |= inner
    return found


def _fastBytes(value: Any) -> bytes | None:
    """
    @return: C{value} encoded by orjson, if that is what L{stdlibEncode}
        gives; C{None} where it might not be.
    """
    found = _plain(value)
    if not found:
        return None
    try:
        out: bytes = orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        return None
    if found == _FLOATS:
        for suspect in _FLOAT_SUSPECTS:
            if suspect in out:
                return None
    return out


def mayHoldBigInteger(data: bytes | memoryview, value: Any) -> bool:
    """
    @param value: what orjson decoded from C{data}.
    @return: whether C{data} may hold an integer orjson decoded as a float:
        19 digits in a row.  Short texts are scanned (in C, quick when they
        hold fewer than 19 digits at all); in a long one, only if C{value}
        holds a float at all, since scanning costs more than decoding.
    """
    if len(data) < 19:
        return False
    if len(data) > 512 and _plain(value) == _NO_FLOATS:
        return False
    if type(data) is not bytes:
        data = bytes(data)
    return (
        len(data) - len(data.translate(None, _DIGITS)) >= 19
        and _LONG_RUN in data.translate(_DIGITS_ONLY)
    )


def fastLoads(data: str | bytes | bytearray) -> Any:
    """
    L{stdlibLoads}, through orjson where that gives the same.
    """
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            return stdlibLoads(data)
    else:
        raw = data if type(data) is bytes else bytes(data)
    try:
        value = orjson.loads(raw)
    except ValueError:  # orjson.JSONDecodeError is one
        return stdlibLoads(data)
    if mayHoldBigInteger(raw, value):
        return stdlibLoads(data)
    return value


def fastLoadsUTF8(data: bytes) -> Any:
    """
    L{stdlibLoadsUTF8}, through orjson where that gives the same (orjson
    takes strict UTF-8 only).
    """
    try:
        value = orjson.loads(data)
    except ValueError:
        return stdlibLoadsUTF8(data)
    if mayHoldBigInteger(data, value):
        return stdlibLoadsUTF8(data)
    return value


def fastLoadsFrame(data: bytes) -> Any:
    """
    L{stdlibLoadsFrame}, through orjson where that gives the same.
    """
    if b"\n" not in data:
        try:
            value = orjson.loads(data)
        except ValueError:
            pass
        else:
            if not mayHoldBigInteger(data, value):
                return value
    return stdlibLoadsFrame(data)


#: From this many bytes on, a frame holding one string is checked by
#: L{plainStringFrame} first (below, orjson's decoder is quicker).
PLAIN_STRING_FROM = 2048


def plainStringFrame(data: bytes) -> bool:
    """
    Tell, more quickly than decoding it, whether C{data} is one JSON
    string of printable ASCII with nothing escaped: whether it is exactly
    what orjson encodes its text as.  (orjson writes every string as valid
    JSON, escaping quotes, backslashes and control characters; so bytes
    equal to its output are valid JSON, and anything else is not a string
    without escapes, and goes to the full check.)  For 64 KiB: an ASCII
    decode, an encode and a comparison, 12 us, against 25 us for
    C{orjson.loads}, which also builds the string in C{str} form.

    @return: C{True} if it is; C{False} if it is not, or cannot tell.
    """
    if data[:1] != b'"' or data[-1:] != b'"' or len(data) < 2:
        return False
    try:
        text = str(memoryview(data)[1:-1], "ascii")
    except UnicodeDecodeError:
        return False
    return bool(orjson.dumps(text) == data)


def fastCheckFrame(data: bytes) -> None:
    """
    L{stdlibCheckFrame}, through orjson where that gives the same: what
    orjson decodes, the strict decoder takes too (it may decode a large
    integer as a float, which does not matter here).  A long frame that
    is one plain string (L{plainStringFrame}) is not decoded at all.
    """
    if len(data) >= PLAIN_STRING_FROM and plainStringFrame(data):
        return
    if b"\n" not in data:
        try:
            orjson.loads(data)
            return
        except ValueError:
            pass
    stdlibLoadsFrame(data)


def fastEncode(value: Any) -> bytes:
    """
    L{stdlibEncode}, through orjson where that gives the same.
    """
    out = _fastBytes(value)
    return stdlibEncode(value) if out is None else out


def fastEncodeASCII(value: Any) -> bytes:
    """
    L{stdlibEncodeASCII}, through orjson where that gives the same.
    """
    out = _fastBytes(value)
    if out is None or not out.isascii() or _NEEDS_ESCAPE_IN_ASCII in out:
        return stdlibEncodeASCII(value)
    return out


#: Whether orjson is installed, and the functions below use it.
FAST = orjson is not None

# loads(data): decode JSON text, or UTF-8 bytes, as json.loads does;
# loadsUTF8(data): decode strict UTF-8 bytes (a request line, a reply line);
# loadsFrame(data): decode a worker's frame strictly; checkFrame(data): only
# check it; encode(value): compact UTF-8 JSON; encodeASCII(value): compact
# ASCII JSON.  (See the stdlib* functions for each one's errors.)
if FAST:
    loads = fastLoads
    loadsUTF8 = fastLoadsUTF8
    loadsFrame = fastLoadsFrame
    checkFrame = fastCheckFrame
    encode = fastEncode
    encodeASCII = fastEncodeASCII
else:  # pragma: no cover - the fast extra is not installed
    loads = stdlibLoads
    loadsUTF8 = stdlibLoadsUTF8
    loadsFrame = stdlibLoadsFrame
    checkFrame = stdlibCheckFrame
    encode = stdlibEncode
    encodeASCII = stdlibEncodeASCII
