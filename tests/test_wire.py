"""
Tests for the wire codec, L{taskd.wire}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from taskd import errors
from taskd.wire import (
    Call,
    Cancel,
    ErrorReply,
    Hello,
    HelloReply,
    Progress,
    ProtocolError,
    Result,
    Stats,
    StatsReply,
    decodeReply,
    decodeRequest,
    encodeError,
    encodeHelloReply,
    encodeProgress,
    encodeRequest,
    encodeResult,
)


class DecodeRequestTests(SynchronousTestCase):
    def test_seedShape(self) -> None:
        """
        The seed's shape decodes as is: C{args} an array (positional) or
        an object (keyword arguments), no id.
        """
        line = b'{"function": "add", "args": [1, 2]}'
        self.assertEqual(decodeRequest(line), Call("add", [1, 2], {}, None, None, line))
        line = b'{"function": "send_mail", "args": {"to": "a@b"}}'
        self.assertEqual(decodeRequest(line), Call("send_mail", [], {"to": "a@b"}, None, None, line))

    def test_fullCall(self) -> None:
        """
        A call may carry an id (string or integer), C{kwargs} and a
        timeout; unknown keys are ignored.
        """
        line = b'{"function":"f","args":[1],"kwargs":{"x":2},"id":"a7","timeout":2,"future":true}'
        self.assertEqual(decodeRequest(line), Call("f", [1], {"x": 2}, "a7", 2.0, line))
        self.assertEqual(decodeRequest(b'{"function":"f","id":0}').id, 0)
        self.assertEqual(decodeRequest(b'{"type":"call","function":"f"}').function, "f")
        line = b'{"function":"f","id":1,"progress":true}'
        self.assertEqual(decodeRequest(line), Call("f", [], {}, 1, None, line, progress=True))

    def test_cancelAndHello(self) -> None:
        """
        Cancel names an id; hello gives a version and keeps other fields.
        """
        self.assertEqual(decodeRequest(b'{"type":"cancel","id":7}'), Cancel(7))
        self.assertEqual(decodeRequest(b'{"type":"hello","version":1,"token":"t"}'), Hello(1, {"token": "t"}))
        self.assertEqual(decodeRequest(b'{"type":"hello"}'), Hello(1, {}))
        self.assertEqual(decodeRequest(b'{"type":"stats"}'), Stats())

    def assertBad(self, line: bytes, message: str, id: object = None) -> None:
        e = self.assertRaises(ProtocolError, decodeRequest, line)
        self.assertIsInstance(e.error, errors.BadRequest)
        self.assertEqual((e.error.message, e.id), (message, id))

    def test_badLines(self) -> None:
        """
        Every malformed line gets a precise message, and the id where it
        could be read.
        """
        self.assertBad(b'{"function":"\xff"}', "the line is not valid UTF-8 (byte 13)")
        self.assertBad(b"{nope", "the line is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")
        self.assertBad(b"[1, 2]", "a request must be a JSON object, not an array")
        self.assertBad(b'"add"', "a request must be a JSON object, not a string")
        self.assertBad(b'{"args":[1],"id":3}', "missing 'function': the name of the task to run", 3)
        self.assertBad(b'{"function":5,"id":"x"}', "'function' must be a non-empty string", "x")
        self.assertBad(b'{"function":""}', "'function' must be a non-empty string")
        self.assertBad(
            b'{"function":"f","args":"1,2","id":1}',
            "'args' must be an array (positional arguments) or an object (keyword arguments), not a string",
            1,
        )
        self.assertBad(b'{"function":"f","kwargs":[1]}', "'kwargs' must be an object, not an array")
        self.assertBad(b'{"function":"f","id":1.5}', "'id' must be a string or an integer")
        self.assertBad(b'{"function":"f","id":true}', "'id' must be a string or an integer")
        self.assertBad(b'{"function":"f","id":[1]}', "'id' must be a string or an integer")
        for timeout in (b"0", b"-1", b'"5"', b"true", b"NaN"):
            self.assertBad(b'{"function":"f","timeout":' + timeout + b"}", "'timeout' must be a positive number of seconds")
        self.assertBad(b'{"function":"f","id":1,"progress":1}', "'progress' must be true or false", 1)
        self.assertBad(b'{"function":"f","progress":true}', "'progress' needs an 'id' to tell whose progress it is")
        for priority in (b"101", b"-101", b"1.5", b"true", b'"5"'):
            self.assertBad(
                b'{"function":"f","id":4,"priority":' + priority + b"}",
                "'priority' must be a whole number from -100 to 100",
                4,
            )
        for deadline in (b"0", b"-1", b'"5"', b"true", b"NaN", b"Infinity"):
            self.assertBad(b'{"function":"f","deadline":' + deadline + b"}", "'deadline' must be a positive number of seconds")
        self.assertBad(b'{"type":"cancel"}', "a cancel needs the 'id' of the call to cancel")
        self.assertBad(b'{"type":"hello","version":"1"}', "'version' must be a positive integer")
        self.assertBad(b'{"type":"dance","id":2}', "unknown request type 'dance'", 2)


    def test_priorityAndDeadline(self) -> None:
        """
        A call's C{priority} (a whole number, -100 to 100) and C{deadline}
        (positive seconds) are decoded, and encoded back.
        """
        line = b'{"function":"add","args":[1,2],"priority":-100,"deadline":2}'
        call = decodeRequest(line)
        self.assertEqual(call, Call("add", [1, 2], {}, None, None, line, False, -100, 2.0))
        assert isinstance(call, Call)
        self.assertEqual(
            json.loads(encodeRequest(call)),
            {"function": "add", "args": [1, 2], "priority": -100, "deadline": 2.0},
        )
        self.assertEqual(decodeRequest(b'{"function":"f","priority":100}'), Call("f", [], {}, raw=b'{"function":"f","priority":100}', priority=100))


class EncodeTests(SynchronousTestCase):
    def test_replies(self) -> None:
        """
        Replies are single JSON lines; the id appears only when the call
        had one; results already encoded are embedded unchanged.
        """
        self.assertEqual(encodeResult(None, b"3"), b'{"type":"result","result":3}\n')
        self.assertEqual(encodeResult("k", b'{"a":[1]}'), b'{"type":"result","id":"k","result":{"a":[1]}}\n')
        line = encodeError(4, errors.TaskFailed("boom", "ValueError", "TB"))
        self.assertEqual(
            json.loads(line),
            {"type": "error", "id": 4, "error": {"type": "task_failed", "message": "boom", "started": True, "exception": "ValueError", "traceback": "TB"}},
        )
        self.assertTrue(line.endswith(b"}\n") and line.count(b"\n") == 1)

    def test_roundTrips(self) -> None:
        """
        What the encoders write, L{decodeRequest} and L{decodeReply} read.
        """
        for request in [Call("f", [1], {"x": 1}, 5, 1.5), Call("f", [], {}), Call("f", [], {}, 2, progress=True), Cancel("a")]:
            line = encodeRequest(request)
            decoded = decodeRequest(line.rstrip(b"\n"))
            if isinstance(request, Call):
                assert isinstance(decoded, Call)
                self.assertEqual(
                    (decoded.function, decoded.args, decoded.kwargs, decoded.id, decoded.timeout, decoded.progress),
                    (request.function, request.args, request.kwargs, request.id, request.timeout, request.progress),
                )
            else:
                self.assertEqual(decoded, request)
        self.assertEqual(decodeRequest(encodeRequest(Hello(1, {"a": 1}))), Hello(1, {"a": 1}))
        self.assertEqual(decodeReply(encodeResult(1, b"[1]")), Result(1, [1]))
        self.assertEqual(encodeProgress(7, b'{"done":1}'), b'{"type":"progress","id":7,"progress":{"done":1}}\n')
        self.assertEqual(decodeReply(encodeProgress("a", b"0.5")), Progress("a", 0.5))
        reply = decodeReply(encodeError(None, errors.TaskTimeout("slow")))
        assert isinstance(reply, ErrorReply)
        self.assertIsInstance(reply.error, errors.TaskTimeout)
        self.assertEqual(decodeReply(encodeHelloReply(HelloReply(1, {"server": "taskd"}))), HelloReply(1, {"server": "taskd"}))
        self.assertEqual(decodeReply(b'{"type":"stats","busy":1}'), StatsReply({"busy": 1}))
        self.assertRaises(ValueError, decodeReply, b'{"type":"nope"}')


class ReviewEdgeTests(SynchronousTestCase):
    def test_infiniteTimeout(self) -> None:
        """
        A call's C{timeout} must be finite, as its C{deadline} must.
        """
        with self.assertRaises(ProtocolError) as e:
            decodeRequest(b'{"function":"f","timeout":1e999,"id":1}')
        self.assertEqual(e.exception.error.message, "'timeout' must be a positive number of seconds")

    def test_oddRepliesAreValueErrors(self) -> None:
        """
        Whatever a reply line holds, a client decoding it gets a
        C{ValueError} it can log, never another exception that would end
        its connection.
        """
        for line in [b'{"type":"hello","version":null}', b"[" * 100000 + b"]" * 100000]:
            self.assertRaises(ValueError, decodeReply, line)
