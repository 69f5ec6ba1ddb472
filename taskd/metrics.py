# -*- test-case-name: tests.test_web -*-
"""
The daemon's Prometheus metrics: L{DaemonCollector} reads
L{taskd.activity.Activity}, the pool's C{stats} and the open connections
when Prometheus scrapes, and L{MetricsResource} serves them in the text
format.

This module needs C{prometheus_client} (C{pip install 'taskd[http]'});
nothing else in taskd imports it unless C{--http} is given.

The metrics are collected in the reactor's thread, when a scrape arrives:
C{prometheus_client.twisted.MetricsResource} runs its collection in the
reactor's thread pool, where reading the pool's state would race with
the reactor changing it.  Every metric is made from what the daemon
already counts, so a call costs nothing more with metrics on than with
the status page alone.

The metrics (see C{docs/operations.md} for their reference)::

    taskd_calls_total{task, outcome}              counter
    taskd_call_run_seconds{task}                  histogram
    taskd_call_queue_wait_seconds{task}           histogram
    taskd_calls_running{task}                     gauge
    taskd_calls_queued{task}                      gauge
    taskd_calls_queued_by_priority{priority}      gauge
    taskd_worker_starts_total                     counter
    taskd_worker_ends_total{reason}               counter
    taskd_workers{state}                          gauge (ready, busy, idle, starting)
    taskd_worker_processes                        gauge
    taskd_worker_resident_memory_bytes{slot}      gauge
    taskd_connections                             gauge
    taskd_received_bytes_total                    counter
    taskd_sent_bytes_total                        counter
    taskd_progress_dropped_total                  counter
    taskd_draining                                gauge
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource
from twisted.web.server import Request

from taskd.activity import Activity, Histogram, residentMemory
from taskd.observer import WORKER_END_REASONS


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [
        ("+Inf" if bound == float("inf") else repr(bound), float(n))
        for bound, n in histogram.cumulative()
    ]


class DaemonCollector:
    """
    A C{prometheus_client} collector of a daemon's metrics.
    """

    def __init__(
        self,
        activity: Activity,
        stats: Callable[[], dict[str, Any]],
        draining: Callable[[], bool],
    ) -> None:
        """
        @param stats: returns the daemon's counters (the C{stats} reply:
            the pool's, and C{connections}).
        @param draining: returns whether the daemon is draining.
        """
        self._activity = activity
        self._stats = stats
        self._draining = draining

    def collect(self) -> Iterator[Metric]:
        """
        @return: every metric, as it is now.
        """
        activity = self._activity
        stats = self._stats()
        calls = CounterMetricFamily(
            "taskd_calls", "Calls ended, by task and outcome (result, cancelled, or the error type).",
            labels=["task", "outcome"],
        )
        for (task, outcome), n in sorted(activity.calls.items()):
            calls.add_metric([task, outcome], n)
        yield calls
        for name, doc, histograms in (
            ("taskd_call_run_seconds", "Seconds calls ran in a worker, by task.", activity.runTimes),
            ("taskd_call_queue_wait_seconds", "Seconds calls waited before they started, by task.", activity.waits),
        ):
            family = HistogramMetricFamily(name, doc, labels=["task"])
            for task, histogram in sorted(histograms.items()):
                family.add_metric([task], _buckets(histogram), histogram.sum)
            yield family
        running = GaugeMetricFamily("taskd_calls_running", "Calls running in a worker, by task.", labels=["task"])
        byTask: dict[str, int] = {}
        for call in activity.running():
            byTask[call.name] = byTask.get(call.name, 0) + 1
        for task, n in sorted(byTask.items()):
            running.add_metric([task], n)
        yield running
        queued = GaugeMetricFamily("taskd_calls_queued", "Calls waiting for a worker, by task.", labels=["task"])
        for task, n in sorted(stats.get("queuedByTask", {}).items()):
            queued.add_metric([task], n)
        yield queued
        byPriority = GaugeMetricFamily(
            "taskd_calls_queued_by_priority", "Calls waiting for a worker, by priority.", labels=["priority"]
        )
        for priority, n in stats.get("queuedByPriority", {}).items():
            byPriority.add_metric([str(priority)], n)
        yield byPriority
        yield CounterMetricFamily(
            "taskd_worker_starts", "Worker processes that became ready.", value=activity.workerStarts
        )
        ends = CounterMetricFamily(
            "taskd_worker_ends", "Worker processes that ended, by reason.", labels=["reason"]
        )
        for reason in WORKER_END_REASONS:
            ends.add_metric([reason], activity.workerEnds.get(reason, 0))
        yield ends
        workers = GaugeMetricFamily(
            "taskd_workers", "Worker processes counted against the pool's size, by state.", labels=["state"]
        )
        ready = len(activity.workers)
        for state, n in (
            ("ready", ready),
            ("busy", stats.get("busy", 0)),
            ("idle", stats.get("idle", 0)),
            ("starting", max(0, stats.get("workers", 0) - ready)),
        ):
            workers.add_metric([state], n)
        yield workers
        yield GaugeMetricFamily(
            "taskd_worker_processes", "Worker processes not yet ended, leaving ones included.",
            value=stats.get("processes", 0),
        )
        rss = GaugeMetricFamily(
            "taskd_worker_resident_memory_bytes",
            "Resident memory of each ready worker; slot 0 is the one with the lowest process id.",
            labels=["slot"],
        )
        pids = sorted(pid for pid in activity.workers if pid is not None)
        for slot, pid in enumerate(pids):
            size = residentMemory(pid)
            if size is not None:
                rss.add_metric([str(slot)], size)
        yield rss
        yield GaugeMetricFamily(
            "taskd_calls_retrying",
            "Calls waiting out their backoff before another attempt.",
            value=stats.get("retrying", 0),
        )
        jobs = GaugeMetricFamily(
            "taskd_jobs", "Background jobs not yet ended, by state.", labels=["state"]
        )
        for state in ("queued", "scheduled", "running"):
            key = "jobs" + state.capitalize()
            if key in stats:
                jobs.add_metric([state], stats[key])
        yield jobs
        yield GaugeMetricFamily(
            "taskd_connections", "Client connections open.", value=stats.get("connections", 0)
        )
        yield CounterMetricFamily(
            "taskd_received_bytes", "Bytes read from client connections.",
            value=stats.get("bytesReceived", 0),
        )
        yield CounterMetricFamily(
            "taskd_sent_bytes", "Bytes of lines written to client connections.",
            value=stats.get("bytesSent", 0),
        )
        yield CounterMetricFamily(
            "taskd_progress_dropped",
            "Progress reports not sent because the client's connection had a full write buffer.",
            value=stats.get("progressDropped", 0),
        )
        yield GaugeMetricFamily(
            "taskd_draining", "1 while the daemon drains (it fails its health check), else 0.",
            value=1 if self._draining() else 0,
        )


def makeRegistry(collector: DaemonCollector, processMetrics: bool = True) -> CollectorRegistry:
    """
    @return: a registry of C{collector}'s metrics (and, with
        C{processMetrics}, the daemon process's own: C{process_*}).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if processMetrics:
        from prometheus_client import ProcessCollector

        ProcessCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """
    Serves a registry's metrics in Prometheus' text format, collected in
    the reactor's thread.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)
