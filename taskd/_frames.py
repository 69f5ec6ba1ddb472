# -*- test-case-name: tests.test_pool_unit,tests.test_workerprocess -*-
"""
The frames between the pool and its workers, in one place.

A worker reads requests from its fd L{REQUEST_FD} and writes replies to its
fd L{REPLY_FD}; standard output and error are left to the tasks.  Framing,
both ways: a 4-byte big-endian length (L{HEADER}), then that many bytes.

Parent to worker, one frame per call::

    <task name> "\\n" <JSON object with "args" (array or object) and/or
                       "kwargs" (object); other keys are ignored>

Worker to parent, the first byte names the frame's kind::

    H <JSON {"pid": ..., "tasks": [...]}>   READY, sent once after import
    P <JSON value>                          PROGRESS of the running call
                                            (any number, before its R or E)
    R <JSON result>                         the call's RESULT
    E <JSON {"type", "message", ...}>       the call's ERROR, or (before H)
                                            why the worker could not start
    G <JSON {"reason": ...}>                GOODBYE: the worker exits now, of
                                            its own accord; every call after
                                            its last R or E never started

Every frame a worker sends holds one JSON value on one line; the parent
checks that, since a task could write to the pipe too.

A single-call worker (the default: C{--threads 1} and no C{async def}
task) runs its calls one at a time in the order they came, so a call's
tag is implicit: its place in that order, and each C{P}, C{R} or C{E}
frame is for the oldest call not yet answered.  A worker started with
C{--threads} (see L{taskd.worker}) runs several calls at once and answers
them in any order, so every frame about a call names it by its tag, a
4-byte big-endian number (L{TAG}) the parent gives it, unique in that
worker.  Parent to worker::

    T <tag> <task name> "\\n" <JSON object>  a CALL, as above, tagged
    C <tag>                                 CANCEL that call: stop it as
                                            well as can be done (it is
                                            still answered, to nobody)

Worker to parent::

    p <tag> <JSON value>                     PROGRESS of that call
    r <tag> <JSON result>                    its RESULT
    e <tag> <JSON {"type", "message", ...}>  its ERROR

(C{H}, C{G} and a start-up C{E} are as above.)

The arguments follow one rule wherever they are read (the wire decoder,
the worker): L{splitArguments}.

Imported by every worker process: nothing from Twisted.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

#: The worker's end of the pipe it reads requests from.
REQUEST_FD = 3

#: The worker's end of the pipe it writes replies to.
REPLY_FD = 4

#: The length prefix of every frame.
HEADER = struct.Struct("!I")

#: Frame kinds, worker to parent.
READY = b"H"
PROGRESS = b"P"
RESULT = b"R"
ERROR = b"E"
GOODBYE = b"G"

#: Frame kinds of a worker that runs several calls at once: parent to
#: worker, ...
CALL = b"T"
CANCEL = b"C"
#: ... and worker to parent.
TAGGED_PROGRESS = b"p"
TAGGED_RESULT = b"r"
TAGGED_ERROR = b"e"

#: A call's tag in a tagged frame, after the kind.
TAG = struct.Struct("!I")

#: Default largest encoded result, in bytes.
DEFAULT_MAX_RESULT = 16 * 1024 * 1024

#: Longest error message or traceback a worker sends, in characters.
MAX_ERROR_TEXT = 64 * 1024

#: The most JSON one progress report may hold.
MAX_PROGRESS = 64 * 1024


def frame(data: bytes) -> bytes:
    """
    @return: C{data} with its length prefix.
    """
    return HEADER.pack(len(data)) + data


def requestFrame(name: str, payload: bytes) -> bytes:
    """
    @param payload: the call's arguments as a JSON object (see
        L{splitArguments}); a whole request line from the wire will do.
    @return: the frame asking a worker to run task C{name}.
    """
    encodedName = name.encode("utf-8")
    return b"".join(
        (HEADER.pack(len(encodedName) + 1 + len(payload)), encodedName, b"\n", payload)
    )


def taggedRequestFrame(tag: int, name: str, payload: bytes) -> bytes:
    """
    @return: the frame asking a worker that runs several calls at once to
        run task C{name} as call C{tag}.
    """
    encodedName = name.encode("utf-8")
    return b"".join(
        (
            HEADER.pack(5 + len(encodedName) + 1 + len(payload)),
            CALL,
            TAG.pack(tag),
            encodedName,
            b"\n",
            payload,
        )
    )


def cancelFrame(tag: int) -> bytes:
    """
    @return: the frame asking a worker to stop call C{tag}.
    """
    return HEADER.pack(5) + CANCEL + TAG.pack(tag)


def tagged(kind: bytes, tag: int, body: bytes) -> bytes:
    """
    @return: a worker's frame (without its length) of C{kind} about call
        C{tag}.
    """
    return kind + TAG.pack(tag) + body


def maxReplyFrame(maxResult: int) -> int:
    """
    @return: the largest reply frame a worker allowed results of
        C{maxResult} bytes may send: an error carries up to four texts of
        L{MAX_ERROR_TEXT} characters, and some structure.
    """
    return maxResult + 4 * MAX_ERROR_TEXT + 1024


def jsonType(value: Any) -> str:
    """
    @return: what kind of JSON value C{value} is, for error messages.
    """
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return "an object"


def splitArguments(args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    """
    The one rule for a call's arguments: C{"args"} is an array (positional
    arguments) or an object (keyword arguments), C{"kwargs"} an object of
    keyword arguments; either may be missing.  Keyword arguments given in
    both are taken from C{"kwargs"}.

    @param args: the decoded C{"args"} value, or C{None} if missing.
    @param kwargs: the decoded C{"kwargs"} value, or C{None} if missing.
    @return: the positional and keyword arguments.
    @raise ValueError: if either has the wrong shape; the message says how.
    """
    if kwargs is None:
        kwargs = {}
    elif not isinstance(kwargs, dict):
        raise ValueError(f"'kwargs' must be an object, not {jsonType(kwargs)}")
    if args is None:
        return [], kwargs
    if isinstance(args, dict):
        return [], {**args, **kwargs}
    if not isinstance(args, list):
        raise ValueError(
            f"'args' must be an array (positional arguments) or an object "
            f"(keyword arguments), not {jsonType(args)}"
        )
    return args, kwargs


class FrameDecoder:
    """
    Split a byte stream into length-prefixed frames.

    Not C{twisted.protocols.basic.Int32StringReceiver}: that joins its whole
    buffer to every new chunk, which is quadratic in the size of a large
    result arriving in 64 KiB pipe reads.  Here each frame's body is copied
    once, whatever the reads: a whole frame is sliced straight out of the
    chunk read, and a frame that reads cut into pieces is kept as views of
    those chunks until it is complete, then joined.  Its first byte (the
    frame's kind) is handed apart from the rest, so that the rest need not
    be copied again.
    """

    def __init__(
        self,
        frameReceived: Callable[[bytes, bytes], None],
        tooLong: Callable[[int], None],
        maxLength: int,
    ) -> None:
        """
        @param frameReceived: called with each whole frame, prefix removed,
            in two parts: its first byte (its kind; C{b""} for an empty
            frame) and the rest.
        @param tooLong: called with the announced length of a frame over
            C{maxLength}; nothing more is decoded after it.
        """
        # The start of a frame that a read cut short: its header's bytes
        # while it is incomplete (_length is None), then its kind and the
        # views of its body's pieces.
        self._header = b""
        self._length: int | None = None
        self._kind = b""
        self._pieces: list[memoryview] = []
        self._missing = 0
        self._broken = False
        self._frameReceived = frameReceived
        self._tooLong = tooLong
        self._maxLength = maxLength

    def feed(self, data: bytes) -> None:
        """
        Decode what C{data} completes.
        """
        if self._broken:
            return  # past a frame too long, nothing can be told apart
        offset = 0
        if self._header or self._length is not None:
            offset = self._resume(data)
            if offset < 0:
                return
        size = len(data)
        unpack = HEADER.unpack_from
        received = self._frameReceived
        while size - offset >= 4:
            (length,) = unpack(data, offset)
            if length > self._maxLength:
                self._fail(length)
                return
            end = offset + 4 + length
            if end > size:
                self._begin(length, data, offset + 4)
                return
            if length:
                received(data[offset + 4 : offset + 5], data[offset + 5 : end])
            else:
                received(b"", b"")
            offset = end
        if offset < size:
            self._header = data[offset:]

    def _fail(self, length: int) -> None:
        self._broken = True
        self._header, self._length, self._pieces = b"", None, []
        self._tooLong(length)

    def _begin(self, length: int, data: bytes, start: int) -> None:
        """
        Keep the start of a frame of C{length} bytes whose body begins at
        C{start} in C{data} and goes past its end.
        """
        self._length = length
        if start < len(data):
            self._kind = data[start : start + 1]
            self._pieces = [memoryview(data)[start + 1 :]] if start + 1 < len(data) else []
        else:
            self._kind = b""
            self._pieces = []
        self._missing = length - (len(data) - start)

    def _resume(self, data: bytes) -> int:
        """
        Go on with the frame the last chunk cut short.

        @return: where the rest of C{data} begins once the frame is whole,
            or -1 if C{data} did not complete it.
        """
        offset = 0
        if self._length is None:
            # Its header was cut: complete it.
            offset = 4 - len(self._header)
            header = self._header + data[:offset]
            if len(header) < 4:
                self._header = header
                return -1
            self._header = b""
            (length,) = HEADER.unpack(header)
            if length > self._maxLength:
                self._fail(length)
                return -1
            if offset + length > len(data):
                self._begin(length, data, offset)
                return -1
            self._length = length
            self._kind, self._pieces, self._missing = b"", [], length
        size = len(data)
        missing = self._missing
        if not self._kind and missing and offset < size:
            self._kind = data[offset : offset + 1]
            offset += 1
            missing -= 1
        end = offset + missing
        if end > size:
            if offset < size:
                self._pieces.append(memoryview(data)[offset:])
            self._missing = missing - (size - offset)
            return -1
        pieces = self._pieces
        if end > offset:
            pieces.append(memoryview(data)[offset:end])
        kind = self._kind
        self._length, self._kind, self._pieces = None, b"", []
        self._frameReceived(kind, b"".join(pieces))
        return end
