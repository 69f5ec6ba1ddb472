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
            errors.TaskCancelled("x"),
            errors.ConnectionLost("gone"),
            errors.NotConnected("none"),
            errors.WorkerStartError("w", "TB"),
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
        L{errors.TaskdError} that keeps the type.
        """
        e = errors.errorFromDict({"type": "from_the_future", "message": "hi"})
        self.assertIs(type(e), errors.TaskdError)
        self.assertEqual(e.toDict(), {"type": "from_the_future", "message": "hi"})

    def test_taskFailedStr(self) -> None:
        """
        A remote failure reads like the remote exception.
        """
        self.assertEqual(str(errors.TaskFailed("boom", "ValueError", "")), "ValueError: boom")
