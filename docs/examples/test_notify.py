"""
Unit tests of notify.py with taskd.testing: no daemon, no process, no
socket, and time on a Clock.  Run them (this directory on PYTHONPATH):

    python -m twisted.trial test_notify
"""

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import taskd
from taskd import errors
from taskd.registry import Registry
from taskd.testing import FakeClient

from notify import Report, mailUsers, sendNewsletter


class MailUsersTests(SynchronousTestCase):
    """
    L{mailUsers}, its calls answered by the test.
    """

    def setUp(self):
        self.clock = Clock()
        self.client = FakeClient(self.clock)

    def test_sent(self):
        """
        One C{send_mail} call per address, all at once; when they succeed,
        the report lists every address as sent.
        """
        d = mailUsers(self.client, ["ann@example.com", "bob@example.com"], "Hello")
        ann, bob = self.client.pending
        self.assertEqual((ann.name, ann.args, ann.timeout), ("send_mail", ("ann@example.com", "Hello"), 30.0))
        self.assertEqual(bob.args, ("bob@example.com", "Hello"))
        self.assertNoResult(d)
        ann.succeed(None)
        bob.succeed(None)
        self.assertEqual(self.successResultOf(d), Report(sent=["ann@example.com", "bob@example.com"]))

    def test_refused(self):
        """
        A task that raised is reported with its exception's type and
        message.
        """
        d = mailUsers(self.client, ["ann@example.com", "bob@example.com"], "Hello")
        ann, bob = self.client.pending
        ann.succeed(None)
        bob.fail(errors.TaskFailed("mailbox full", "smtplib.SMTPRecipientsRefused"))
        self.assertEqual(
            self.successResultOf(d),
            Report(
                sent=["ann@example.com"],
                failed={"bob@example.com": "refused (smtplib.SMTPRecipientsRefused): mailbox full"},
            ),
        )

    def test_timeout(self):
        """
        A mail that takes longer than its timeout fails when the clock
        passes it.
        """
        d = mailUsers(self.client, ["ann@example.com"], "Hello", timeout=10)
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(
            self.successResultOf(d),
            Report(failed={"ann@example.com": "timed out (it may have been sent)"}),
        )

    def test_cancel(self):
        """
        Cancelling the mailing cancels every call still running.
        """
        d = mailUsers(self.client, ["ann@example.com", "bob@example.com"], "Hello")
        ann, bob = self.client.pending
        ann.succeed(None)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertFalse(ann.cancelled)
        self.assertTrue(bob.cancelled)
        self.assertEqual(self.client.pending, [])

    def test_busy(self):
        """
        Addresses taskd did not take because it was busy are to be retried;
        nothing was sent to them.
        """
        client = FakeClient(self.clock, maxInFlight=1)
        d = mailUsers(client, ["ann@example.com", "bob@example.com"], "Hello")
        [ann] = client.pending
        ann.succeed(None)
        self.assertEqual(self.successResultOf(d), Report(sent=["ann@example.com"], retry=["bob@example.com"]))


# Stand-ins for the daemon's tasks, run in-process by the fake client.
tasks = Registry()


@tasks.task(name="send_newsletter")
def sendNewsletterTask(addresses, issue):
    for i, address in enumerate(addresses):
        if "@" not in address:
            raise ValueError(f"not an address: {address!r}")
        taskd.progress({"sent": i + 1, "of": len(addresses)})
    return len(addresses)


class SendNewsletterTests(SynchronousTestCase):
    """
    L{sendNewsletter}, its call run by task functions in this process.
    """

    def test_progress(self):
        """
        Each progress report of the task reaches C{onProgress}, before the
        count of mails sent.
        """
        client = FakeClient(Clock(), tasks)
        seen = []
        d = sendNewsletter(client, ["ann@example.com", "bob@example.com"], 7, lambda sent, total: seen.append((sent, total)))
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(seen, [(1, 2), (2, 2)])

    def test_taskError(self):
        """
        The task's exception reaches the caller as L{errors.TaskFailed},
        with its type, message and traceback.
        """
        client = FakeClient(Clock(), tasks)
        d = sendNewsletter(client, ["ann@example.com", "bob"], 7, lambda sent, total: None)
        error = self.failureResultOf(d, errors.TaskFailed).value
        self.assertEqual((error.remoteType, error.message), ("ValueError", "not an address: 'bob'"))
        self.assertIn("sendNewsletterTask", error.remoteTraceback)

    def test_busy(self):
        """
        A busy daemon refuses the call with L{errors.PoolBusy}.
        """
        client = FakeClient(Clock(), tasks)
        client.busy = True
        d = sendNewsletter(client, ["ann@example.com"], 7, lambda sent, total: None)
        self.failureResultOf(d, errors.PoolBusy)
