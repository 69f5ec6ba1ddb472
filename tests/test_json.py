"""
Tests for L{taskd._json}: the one codec, which decodes as C{json.loads}
does, and checks worker frames strictly.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from taskd import _json

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


def outcome(decode: Any, data: Any) -> tuple[str, Any]:
    try:
        return ("value", decode(data))
    except (ValueError, RecursionError) as e:
        return (type(e).__name__, str(e))


class LoadsTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(values, st.sampled_from(["", " ", "\n", " \t\r\n"]))
    def test_sameValues(self, value: Any, blank: str) -> None:
        """
        Any JSON text, surrounded by any JSON whitespace, as text or UTF-8
        bytes, decodes to what C{json.loads} gives.
        """
        text = blank + json.dumps(value, ensure_ascii=False) + blank
        for data in (text, text.encode("utf-8", "surrogatepass")):
            self.assertEqual(repr(outcome(_json.loads, data)), repr(outcome(json.loads, data)))

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet='{}[]",:0123456789.eE+-tfnulrsaNIy \n\\\ufeffx', max_size=30))
    def test_sameErrors(self, text: str) -> None:
        """
        Any text at all, valid JSON or not, gives the same value or the
        same error (type and message, position included) as C{json.loads}.
        """
        for data in (text, text.encode("utf-8", "surrogatepass")):
            self.assertEqual(outcome(_json.loads, data), outcome(json.loads, data))

    def test_byteOrderMarks(self) -> None:
        """
        A UTF-8 byte order mark is refused in text and skipped once in
        bytes, as C{json.loads} does: a second one is no JSON value.
        """
        for data in ["\ufeff1", b"\xef\xbb\xbf1", b"\xef\xbb\xbf\xef\xbb\xbf1", "\ufeff", b"\xef\xbb\xbf"]:
            self.assertEqual(outcome(_json.loads, data), outcome(json.loads, data), data)

    def test_deepNesting(self) -> None:
        """
        Nesting too deep for the decoder raises C{RecursionError}, as
        C{json.loads} does; the wire decoder turns it into C{bad_request}.
        """
        self.assertRaises(RecursionError, _json.loads, "[" * 100000 + "]" * 100000)


class LoadsFrameTests(SynchronousTestCase):
    def test_oneValueOnOneLine(self) -> None:
        """
        A worker's frame holds one JSON value, in UTF-8, on one line, with
        no NaN or infinity: anything else is refused with C{ValueError}.
        """
        self.assertEqual(_json.loadsFrame(b'{"a":[1,"\\u00e9"]}'), {"a": [1, "\u00e9"]})
        for bad in [b"NaN", b"[Infinity]", b"-Infinity", b"[1,\n2]", b"1 2", b"", b"\xff", b"{", b'"\xed\xa0\x80"']:
            self.assertRaises(ValueError, _json.loadsFrame, bad)

    @settings(max_examples=200, deadline=None)
    @given(values)
    def test_whatWorkersSend(self, value: Any) -> None:
        """
        Whatever the worker's encoder makes of a JSON value is accepted,
        and decodes to that value.
        """
        self.assertEqual(_json.loadsFrame(_json.encode(value)), json.loads(_json.encode(value)))
