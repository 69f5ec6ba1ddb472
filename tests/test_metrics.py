"""
Tests for L{taskd.metrics}: the daemon's metrics in Prometheus' text
format, read back with C{prometheus_client}'s own parser (the real
daemon's C{/metrics} is tested in L{tests.test_web}).
"""

from __future__ import annotations

import signal

from attrs import frozen
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from taskd import errors
from taskd.activity import Activity
from taskd.metrics import DaemonMetrics, labelValue

from tests.fakes import PoolTestsMixin
from tests.test_web import families


@frozen
class FakeCall:
    """
    What L{Activity} reads of an ended call.
    """

    name: str
    number: int
    submittedAt: float
    startedAt: float | None
    priority: int = 0
    origin: str | None = None
    pid: int | None = None

    def cancel(self) -> None:
        """
        Not needed here.
        """


class MetricsTests(PoolTestsMixin, SynchronousTestCase):
    """
    L{DaemonMetrics}, read back with C{prometheus_client}'s parser.
    """

    def test_collect(self) -> None:
        """
        Every counter and histogram is what the activity holds; worker ends
        are listed for every reason, zero or not; jobs by state and calls
        waiting for a retry are what the daemon's stats say.
        """
        pool, reactor = self.makePool(1)
        activity = Activity(reactor, buckets=(1.0,))
        pool.observer = activity
        pool.start()
        reactor.processes[0].ready()
        d = pool.submit("sleep", [1], timeout=3)
        reactor.advance(3)
        self.failureResultOf(d, errors.TaskTimeout)
        reactor.processes[0].exit(None, signal.SIGKILL)
        draining = [False]
        stats = lambda: {**pool.stats(), "jobsQueued": 2, "jobsScheduled": 1, "jobsRunning": 0}  # noqa: E731
        metrics = DaemonMetrics(activity, stats, lambda: draining[0], processMetrics=False)
        got = families(metrics.render().decode())
        self.assertEqual(
            got["taskd_jobs"],
            {("taskd_jobs", (("state", s),)): n for s, n in (("queued", 2.0), ("scheduled", 1.0), ("running", 0.0))},
        )
        self.assertEqual(got["taskd_calls_retrying"], {("taskd_calls_retrying", ()): 0.0})
        self.assertEqual(got["taskd_calls"], {("taskd_calls_total", (("outcome", "timeout"), ("task", "sleep"))): 1.0})
        run = got["taskd_call_run_seconds"]
        self.assertEqual(run[("taskd_call_run_seconds_bucket", (("le", "1.0"), ("task", "sleep")))], 0.0)
        self.assertEqual(run[("taskd_call_run_seconds_bucket", (("le", "+Inf"), ("task", "sleep")))], 1.0)
        self.assertEqual(run[("taskd_call_run_seconds_sum", (("task", "sleep"),))], 3.0)
        ends = got["taskd_worker_ends"]
        self.assertEqual(len(ends), 8)
        self.assertEqual(ends[("taskd_worker_ends_total", (("reason", "timeout"),))], 1.0)
        self.assertEqual(got["taskd_draining"], {("taskd_draining", ()): 0.0})
        draining[0] = True
        got = families(metrics.render().decode())
        self.assertEqual(got["taskd_draining"], {("taskd_draining", ()): 1.0})

    def test_linesKeptUntilACallEnds(self) -> None:
        """
        Two scrapes with no call ended between them give the same text (a
        task's lines are kept between scrapes); a call that ends shows in
        the next scrape, counted and with its run time in the histogram.
        """
        reactor = Clock()
        activity = Activity(reactor, buckets=(1.0,))
        metrics = DaemonMetrics(activity, dict, lambda: False, processMetrics=False)
        calls = [FakeCall("add", n, 0.0, 0.0) for n in range(3)]
        activity.callEnded(calls[0], "result", 0.5)
        first = metrics.render()
        self.assertEqual(metrics.render(), first)
        activity.callEnded(calls[1], "result", 2.0)
        activity.callEnded(calls[2], "task_failed", None)
        got = families(metrics.render().decode())
        self.assertEqual(
            got["taskd_calls"],
            {
                ("taskd_calls_total", (("outcome", "result"), ("task", "add"))): 2.0,
                ("taskd_calls_total", (("outcome", "task_failed"), ("task", "add"))): 1.0,
            },
        )
        run = got["taskd_call_run_seconds"]
        self.assertEqual(
            (
                run[("taskd_call_run_seconds_bucket", (("le", "1.0"), ("task", "add")))],
                run[("taskd_call_run_seconds_count", (("task", "add"),))],
                run[("taskd_call_run_seconds_sum", (("task", "add"),))],
            ),
            (1.0, 2.0, 2.5),
        )

    def test_labelValuesEscaped(self) -> None:
        """
        A task name with a backslash, a double quote or a newline is
        escaped as Prometheus' text format says, and reads back whole.
        """
        name = 'odd\\"name\nhere'
        self.assertEqual(labelValue(name), '"odd\\\\\\"name\\nhere"')
        activity = Activity(Clock())
        activity.callEnded(FakeCall(name, 1, 0.0, 0.0), "result", 0.1)
        got = families(DaemonMetrics(activity, dict, lambda: False, processMetrics=False).render().decode())
        self.assertEqual(list(got["taskd_calls"]), [("taskd_calls_total", (("outcome", "result"), ("task", name)))])

    def test_processMetrics(self) -> None:
        """
        The daemon process's own metrics follow taskd's, as
        C{prometheus_client}'s C{ProcessCollector} gives them.
        """
        got = families(DaemonMetrics(Activity(Clock()), dict, lambda: False).render().decode())
        self.assertIn("process_cpu_seconds", got)
        self.assertIn("taskd_draining", got)
