# -*- test-case-name: tests.test_testing -*-
"""
Test doubles for code that uses taskd, for your own unit tests: no
process, no socket, and time on a C{twisted.internet.task.Clock}.

L{FakeClient} has the calling API of L{taskd.client.TaskClient} and
L{taskd.reconnecting.ReconnectingClient}; L{FakePool} has the API of
L{taskd.pool.ProcessPool}.  Each call made through them is a L{FakeCall}
that the test answers by hand (L{FakeCall.succeed}, L{FakeCall.fail},
L{FakeCall.report}) or runs with your task functions, in this process,
as a worker would run them (L{FakeCall.run})::

    from twisted.internet.task import Clock
    from twisted.trial.unittest import SynchronousTestCase
    from taskd import errors
    from taskd.testing import FakeClient

    class NotifyTests(SynchronousTestCase):
        def test_refused(self):
            client = FakeClient(Clock())
            d = myapp.notify(client, "a@example.com")
            [call] = client.pending
            call.fail(errors.TaskFailed("mailbox full", "smtplib.SMTPRecipientsRefused"))
            self.assertEqual(self.successResultOf(d), "not sent: mailbox full")

A call run in this process goes through the worker's own code
(L{taskd.worker.runCall}): its arguments and result make the JSON round
trip they make through a daemon, an exception becomes
L{errors.TaskFailed} naming its type, a result JSON cannot hold becomes
L{errors.ResultNotSerializable}, and L{taskd.worker.progress} inside the task
reaches the caller's progress callback.

L{FakeProcessReactor} goes one level down, for code that embeds the real
L{taskd.pool.ProcessPool}: a C{MemoryReactorClock} whose C{spawnProcess}
connects each worker to a L{FakeProcess} that the test drives by hand
(ready, reply, crash, exit), with the pool's real pipes and frames.

The daemon never imports this package.
"""

from taskd.testing._calls import CallState, FakeCall
from taskd.testing._client import FakeClient
from taskd.testing._pool import FakePool
from taskd.testing._processes import FakeProcess, FakeProcessReactor

__all__ = [
    "CallState",
    "FakeCall",
    "FakeClient",
    "FakePool",
    "FakeProcess",
    "FakeProcessReactor",
]
