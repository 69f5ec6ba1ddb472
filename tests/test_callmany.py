"""
Tests for the Python client's fast paths (L{taskd._clientprotocol}: a
plain call encoded without a L{taskd.wire.Call}, a result reply read
without L{taskd.wire.decodeReply}) and for L{taskd.client.Caller.callMany}
(L{taskd._callmany}).
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from taskd import _json, errors
from taskd.client import Caller, TaskClient, TaskClientProtocol, connect
from taskd.pool import ProcessPool
from taskd.server import TaskServerFactory
from taskd.wire import Call, encodeRequest, encodeResult
from taskd._clientcodec import encodePlainCall

from tests.test_json import anyText, edgeValues, values

# A reply line of any shape that starts as a result reply does: what the
# fast path must take exactly as the general path does, or leave to it.
_HEAD = b'{"type":"result","id":'
resultish = st.one_of(
    st.builds(lambda id, value: encodeResult(id, _json.stdlibEncode(value))[:-1], st.integers(0, 2**70), values),
    st.builds(
        lambda id, rest: _HEAD + id + rest,
        st.sampled_from([b"1", b"2", b"01", b"-1", b"1.0", b"+1", b"1_0", b" 1", b"", b"\xd9\xa3", b"99999999999999999999"]),
        st.binary(max_size=30)
        | st.text(alphabet='{}[]",:0123456789.eE+-tfnulrsaNIy \t\r\\\ud800\u00e9x', max_size=30).map(
            lambda t: t.encode("utf-8", "surrogatepass")
        )
        | st.sampled_from(
            [b',"result":1}', b',"result":1 }', b',"result":NaN}', b',"result":1,"id":2}', b',"result":{"a":1}}',
             b',"result":1}}', b',"result":"}', b'}', b',"result":[1,2]}\r', b',"result":\xed\xa0\x80}',
             b',"result":"\xed\xa0\x80"}', b',"result":12345678901234567890123}', b',"result":' + b"[" * 5000 + b"]" * 5000 + b"}"]
        ),
    ),
)


def _same(value: Any) -> Any:
    """
    A form of C{value} in which NaN equals NaN and -0.0 is not 0.0.
    """
    return repr(value) if isinstance(value, float) and (math.isnan(value) or value == 0) else (
        [_same(v) for v in value] if isinstance(value, list) else
        {k: _same(v) for k, v in value.items()} if isinstance(value, dict) else value
    )


def outcome(line: bytes, fast: bool) -> Any:
    """
    Give C{line} to a protocol waiting for calls 1 and 2 (and 3, held back
    under C{maxInFlight}), through L{TaskClientProtocol.lineReceived} (the
    fast path) or L{TaskClientProtocol.replyReceived} (the general one).

    @return: what became of each call, and what was written.
    """
    proto = TaskClientProtocol()
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.setMaxInFlight(2)
    calls = [proto.call("add", [i]) for i in range(3)]
    transport.clear()
    (proto.lineReceived if fast else proto.replyReceived)(line)
    seen = []
    for d in calls:
        results: list[Any] = []
        d.addBoth(results.append)
        if not results:
            seen.append("waiting")
        elif isinstance(results[0], Failure):
            seen.append((results[0].type, results[0].getErrorMessage()))
        else:
            seen.append(("result", _same(results[0])))
    return seen, sorted(proto._pending), sorted(proto._written), list(proto._held), transport.value()


class FastPathTests(SynchronousTestCase):
    """
    The client's fast paths give what the general ones give.
    """

    @settings(max_examples=400, deadline=None)
    @given(resultish)
    def test_resultReplies(self, line: bytes) -> None:
        """
        Any line starting as a result reply does, given to
        L{TaskClientProtocol.lineReceived}, what the general path does
        with it: the same call fires with the same value (or none does),
        the same call is sent next.
        """
        self.assertEqual(outcome(line, True), outcome(line, False))

    def test_fastPathTaken(self) -> None:
        """
        The daemon's usual result line is read without
        L{taskd.wire.decodeReply} (which would make a
        L{taskd.wire.Result}).
        """
        import taskd._clientprotocol as module

        proto = TaskClientProtocol()
        proto.makeConnection(StringTransport())
        d = proto.call("add", [1, 2])
        original = module.decodeReply
        module.decodeReply = None  # type: ignore[assignment]
        try:
            proto.dataReceived(b'{"type":"result","id":1,"result":[3,{"a":null}]}\n')
        finally:
            module.decodeReply = original
        self.assertEqual(self.successResultOf(d), [3, {"a": None}])

    @settings(max_examples=300, deadline=None)
    @given(anyText, st.lists(edgeValues, max_size=4) | st.tuples(values, values), st.integers(1, 2**64))
    def test_plainCalls(self, name: str, args: Any, id: int) -> None:
        """
        A call with positional arguments only is encoded to the bytes
        L{encodeRequest} gives for the same L{Call}, and refused alike.
        """
        try:
            expected: Any = encodeRequest(Call(name, list(args), {}, id))
        except (TypeError, ValueError, RecursionError):
            expected = errors.BadRequest
        try:
            got: Any = encodePlainCall(name, args, id)
        except errors.BadRequest:
            got = errors.BadRequest
        self.assertEqual(got, expected)

    def test_plainCallSent(self) -> None:
        """
        L{TaskClient.call} with positional arguments sends the line the
        protocol documents; with keyword arguments, the general one.
        """
        transport = StringTransport()
        proto = TaskClientProtocol()
        proto.makeConnection(transport)
        client = TaskClient(proto)
        client.call("add", 1, 2)
        client.call("add", a=1, b=2)
        client.call("nothing")
        self.assertEqual(
            transport.value(),
            b'{"function":"add","args":[1,2],"id":1}\n{"function":"add","kwargs":{"a":1,"b":2},"id":2}\n'
            b'{"function":"nothing","id":3}\n',
        )


class CallManyTests(SynchronousTestCase):
    """
    L{TaskClient.callMany} on a L{StringTransport}, and L{Caller.callMany}
    (one C{Deferred} a call) through a caller whose calls the test answers.
    """

    def setUp(self) -> None:
        self.proto = TaskClientProtocol()
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.client = TaskClient(self.proto)

    def sent(self) -> list[dict[str, Any]]:
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(line) for line in data.splitlines()]

    def answer(self, *ids: int) -> None:
        self.proto.dataReceived(b"".join(b'{"type":"result","id":%d,"result":%d}\n' % (i, i * 10) for i in ids))

    def test_resultsInOrderWithinTheWindow(self) -> None:
        """
        At most C{window} calls are unanswered at once; the argument lists
        are read only as calls are sent; the results come in the order of
        the argument lists, whatever the order of the replies.
        """
        read: list[int] = []

        def argLists() -> Iterator[list[int]]:
            for i in range(7):
                read.append(i)
                yield [i, 1]

        d = self.client.callMany("add", argLists(), window=3)
        self.assertEqual([m["args"] for m in self.sent()], [[0, 1], [1, 1], [2, 1]])
        self.assertEqual(read, [0, 1, 2])
        self.answer(3, 1)
        self.assertEqual([(m["id"], m["args"]) for m in self.sent()], [(4, [3, 1]), (5, [4, 1])])
        self.answer(2, 5, 4, 6)
        self.assertEqual([m["id"] for m in self.sent()], [6, 7])
        self.assertNoResult(d)
        self.answer(7)
        self.assertEqual(self.successResultOf(d), [10, 20, 30, 40, 50, 60, 70])

    def test_oneWritePerRead(self) -> None:
        """
        The calls that the replies of one read make room for are written
        together, in one write at the end of the read.
        """
        writes: list[bytes] = []
        self.transport = StringTransport()
        original = self.transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            original(data)

        self.transport.write = write  # type: ignore[method-assign]
        self.proto = TaskClientProtocol()
        self.proto.makeConnection(self.transport)
        d = TaskClient(self.proto).callMany("add", ([i] for i in range(6)), window=3)
        self.assertEqual(len(writes), 3)
        self.answer(1, 2, 3)
        self.assertEqual(len(writes), 4)
        writes[:3] = []
        self.assertEqual([json.loads(line)["id"] for line in writes[0].splitlines()], [4, 5, 6])
        self.answer(4, 5, 6)
        self.assertEqual(self.successResultOf(d), [10, 20, 30, 40, 50, 60])

    def test_empty(self) -> None:
        """
        No argument lists: no calls, an empty list of results.
        """
        self.assertEqual(self.successResultOf(self.client.callMany("add", [])), [])
        self.assertEqual(self.transport.value(), b"")

    def test_firstErrorStops(self) -> None:
        """
        The first error fails the batch with it; the calls not sent are not
        sent, those unanswered are cancelled on the daemon, and their late
        answers change nothing.
        """
        d = self.client.callMany("add", ([i] for i in range(10)), window=3)
        self.sent()
        self.proto.dataReceived(b'{"type":"error","id":2,"error":{"type":"task_failed","message":"no"}}\n')
        self.assertEqual(self.failureResultOf(d, errors.TaskFailed).value.message, "no")
        self.assertEqual(self.sent(), [{"type": "cancel", "id": 1}, {"type": "cancel", "id": 3}])
        self.answer(1, 3)
        self.assertEqual(self.proto.outstanding, 0)
        self.assertEqual(self.sent(), [])

    def test_cancel(self) -> None:
        """
        Cancelling the batch cancels its unanswered calls and sends no more.
        """
        d = self.client.callMany("add", ([i] for i in range(10)), window=2)
        self.sent()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.sent(), [{"type": "cancel", "id": 1}, {"type": "cancel", "id": 2}])
        self.assertEqual(self.proto.outstanding, 0)

    def test_unsendable(self) -> None:
        """
        An argument list that is not JSON fails the batch with
        L{errors.BadRequest} and cancels the calls sent before it.
        """
        d = self.client.callMany("add", [[1], [object()], [3]])
        self.failureResultOf(d, errors.BadRequest)
        self.assertEqual(self.sent(), [{"function": "add", "args": [1], "id": 1}, {"type": "cancel", "id": 1}])

    def test_connectionLost(self) -> None:
        """
        A connection lost under a batch fails it with
        L{errors.ConnectionLost}; so does a batch on a closed connection.
        """
        d = self.client.callMany("add", [[1], [2]])
        self.proto.connectionLost(Failure(errors.ConnectionLost("gone")))
        self.failureResultOf(d, errors.ConnectionLost)
        self.failureResultOf(self.client.callMany("add", [[1]]), errors.ConnectionLost)

    def test_heldUnderMaxInFlight(self) -> None:
        """
        A window wider than the daemon's C{maxInFlight}: the calls over it
        wait unsent in the client, and go as answers come.
        """
        self.proto.setMaxInFlight(2)
        d = self.client.callMany("add", [[i] for i in range(4)], window=4)
        self.assertEqual([m["id"] for m in self.sent()], [1, 2])
        self.answer(1, 2)
        self.assertEqual([m["id"] for m in self.sent()], [3, 4])
        self.answer(3, 4)
        self.assertEqual(self.successResultOf(d), [10, 20, 30, 40])

    def test_badWindow(self) -> None:
        """
        A window that is not a positive integer is refused at once.
        """
        for window in (0, -1, 1.5, True):
            self.assertRaises(ValueError, self.client.callMany, "add", [[1]], window=window)

    def test_throughDeferreds(self) -> None:
        """
        L{Caller.callMany}, for callers without a connection of their own
        (a L{taskd.reconnecting.ReconnectingClient}), keeps the same
        window, order, and first-error rule, one C{Deferred} a call.
        """
        calls: list[tuple[list[Any], Deferred[Any]]] = []
        cancelled: list[list[Any]] = []

        class Answered(Caller):
            def _send(self, name: str, args: Any, kwargs: Any, timeout: Any, progress: Any, priority: Any = None, deadline: Any = None) -> Deferred[Any]:
                d: Deferred[Any] = Deferred(lambda d: cancelled.append(list(args)))
                calls.append((list(args), d))
                return d

        caller = Answered()
        d = caller.callMany("add", ([i] for i in range(5)), window=2)
        self.assertEqual([a for a, _ in calls], [[0], [1]])
        calls[1][1].callback("b")
        calls[0][1].callback("a")
        self.assertEqual([a for a, _ in calls], [[0], [1], [2], [3]])
        calls[3][1].callback("d")
        calls[2][1].callback("c")
        calls[4][1].callback("e")
        self.assertEqual(self.successResultOf(d), ["a", "b", "c", "d", "e"])

        del calls[:]
        d = caller.callMany("add", ([i] for i in range(5)), window=2)
        calls[0][1].errback(errors.TaskFailed("x"))
        self.failureResultOf(d, errors.TaskFailed)
        self.assertEqual((len(calls), cancelled), (2, [[1]]))

        del calls[:], cancelled[:]
        d = caller.callMany("add", ([i] for i in range(5)), window=2)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((len(calls), cancelled), (2, [[0], [1]]))


class CallManyDaemonTests(TestCase):
    """
    L{TaskClient.callMany} against a real daemon on 127.0.0.1.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.pool = ProcessPool(reactor, tasks=["taskd.examples", "tests.tasks"], workers=2, prefetch=4)
        yield self.pool.start()
        self.addCleanup(self.pool.stop)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(TaskServerFactory(self.pool, maxInFlight=30))
        self.addCleanup(port.stopListening)
        self.client = yield connect(reactor, f"tcp:127.0.0.1:{port.getHost().port}")
        self.addCleanup(self.client.close)

    @inlineCallbacks
    def test_manyCalls(self) -> Any:
        """
        2,000 calls, 100 at a time on a daemon that takes 30 at once: every
        result, in order; then a batch with a failing call fails with the
        task's error.
        """
        results = yield self.client.callMany("add", ([i, 1] for i in range(2000)))
        self.assertEqual(results, [i + 1 for i in range(2000)])
        d = self.client.callMany("add", [[1, 2], ["a", 1], [3, 4]])
        failure = yield self.assertFailure(d, errors.TaskFailed)
        self.assertEqual(failure.remoteType, "TypeError")
        self.assertEqual((yield self.client.call("add", 2, 2)), 4)
