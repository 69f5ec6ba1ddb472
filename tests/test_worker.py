"""
Unit tests for the worker loop, L{taskd.worker}, run in this process.
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from taskd.registry import Registry
from taskd._frames import HEADER, MAX_PROGRESS
from taskd.worker import progress, runCall, serve


def makeRegistry() -> Registry:
    reg = Registry()
    reg.register(lambda a, b=0: a + b, "add")
    reg.register(lambda: {1, 2}, "aset")

    def fail() -> None:
        raise KeyError("k")

    reg.register(fail, "fail")
    return reg


def decode(reply: bytes) -> tuple[str, Any]:
    return reply[:1].decode(), json.loads(reply[1:])


class RunCallTests(SynchronousTestCase):
    def run_(self, body: bytes, maxResult: int = 1000) -> tuple[str, Any]:
        return decode(runCall(makeRegistry(), body, maxResult))

    def test_argumentShapes(self) -> None:
        """
        C{args} as an array is positional, as an object is keyword
        arguments; C{kwargs} adds keyword arguments; other keys of the
        object (a whole request line) are ignored.
        """
        self.assertEqual(self.run_(b'add\n{"args":[1,2]}'), ("R", 3))
        self.assertEqual(self.run_(b'add\n{"args":{"a":1,"b":5}}'), ("R", 6))
        self.assertEqual(self.run_(b'add\n{"args":[1],"kwargs":{"b":9}}'), ("R", 10))
        self.assertEqual(self.run_(b'add\n{"function":"add","id":3,"args":[2,2]}'), ("R", 4))

    def test_badRequests(self) -> None:
        """
        Payloads of the wrong shape give C{bad_request} errors, worded as
        the daemon's decoder words them (one rule, L{splitArguments}).
        """
        for body, message in [
            (b"add\n[1]", "the request is not a JSON object"),
            (
                b'add\n{"args":5}',
                "'args' must be an array (positional arguments) or an object "
                "(keyword arguments), not a number",
            ),
            (b'add\n{"args":[1],"kwargs":[]}', "'kwargs' must be an object, not an array"),
        ]:
            kind, error = self.run_(body)
            self.assertEqual((kind, error["type"], error["message"]), ("E", "bad_request", message))
        kind, error = self.run_(b"add\n{nope")
        self.assertEqual(error["type"], "bad_request")

    def test_unknownTask(self) -> None:
        """
        The worker checks the name too.
        """
        self.assertEqual(
            self.run_(b"os.system\n{}"),
            ("E", {"type": "unknown_task", "message": "no task named 'os.system'", "started": False}),
        )

    def test_exceptions(self) -> None:
        """
        A raised exception gives a C{task_failed} error with type, message
        and traceback.
        """
        kind, error = self.run_(b"fail\n{}")
        self.assertEqual((error["type"], error["exception"], error["message"]), ("task_failed", "KeyError", "'k'"))
        self.assertIn("raise KeyError", error["traceback"])

    def test_badResults(self) -> None:
        """
        Results JSON cannot hold, or over the size limit, give precise
        errors.
        """
        kind, error = self.run_(b"aset\n{}")
        self.assertEqual(error["type"], "bad_result")
        self.assertIn("Object of type set is not JSON serializable", error["message"])
        kind, error = self.run_(b'add\n{"args":["aaaa","bbbb"]}', maxResult=9)
        self.assertEqual(error, {"type": "result_too_large", "message": "task 'add' returned 10 bytes of JSON; the limit is 9", "started": True})
        self.assertEqual(self.run_(b'add\n{"args":["aaa","bbbb"]}', maxResult=9), ("R", "aaabbbb"))

    def test_textResults(self) -> None:
        """
        Results are UTF-8 JSON, not escaped to ASCII; a string holding a
        lone surrogate, which UTF-8 cannot carry, is escaped instead.
        """
        reply = runCall(makeRegistry(), 'add\n{"args":["caf\u00e9 ","\u2603"]}'.encode(), 1000)
        self.assertEqual(reply, 'R"café ☃"'.encode("utf-8"))
        reply = runCall(makeRegistry(), b'add\n{"args":["a","\\ud800"]}', 1000)
        self.assertEqual(reply, b'R"a\\ud800"')
        self.assertEqual(json.loads(reply[1:]), "a\ud800")


def frames(data: bytes) -> list[bytes]:
    out = []
    while data:
        (n,) = HEADER.unpack(data[:4])
        out.append(data[4 : 4 + n])
        data = data[4 + n :]
    return out


class ProgressTests(SynchronousTestCase):
    def run_(self, task: Any, body: bytes = b"t\n{}") -> tuple[bytes, list[bytes]]:
        reg = Registry()
        reg.register(task, "t")
        out = io.BytesIO()
        reply = runCall(reg, body, 1000, out)
        return reply, frames(out.getvalue())

    def test_reportsWhileRunning(self) -> None:
        """
        Reports made while the call runs go out at once as C{P} frames,
        UTF-8 JSON like results.
        """

        def task() -> int:
            progress({"done": 1})
            progress("caf\u00e9")
            return 2

        self.assertEqual(self.run_(task), (b"R2", [b'P{"done":1}', 'P"café"'.encode()]))

    def test_nothingOutsideACall(self) -> None:
        """
        Outside a call (a unit test of a task, or a thread still running
        after its call returned) a report goes nowhere.
        """
        progress({"done": 1})  # no worker here: nothing happens
        reg = Registry()
        reg.register(lambda: None, "t")
        out = io.BytesIO()
        self.assertEqual(runCall(reg, b"t\n{}", 1000, out), b"Rnull")
        thread = threading.Thread(target=progress, args=(5,))
        thread.start()
        thread.join()
        self.assertEqual(out.getvalue(), b"")

    def test_badReports(self) -> None:
        """
        A report that is not JSON, or too large, raises in the task.
        """
        for value, exception, text in [
            ({1, 2}, "TypeError", "Object of type set is not JSON serializable"),
            ("x" * MAX_PROGRESS, "ValueError", f"a progress report holds at most {MAX_PROGRESS} bytes of JSON, not {MAX_PROGRESS + 2}"),
        ]:
            reply, sent = self.run_(lambda: progress(value))
            kind, error = decode(reply)
            self.assertEqual((kind, error["exception"], error["message"], sent), ("E", exception, text, []))


class ServeTests(SynchronousTestCase):
    def test_framesInAndOut(self) -> None:
        """
        L{serve} answers each request frame with one reply frame, in order,
        and returns at end of file (also in the middle of a frame).
        """
        requests = [b'add\n{"args":[1,2]}', b"fail\n{}"]
        stream = b"".join(HEADER.pack(len(r)) + r for r in requests) + HEADER.pack(50) + b"add"
        out = io.BytesIO()
        serve(makeRegistry(), io.BytesIO(stream), out, 1000)
        data = out.getvalue()
        replies = []
        while data:
            (n,) = HEADER.unpack(data[:4])
            replies.append(data[4 : 4 + n])
            data = data[4 + n :]
        self.assertEqual(replies[0], b"R3")
        self.assertEqual(decode(replies[1])[1]["type"], "task_failed")
        self.assertEqual(len(replies), 2)
