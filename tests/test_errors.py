"""
Tests for L{taskd.errors}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from taskd import errors


class ErrorTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        Every error survives L{errors.TaskdError.toDict} and
        L{errors.errorFromDict} with its class and fields.
        """
        samples = [
            errors.BadRequest("b"),
            errors.LineTooLong("l"),
            errors.DuplicateId("d"),
            errors.Unauthenticated("who"),
            errors.UnknownTask("u"),
            errors.TaskFailed("m", "ValueError", "TB"),
            errors.ResultNotSerializable("r"),
            errors.ResultTooLarge("l"),
            errors.TaskTimeout("t"),
            errors.WorkerCrashed("c"),
            errors.PoolBusy("busy"),
            errors.PoolStopping("s"),
            errors.Expired("late"),
            errors.TaskCancelled("x"),
            errors.ConnectionLost("gone"),
            errors.NotConnected("none"),
            errors.WorkerStartError("w", "TB"),
            errors.LineTimeout("slow"),
            errors.IdleTimeout("idle"),
        ]
        types = set()
        for e in samples:
            back = errors.errorFromDict(e.toDict())
            self.assertIs(type(back), type(e))
            self.assertEqual(back.toDict(), e.toDict())
            types.add(e.type)
        self.assertEqual(len(types), len(samples))

    def test_unknownType(self) -> None:
        """
        An error type this version does not know becomes a plain
        L{errors.TaskdError} that keeps the type; without C{started}, it
        may have run.
        """
        e = errors.errorFromDict({"type": "from_the_future", "message": "hi"})
        self.assertIs(type(e), errors.TaskdError)
        self.assertEqual(e.toDict(), {"type": "from_the_future", "message": "hi", "started": True})

    def test_started(self) -> None:
        """
        Errors of calls that never reached a worker say C{started: false};
        errors from a running task say C{true}; errors that can come either
        way take what they are given; C{started} and C{attempts} cross the
        wire, and a missing or odd C{started} gives the type's default.
        """
        notStarted = [
            errors.BadRequest("x"),
            errors.LineTooLong("x"),
            errors.DuplicateId("x"),
            errors.UnknownTask("x"),
            errors.PoolBusy("x"),
            errors.Expired("x"),
            errors.NotConnected("x"),
            errors.Unauthenticated("x"),
            errors.PoolStopping("x"),
            errors.WorkerStartError("x"),
        ]
        started = [
            errors.TaskFailed("x", "ValueError"),
            errors.TaskTimeout("x"),
            errors.WorkerCrashed("x"),
            errors.WorkerProtocolError("x"),
            errors.ResultTooLarge("x"),
            errors.ConnectionLost("x"),
            errors.PoolStopping("x", started=True),
            errors.TaskCancelled("x", started=True),
        ]
        self.assertEqual([e.toDict()["started"] for e in notStarted], [False] * len(notStarted))
        self.assertEqual([e.toDict()["started"] for e in started], [True] * len(started))
        for e in notStarted + started:
            self.assertEqual(errors.errorFromDict(e.toDict()).started, e.started)
        retried = errors.TaskTimeout("late")
        retried.attempts = 3
        self.assertEqual(retried.toDict(), {"type": "timeout", "message": "late", "started": True, "attempts": 3})
        self.assertEqual(errors.errorFromDict(retried.toDict()).attempts, 3)
        self.assertEqual(errors.errorFromDict({"type": "busy", "started": "yes", "attempts": True}).toDict(),
                         {"type": "busy", "message": "", "started": False})

    def test_taskFailedStr(self) -> None:
        """
        A remote failure reads like the remote exception.
        """
        self.assertEqual(str(errors.TaskFailed("boom", "ValueError", "")), "ValueError: boom")

    def test_withheldTraceback(self) -> None:
        """
        A traceback of C{None} (a daemon started with C{--tracebacks none})
        leaves the field out; a client reads its absence as C{""}.
        """
        for e in (errors.TaskFailed("m", "ValueError", None), errors.WorkerStartError("w", None)):
            self.assertNotIn("traceback", e.toDict())
            back = errors.errorFromDict(e.toDict())
            self.assertEqual((type(back), back.remoteTraceback), (type(e), ""))  # type: ignore[attr-defined]

    def test_timeouts(self) -> None:
        """
        The two connection timeouts have their own wire types; a slow line
        is a kind of bad request.
        """
        self.assertEqual((errors.IdleTimeout("i").type, errors.LineTimeout("l").type), ("idle_timeout", "line_timeout"))
        self.assertIsInstance(errors.LineTimeout("l"), errors.BadRequest)
        self.assertIs(type(errors.errorFromDict({"type": "idle_timeout", "message": "i"})), errors.IdleTimeout)
