"""
Tests for the worker's own loop (L{taskd.worker.serve}): it reads frames
itself and runs the usual call (a known task, positional arguments only)
without L{taskd.worker.runCall}; these show it answers every request
exactly as L{runCall} does, however the frames arrive.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import termios
import threading
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from taskd import _json
from taskd.registry import Registry
from taskd._frames import HEADER
from taskd.worker import StopSignal, progress, runCall, serve

from tests.test_json import edgeValues, values
from tests.test_worker import frames


def _boom(*args: Any) -> None:
    raise ValueError(f"boom {args!r}")


def _report(*args: Any) -> int:
    for a in args:
        progress(a)
    return len(args)


def makeRegistry() -> Registry:
    reg = Registry()
    reg.register(lambda a, b=0: a + b, "add")
    reg.register(lambda *args: list(args), "echo")
    reg.register(lambda *args: args[0] if args else None, "first")
    reg.register(lambda n=1: 7 ** (n % 80) if type(n) is int else n, "power")
    reg.register(lambda: float("nan"), "nan")
    reg.register(lambda: {1, 2}, "aset")
    # More digits than Python turns into a string (sys.get_int_max_str_digits).
    reg.register(lambda: 10**5000, "huge")
    reg.register(_boom, "boom")
    reg.register(_report, "report")
    return reg


REGISTRY = makeRegistry()
names = st.sampled_from(["add", "echo", "first", "power", "nan", "aset", "boom", "report", "nope", "ädd", ""])


# Longer than 512 bytes: the loop looks for integers orjson made floats of
# only where the decoded value holds a float (taskd._json.mayHoldBigInteger).
_PAD = b'"' + b"x" * 600 + b'"'
LONG_PAYLOADS = [
    b'{"args":[12345678901234567890123,' + _PAD + b"]}",
    b'{"args":[' + _PAD + b',[-12345678901234567890123,1.5]]}',
    b'{"args":[18446744073709551615,-9223372036854775808,' + _PAD + b"]}",
    b'{"args":[18446744073709551616,' + _PAD + b"]}",
    b'{"args":[1.25,' + _PAD + b',"12345678901234567890"]}',
    b'{"args":[' + _PAD + b"]," + b'"id":99999999999999999999999}',
    # Over 4 KiB: decoded where it lies in the read (a memoryview).
    b'{"args":[0.5,"' + b"y" * 5000 + b'",-12345678901234567890123]}',
    b'{"args":["' + b"y" * 5000 + b'",12345678901234567890123]}',
]


def _payload(draw: Any) -> bytes:
    return draw(
        st.one_of(
            # Requests as clients send them.
            st.builds(
                lambda args, id: _json.stdlibEncode({"function": "x", "args": args, "id": id}),
                st.lists(values, max_size=3), st.integers(0, 2**70),
            ),
            st.builds(lambda args: _json.stdlibEncode({"args": args}), st.lists(edgeValues.filter(_encodable), max_size=3)),
            st.builds(lambda a, k: _json.stdlibEncode({"args": a, "kwargs": k}), st.lists(values, max_size=2), st.dictionaries(st.sampled_from(["a", "b"]), values)),
            st.builds(lambda a: _json.stdlibEncode({"args": a}), st.dictionaries(st.sampled_from(["a", "b", "n"]), values)),
            st.sampled_from([
                b"", b"{}", b"[1]", b'{"args":5}', b'{"args":[1,2],"kwargs":null}', b'{"args":[NaN]}',
                b'{"args":[12345678901234567890123]}', b'{"args":[-12345678901234567890123, 1]}',
                b'{"args":[1e400]}', b'{"args":["\\ud800"]}', b'\xef\xbb\xbf{"args":[1]}', b'{"args":[1]} ',
                b'{"args":[1],"args":[2,3]}', b'{"args":[' + b"[" * 3000 + b"]" * 3000 + b"]}",
                b'{"args":["\xed\xa0\x80"]}', b'{"args":[1,', b'{"args":[30]}', b'{"args":[3000]}',
            ] + LONG_PAYLOADS),
            st.binary(max_size=30).map(lambda b: b"{" + b),
        )
    )


def _encodable(value: Any) -> bool:
    try:
        _json.stdlibEncode(value)
        return True
    except (TypeError, ValueError, RecursionError):
        return False


@st.composite
def bodies(draw: Any) -> bytes:
    name = draw(names).encode("utf-8")
    return name + b"\n" + _payload(draw) if draw(st.integers(0, 20)) else name


def comparable(frame: bytes) -> Any:
    """
    A frame, its traceback's frames in L{taskd.worker} (the loop's own
    functions, which differ between the two paths) left out: the others'
    C{File} lines, and the exception's line.
    """
    if frame[:1] != b"E":
        return frame
    error = json.loads(frame[1:])
    if "traceback" in error:
        lines = error["traceback"].splitlines()
        error["traceback"] = [
            line for line in lines if line.lstrip().startswith("File ") and "taskd/worker.py" not in line
        ] + lines[-1:]
    return error


class ChunkedReader(io.RawIOBase):
    """
    Gives its data in pieces of the given sizes (then the rest), as a pipe
    may.
    """

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = data
        self._sizes = list(sizes)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = self._sizes.pop(0) if self._sizes else len(buffer)
        piece = self._data[: min(size, len(buffer))]
        self._data = self._data[len(piece) :]
        buffer[: len(piece)] = piece
        return len(piece)


def expected(reg: Registry, bodies: list[bytes], maxResult: int) -> list[Any]:
    """
    What L{runCall} answers, with the progress frames it sends.
    """
    out = io.BytesIO()
    for body in bodies:
        reply = runCall(reg, body, maxResult, out)
        out.write(HEADER.pack(len(reply)) + reply)
    return [comparable(f) for f in frames(out.getvalue())]


class ServeLikeRunCallTests(SynchronousTestCase):
    """
    L{serve} gives, for any request frames, the frames L{runCall} gives.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.lists(bodies(), min_size=1, max_size=6), st.lists(st.integers(1, 64), max_size=20), st.sampled_from([10, 1000, 1 << 20]))
    def test_sameReplies(self, requests: list[bytes], sizes: list[int], maxResult: int) -> None:
        """
        Every request frame, whatever its task, arguments or shape, and
        however the frames are cut by the pipe's reads, is answered by
        L{serve} with what L{runCall} answers (progress frames included;
        tracebacks compared from the task's frame on).
        """
        stream = b"".join(HEADER.pack(len(b)) + b for b in requests)
        out = io.BytesIO()
        self.assertIsNone(serve(REGISTRY, io.BufferedReader(ChunkedReader(stream, sizes)), out, maxResult))
        self.assertEqual([comparable(f) for f in frames(out.getvalue())], expected(REGISTRY, requests, maxResult))

    def test_fastPathCases(self) -> None:
        """
        The cases the loop runs itself give runCall's replies: integers of
        any size (and one over C{maxResult}), NaN (C{bad_result}), a set
        (not JSON), an exception, progress reports.
        """
        requests = [
            b'add\n{"args":[1,2]}', b'power\n{"args":[79]}', b'power\n{"args":[3]}', b'nan\n{"args":[]}',
            b'aset\n{"args":[]}', b'boom\n{"args":[1]}', b'report\n{"args":[{"a":1},"b"]}', b'echo\n{"args":["\xc3\xa9",null]}',
        ]
        stream = b"".join(HEADER.pack(len(b)) + b for b in requests)
        out = io.BytesIO()
        serve(REGISTRY, io.BytesIO(stream), out, 50)
        got = [comparable(f) for f in frames(out.getvalue())]
        self.assertEqual(got, expected(REGISTRY, requests, 50))
        self.assertEqual(got[0], b"R3")
        self.assertEqual(got[1]["type"], "result_too_large")
        self.assertEqual(got[3]["type"], "bad_result")
        self.assertEqual(got[5]["exception"], "ValueError")
        self.assertEqual(got[6:9], [b'P{"a":1}', b'P"b"', b"R2"])

    def test_bigIntegersInLongRequests(self) -> None:
        """
        In a request longer than 512 bytes, integers beyond 64 bits (which
        orjson decodes as floats) reach the task exactly, as L{runCall}
        gives them, beside floats or not.
        """
        requests = [b"echo\n" + p for p in LONG_PAYLOADS]
        stream = b"".join(HEADER.pack(len(b)) + b for b in requests)
        out = io.BytesIO()
        serve(REGISTRY, io.BytesIO(stream), out, 1 << 20)
        got = [comparable(f) for f in frames(out.getvalue())]
        self.assertEqual(got, expected(REGISTRY, requests, 1 << 20))
        x = "x" * 600
        self.assertEqual(
            [json.loads(f[1:]) for f in got],
            [
                [12345678901234567890123, x],
                [x, [-12345678901234567890123, 1.5]],
                [18446744073709551615, -9223372036854775808, x],
                [18446744073709551616, x],
                [1.25, x, "12345678901234567890"],
                [x],
                [0.5, "y" * 5000, -12345678901234567890123],
                ["y" * 5000, 12345678901234567890123],
            ],
        )

    def test_integerTooLongForText(self) -> None:
        """
        An integer result with more digits than Python writes as text gives
        runCall's error reply, and the loop goes on serving.
        """
        requests = [b'huge\n{"args":[]}', b'add\n{"args":[1,2]}']
        stream = b"".join(HEADER.pack(len(b)) + b for b in requests)
        out = io.BytesIO()
        serve(REGISTRY, io.BytesIO(stream), out, 1 << 20)
        got = [comparable(f) for f in frames(out.getvalue())]
        self.assertEqual(got, expected(REGISTRY, requests, 1 << 20))
        self.assertEqual(got[0]["type"], "bad_result")
        self.assertEqual(got[1], b"R3")

    def test_longFrame(self) -> None:
        """
        A frame longer than one read (a 300 KiB argument) is read whole.
        """
        value = "x" * (300 * 1024)
        body = b"echo\n" + _json.encode({"args": [value]})
        stream = (HEADER.pack(len(body)) + body) * 2 + HEADER.pack(len(b"add\n{}")) + b"add\n{}"
        out = io.BytesIO()
        serve(REGISTRY, io.BufferedReader(ChunkedReader(stream, [100, 70000, 5])), out, 1 << 20)
        got = frames(out.getvalue())
        self.assertEqual(got[:2], [b"R" + _json.encode([value])] * 2)
        self.assertEqual(comparable(got[2])["type"], "task_failed")
        self.assertEqual(len(got), 3)

    def test_longResultWriteCutShort(self) -> None:
        """
        A long result is written from where it lies, its frame's header
        beside it (one C{writev}); if a signal cuts that write short once
        the pipe is full, the rest follows: the frame arrives whole.
        """
        replyRead, replyWrite = os.pipe()
        self.addCleanup(os.close, replyRead)
        capacity = fcntl.fcntl(replyWrite, fcntl.F_SETPIPE_SZ, 65536)
        previous = signal.signal(signal.SIGUSR1, lambda *args: None)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        value = "z" * (3 * capacity)
        body = b"echo\n" + _json.encode({"args": [value]})
        main = threading.get_ident()
        replies = io.BytesIO()

        def interruptThenDrain() -> None:
            # Once the pipe is full, the worker's write waits: interrupt it.
            waiting = bytearray(4)
            while True:
                fcntl.ioctl(replyRead, termios.FIONREAD, waiting)
                if int.from_bytes(waiting, "little") >= capacity:
                    break
                threading.Event().wait(0.001)
            signal.pthread_kill(main, signal.SIGUSR1)
            while chunk := os.read(replyRead, 1 << 20):
                replies.write(chunk)

        thread = threading.Thread(target=interruptThenDrain)
        thread.start()
        with os.fdopen(replyWrite, "wb") as out:
            self.assertIsNone(serve(REGISTRY, io.BytesIO(HEADER.pack(len(body)) + body), out, 1 << 20))
        thread.join()
        self.assertEqual(frames(replies.getvalue()), [b"R" + _json.encode([value])])

    def test_endInAFrame(self) -> None:
        """
        End of file in the middle of a frame (its length, or its body):
        the frames before it are answered, and the loop returns C{None}.
        """
        whole = HEADER.pack(len(b'add\n{"args":[1,2]}')) + b'add\n{"args":[1,2]}'
        for cut in (whole + HEADER.pack(9)[:2], whole + HEADER.pack(9) + b"add", whole + HEADER.pack(70000) + b"a" * 66000):
            out = io.BytesIO()
            self.assertIsNone(serve(REGISTRY, io.BufferedReader(ChunkedReader(cut, [3])), out, 1000))
            self.assertEqual(frames(out.getvalue()), [b"R3"])

    def test_realPipes(self) -> None:
        """
        On real pipes (the worker's case: replies written straight to the
        file descriptor), replies are whole frames, in order, and a
        C{SIGTERM} while waiting for the next call ends the loop with
        C{"signal"}.
        """
        requestRead, requestWrite = os.pipe()
        replyRead, replyWrite = os.pipe()
        self.addCleanup(os.close, requestRead)
        self.addCleanup(os.close, replyRead)
        bodies = [b'add\n{"args":[%d,1]}' % i for i in range(100)] + [b'echo\n' + _json.encode({"args": ["y" * 70000]})]
        replies = io.BytesIO()

        def feed() -> None:
            with os.fdopen(requestWrite, "wb") as w:
                w.write(b"".join(HEADER.pack(len(b)) + b for b in bodies))

        def drain() -> None:
            while chunk := os.read(replyRead, 1 << 20):
                replies.write(chunk)

        threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
        for thread in threads:
            thread.start()
        with os.fdopen(requestRead, "rb", closefd=False) as inp, os.fdopen(replyWrite, "wb") as out:
            self.assertIsNone(serve(REGISTRY, inp, out, 1 << 20))
        for thread in threads:
            thread.join()
        got = frames(replies.getvalue())
        self.assertEqual(got[:100], [b"R%d" % (i + 1) for i in range(100)])
        self.assertEqual(got[100], b"R" + _json.encode(["y" * 70000]))

        stop = StopSignal()
        previous = signal.getsignal(signal.SIGTERM)
        self.addCleanup(signal.signal, signal.SIGTERM, previous)
        stop.install()
        requestRead, requestWrite = os.pipe()
        self.addCleanup(os.close, requestRead)
        self.addCleanup(os.close, requestWrite)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        previousAlarm = signal.signal(signal.SIGALRM, lambda *a: os.kill(os.getpid(), signal.SIGTERM))
        self.addCleanup(signal.signal, signal.SIGALRM, previousAlarm)
        with os.fdopen(requestRead, "rb", closefd=False) as inp:
            self.assertEqual(serve(REGISTRY, inp, io.BytesIO(), 1000, stop), "signal")
