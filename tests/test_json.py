"""
Tests for L{taskd._json}: the one codec, which decodes as C{json.loads}
does, and checks worker frames strictly; and its two implementations (the
standard library's, orjson's) which give the same values, bytes and errors.
"""

from __future__ import annotations

import enum
import json
import uuid
from typing import Any, Callable

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from taskd import _json

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)

# Any text at all: lone surrogates, control characters, DEL included.
anyText = st.text(st.characters(blacklist_categories=()), max_size=8)
# Values that orjson and the standard library might treat apart: integers
# beyond 64 bits, NaN and the infinities, floats of every exponent, lone
# surrogates, tuples, keys that are not strings, subclasses of the built-in
# types, and values the standard library refuses.


class Colour(enum.Enum):
    RED = 1


class Size(enum.IntEnum):
    BIG = 2


class Text(str):
    pass


class Number(float):
    pass


edgeScalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**66), max_value=2**66)
    | st.floats()
    | st.floats(min_value=-1e-3, max_value=1e-3)
    | anyText
    | st.sampled_from([Colour.RED, Size.BIG, Text("t"), Number(1.5), uuid.UUID(int=7), b"x", {1, 2}])
)
edgeValues = st.recursive(
    edgeScalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.tuples(inner, inner)
    | st.dictionaries(anyText, inner, max_size=4)
    | st.dictionaries(st.integers(-3, 3) | st.none() | st.booleans() | st.floats(), inner, max_size=3),
    max_leaves=12,
)


def outcome(decode: Callable[[Any], Any], data: Any) -> tuple[str, Any]:
    try:
        return ("value", decode(data))
    except (ValueError, TypeError, RecursionError) as e:
        return (type(e).__name__, str(e))


# The implementations of each function: the standard library's always, and
# orjson's when it is installed (as it is where the test extra is).
LOADS = [_json.stdlibLoads] + ([_json.fastLoads] if _json.FAST else [])


def needsOrjson() -> None:
    if not _json.FAST:
        raise SkipTest("orjson is not installed (pip install '.[fast]')")


class LoadsTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(values, st.sampled_from(["", " ", "\n", " \t\r\n"]))
    def test_sameValues(self, value: Any, blank: str) -> None:
        """
        Any JSON text, surrounded by any JSON whitespace, as text or UTF-8
        bytes, decodes to what C{json.loads} gives, through either
        implementation.
        """
        text = blank + json.dumps(value, ensure_ascii=False) + blank
        for data in (text, text.encode("utf-8", "surrogatepass")):
            for loads in LOADS:
                self.assertEqual(repr(outcome(loads, data)), repr(outcome(json.loads, data)))

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet='{}[]",:0123456789.eE+-tfnulrsaNIy \n\\\ufeffx', max_size=30))
    def test_sameErrors(self, text: str) -> None:
        """
        Any text at all, valid JSON or not, gives the same value or the
        same error (type and message, position included) as C{json.loads}.
        """
        for data in (text, text.encode("utf-8", "surrogatepass")):
            for loads in LOADS:
                self.assertEqual(outcome(loads, data), outcome(json.loads, data))

    def test_byteOrderMarks(self) -> None:
        """
        A UTF-8 byte order mark is refused in text and skipped once in
        bytes, as C{json.loads} does: a second one is no JSON value.
        """
        for data in ["\ufeff1", b"\xef\xbb\xbf1", b"\xef\xbb\xbf\xef\xbb\xbf1", "\ufeff", b"\xef\xbb\xbf"]:
            for loads in LOADS:
                self.assertEqual(outcome(loads, data), outcome(json.loads, data), data)

    def test_strictUTF8(self) -> None:
        """
        L{_json.loadsUTF8} decodes strict UTF-8 (no encoded surrogates, no
        byte order mark skipped), as C{loads} of the decoded text.
        """
        for loadsUTF8 in [_json.stdlibLoadsUTF8] + ([_json.fastLoadsUTF8] if _json.FAST else []):
            self.assertEqual(loadsUTF8('["\u00e9",1]'.encode()), ["\u00e9", 1])
            self.assertRaises(UnicodeDecodeError, loadsUTF8, b'"\xed\xa0\x80"')
            self.assertRaises(UnicodeDecodeError, loadsUTF8, b'"\xff"')
            self.assertRaises(ValueError, loadsUTF8, b"\xef\xbb\xbf1")
            self.assertEqual(loadsUTF8(b'"\\ud800"'), "\ud800")

    def test_deepNesting(self) -> None:
        """
        Nesting too deep for the decoder raises C{RecursionError}, as
        C{json.loads} does; the wire decoder turns it into C{bad_request}.
        """
        for loads in LOADS:
            self.assertRaises(RecursionError, loads, "[" * 100000 + "]" * 100000)


class LoadsFrameTests(SynchronousTestCase):
    def test_oneValueOnOneLine(self) -> None:
        """
        A worker's frame holds one JSON value, in UTF-8, on one line, with
        no NaN or infinity: anything else is refused with C{ValueError}.
        """
        checks = [_json.stdlibCheckFrame] + ([_json.fastCheckFrame] if _json.FAST else [])
        frames = [_json.stdlibLoadsFrame] + ([_json.fastLoadsFrame] if _json.FAST else [])
        for loadsFrame in frames:
            self.assertEqual(loadsFrame(b'{"a":[1,"\\u00e9"]}'), {"a": [1, "\u00e9"]})
        for bad in [b"NaN", b"[Infinity]", b"-Infinity", b"[1,\n2]", b"1 2", b"", b"\xff", b"{", b'"\xed\xa0\x80"', b"1\n"]:
            for check in frames + checks:
                self.assertRaises(ValueError, check, bad)

    @settings(max_examples=200, deadline=None)
    @given(values)
    def test_whatWorkersSend(self, value: Any) -> None:
        """
        Whatever the worker's encoder makes of a JSON value is accepted,
        and decodes to that value.
        """
        self.assertEqual(_json.loadsFrame(_json.encode(value)), json.loads(_json.encode(value)))


class FastPathTests(SynchronousTestCase):
    """
    orjson's functions give what the standard library's give: the same
    values, bytes and errors, for anything at all.
    """

    def setUp(self) -> None:
        needsOrjson()

    def assertSameEncoding(self, value: Any) -> None:
        for fast, stdlib in [
            (_json.fastEncode, _json.stdlibEncode),
            (_json.fastEncodeASCII, _json.stdlibEncodeASCII),
        ]:
            self.assertEqual(outcome(fast, value), outcome(stdlib, value), repr(value))

    @settings(max_examples=1000, deadline=None)
    @given(edgeValues)
    def test_sameBytes(self, value: Any) -> None:
        """
        Any value encodes to the same bytes, or fails with the same error,
        through orjson's encoders as through the standard library's, UTF-8
        and ASCII: integers beyond 64 bits, NaN, floats of any exponent,
        lone surrogates, control characters and DEL, tuples, keys that are
        not strings, subclasses, C{Enum} members and C{UUID}s included.
        """
        self.assertSameEncoding(value)

    def test_edges(self) -> None:
        """
        The values where orjson alone would give something else are
        encoded as the standard library encodes them, or refused as it
        refuses them.
        """
        loop: list[Any] = []
        loop.append(loop)
        deep: Any = 1
        for _ in range(300):
            deep = [deep]
        for value in [
            2**64, -(2**63) - 1, 2**64 - 1, float("nan"), [float("inf")], {"a": -float("inf")},
            1e-5, 1e-7, 9.5e-5, 1e16, [None, 0.5], "\ud800", {"\udc00": 1}, (1, "a"), {1: 2},
            {None: 1, True: 2, 1.5: 3}, Colour.RED, [Size.BIG], uuid.UUID(int=1), Text("x"),
            Number(0.25), "\x7f\x00\x1f\u2028\u00e9", loop, deep, {"a": {"a": set()}},
        ]:
            self.assertSameEncoding(value)
        self.assertRaises(ValueError, _json.fastEncode, float("nan"))
        self.assertRaises(TypeError, _json.fastEncode, [uuid.UUID(int=1)])
        self.assertRaises(TypeError, _json.fastEncode, Colour.RED)

    @settings(max_examples=1000, deadline=None)
    @given(edgeValues.filter(lambda v: outcome(_json.stdlibEncode, v)[0] == "value"))
    def test_sameValuesDecoded(self, value: Any) -> None:
        """
        Whatever the standard library encodes decodes to the same value
        (by C{repr}: -0.0, NaN and big integers told apart) through orjson's
        decoders as through the standard library's, as text and as bytes.
        """
        for data in (_json.stdlibEncode(value), _json.stdlibEncodeASCII(value)):
            for text in (data, data.decode("ascii", "ignore") if data.isascii() else data.decode("utf-8")):
                self.assertEqual(
                    repr(outcome(_json.fastLoads, text)), repr(outcome(_json.stdlibLoads, text))
                )
            self.assertEqual(
                repr(outcome(_json.fastLoadsFrame, data)), repr(outcome(_json.stdlibLoadsFrame, data))
            )

    @settings(max_examples=1000, deadline=None)
    @given(
        st.binary(max_size=40)
        | st.text(alphabet='{}[]",:0123456789.eE+-tfnulrsaNIy \t\r\n\\\ufeff\x00\x7f\u00e9\ud800x', max_size=40).map(
            lambda t: t.encode("utf-8", "surrogatepass")
        )
        | st.sampled_from([b"9" * 19, b"-9223372036854775809", b"18446744073709551616", b"[1e400]", b"0.1e-400"])
    )
    def test_anyLine(self, line: bytes) -> None:
        """
        Any line, a request or not, valid JSON or not, gives the same value,
        or the same error (type and message), through orjson's decoders as
        through the standard library's: the daemon's and the worker's
        answer to a line does not depend on which is installed.
        """
        self.assertEqual(repr(outcome(_json.fastLoads, line)), repr(outcome(_json.stdlibLoads, line)))
        self.assertEqual(repr(outcome(_json.fastLoadsUTF8, line)), repr(outcome(_json.stdlibLoadsUTF8, line)))
        self.assertEqual(
            repr(outcome(_json.fastLoadsFrame, line)), repr(outcome(_json.stdlibLoadsFrame, line))
        )
        self.assertEqual(
            outcome(_json.fastCheckFrame, line)[0], outcome(_json.stdlibCheckFrame, line)[0]
        )
        try:
            text = line.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return
        self.assertEqual(repr(outcome(_json.fastLoads, text)), repr(outcome(_json.stdlibLoads, text)))

    @settings(max_examples=300, deadline=None)
    @given(
        st.fixed_dictionaries(
            {"function": anyText, "args": st.lists(edgeValues, max_size=3)},
            optional={"id": st.integers() | anyText | st.floats(), "kwargs": st.dictionaries(anyText, edgeValues, max_size=2), "type": st.sampled_from(["call", "hello", "x"])},
        ).filter(lambda v: outcome(_json.stdlibEncode, v)[0] == "value"),
        st.integers(0, 3),
    )
    def test_anyRequest(self, request: dict[str, Any], cut: int) -> None:
        """
        Request lines, whole or cut short, decode the same through both.
        """
        line = _json.stdlibEncode(request)
        line = line[: len(line) - cut]
        self.assertEqual(repr(outcome(_json.fastLoads, line)), repr(outcome(_json.stdlibLoads, line)))
        self.assertEqual(repr(outcome(_json.fastLoadsUTF8, line)), repr(outcome(_json.stdlibLoadsUTF8, line)))

    def test_longLines(self) -> None:
        """
        Lines over 512 bytes are checked for integers beyond 64 bits too:
        as text of digits, when orjson decoded a float from them.
        """
        pad = '"' + "x" * 600 + '"'
        for text in [
            f"[{pad},18446744073709551616]",
            f"[{pad},-9223372036854775809,1.5]",
            f"[{pad},1.5,2]",
            f"[{pad},1e400]",
            f"[{pad},12345678901234567890123]",
            f"[{pad},{'9' * 30}.5]",
        ]:
            for data in (text, text.encode("ascii")):
                self.assertEqual(repr(outcome(_json.fastLoads, data)), repr(outcome(_json.stdlibLoads, data)))
            self.assertEqual(
                repr(outcome(_json.fastLoadsUTF8, text.encode())),
                repr(outcome(_json.stdlibLoadsUTF8, text.encode())),
            )
            self.assertEqual(
                repr(outcome(_json.fastLoadsFrame, text.encode())),
                repr(outcome(_json.stdlibLoadsFrame, text.encode())),
            )
        self.assertEqual(_json.fastLoads(f"[{pad},18446744073709551616]")[1], 2**64)

    def test_installedIsFast(self) -> None:
        """
        With orjson installed, the codec's functions are orjson's.
        """
        self.assertIs(_json.loads, _json.fastLoads)
        self.assertIs(_json.loadsUTF8, _json.fastLoadsUTF8)
        self.assertIs(_json.encode, _json.fastEncode)
        self.assertIs(_json.encodeASCII, _json.fastEncodeASCII)
        self.assertIs(_json.loadsFrame, _json.fastLoadsFrame)
        self.assertIs(_json.checkFrame, _json.fastCheckFrame)


# Pieces of a string frame's inside: plain ASCII, and everything that makes
# a frame something else: quotes, backslashes and escapes (good and bad),
# control characters, DEL, non-ASCII UTF-8, bytes that are not UTF-8, an
# encoded surrogate.
_framePieces = st.sampled_from(
    [b"x", b"ab c", b"~", b'"', b"\\", b'\\"', b"\\n", b"\\u00e9", b"\\ud800", b"\\x", b"\\u12", b"\x00", b"\x1f",
     b"\n", b"\t", b"\x7f", "\u00e9".encode(), "\u2028".encode(), b"\xff", b"\xed\xa0\x80", b"\xc3"]
)


def _stringFrame(pieces: list[bytes], pad: int, at: int, quotes: tuple[bytes, bytes]) -> bytes:
    inside = b"".join(pieces)
    at %= len(inside) + 1
    return quotes[0] + inside[:at] + b"x" * pad + inside[at:] + quotes[1]


class PlainStringFrameTests(SynchronousTestCase):
    """
    L{_json.plainStringFrame}, the quick check of a long result frame that
    is one string: it takes only what the full check takes, and the full
    check decides everything else, so L{_json.fastCheckFrame} accepts and
    refuses exactly what L{_json.stdlibCheckFrame} does.
    """

    def setUp(self) -> None:
        needsOrjson()

    @settings(max_examples=1500, deadline=None)
    @given(
        st.lists(_framePieces, max_size=6),
        st.sampled_from([0, 10, _json.PLAIN_STRING_FROM, 70000]),
        st.integers(0, 100),
        st.sampled_from([(b'"', b'"'), (b'"', b""), (b"", b'"'), (b'"', b'" '), (b' "', b'"'), (b'"', b'"\n'), (b"[", b"]")]),
    )
    def test_sameAsTheFullCheck(self, pieces: list[bytes], pad: int, at: int, quotes: tuple[bytes, bytes]) -> None:
        """
        Any frame that looks like a string, short or long, with anything
        inside: what the quick check takes, the full check takes, and the
        fast frame check accepts and refuses exactly what the standard
        library's does.
        """
        data = _stringFrame(pieces, pad, at, quotes)
        if _json.plainStringFrame(data):
            self.assertEqual(outcome(_json.stdlibCheckFrame, data)[0], "value")
        self.assertEqual(outcome(_json.fastCheckFrame, data)[0], outcome(_json.stdlibCheckFrame, data)[0])

    @settings(max_examples=300, deadline=None)
    @given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7F, blacklist_characters='"\\'), max_size=300), st.integers(0, 5000))
    def test_takesPlainASCII(self, text: str, pad: int) -> None:
        """
        A string of printable ASCII (DEL included) without quotes or
        backslashes, as the worker encodes it, is taken by the quick check:
        the full decode is skipped.
        """
        data = _json.encode(text + "y" * pad)
        self.assertTrue(_json.plainStringFrame(data))
        self.assertIsNone(_json.fastCheckFrame(data))

    def test_examples(self) -> None:
        """
        64 KiB of ASCII is taken; a control character, a stray quote, a
        missing quote, a byte that is not UTF-8 are refused (by the full
        check); escapes and non-ASCII text are not taken by the quick check
        but accepted by the full one.
        """
        body = b"x" * 65536
        self.assertTrue(_json.plainStringFrame(b'"' + body + b'"'))
        for bad in [b'"' + body + b'\x1f"', b'"' + body + b'"x"', b'"' + body, b'"' + body + b'\xff"', b'"', b'"' + body + b'\n"']:
            self.assertFalse(_json.plainStringFrame(bad))
            self.assertRaises(ValueError, _json.fastCheckFrame, bad)
            self.assertRaises(ValueError, _json.stdlibCheckFrame, bad)
        for good in [b'"' + body + b'\\n"', b'"' + body + "\u00e9".encode() + b'"', b'"' + body + b'\\ud800"']:
            self.assertFalse(_json.plainStringFrame(good))
            self.assertIsNone(_json.fastCheckFrame(good))
            self.assertIsNone(_json.stdlibCheckFrame(good))
