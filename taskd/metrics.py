# -*- test-case-name: tests.test_metrics,tests.test_web -*-
"""
The daemon's Prometheus metrics: L{DaemonMetrics} reads
L{taskd.activity.Activity}, the pool's C{stats} and the open connections
when Prometheus scrapes, and writes them in Prometheus' text format
(version 0.0.4); L{MetricsResource} serves them.

This module needs C{prometheus_client} (C{pip install 'taskd[http]'}):
the daemon process's own metrics (C{process_*}) are its
C{ProcessCollector}'s, and the tests read C{/metrics} back with its
parser.  Nothing else in taskd imports it unless C{--http} is given.

The metrics are made in the reactor's thread, when a scrape arrives:
C{prometheus_client.twisted.MetricsResource} runs its collection in the
reactor's thread pool, where reading the pool's state would race with
the reactor changing it.  Every metric is made from what the daemon
already counts, so a call costs nothing more with metrics on than with
the status page alone.  taskd's own families are written here, not by
C{prometheus_client.generate_latest}: that one formats each sample
through several functions (label names checked and escaped, values
through C{floatToGoString}), which made a scrape of 20 tasks cost 7 to
10 ms of the reactor's time; each task's lines are kept, and written
again only when one of its calls has ended since (see
C{docs/performance.md}).

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

from typing import Any, Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource
from twisted.web.server import Request

from taskd.activity import Activity, Histogram, TaskCounts, residentMemory
from taskd.observer import RESULT, WORKER_END_REASONS


def labelValue(value: str) -> str:
    """
    @return: C{value} as a label's value in Prometheus' text format: in
        double quotes, backslash, double quote and newline escaped.
    """
    return '"' + value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') + '"'


def _family(name: str, kind: str, doc: str) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def _histogramLines(name: str, task: str, histogram: Histogram) -> str:
    lines = []
    total = 0
    for bound, n in zip(histogram.bounds, histogram.counts):
        total += n
        lines.append(f'{name}_bucket{{task={task},le="{bound!r}"}} {total}\n')
    total += histogram.counts[-1]
    lines.append(f'{name}_bucket{{task={task},le="+Inf"}} {total}\n')
    lines.append(f"{name}_count{{task={task}}} {total}\n")
    lines.append(f"{name}_sum{{task={task}}} {histogram.sum!r}\n")
    return "".join(lines)


class _TaskLines:
    """
    One task's lines of the calls counter and of the two histograms, and
    how many of its calls had ended when they were written.
    """

    def __init__(self, counts: TaskCounts) -> None:
        self.ended = -1
        self.calls = self.runTimes = self.waits = ""
        self.update(counts)

    def update(self, counts: TaskCounts) -> None:
        ended = counts.results + sum(counts.failures.values())
        if ended == self.ended:
            return
        self.ended = ended
        task = labelValue(counts.name)
        calls = []
        if counts.results:
            calls.append(f'taskd_calls_total{{task={task},outcome="{RESULT}"}} {counts.results}\n')
        for outcome, n in sorted(counts.failures.items()):
            calls.append(f"taskd_calls_total{{task={task},outcome={labelValue(outcome)}}} {n}\n")
        self.calls = "".join(calls)
        if counts.runTimes.count:
            self.runTimes = _histogramLines("taskd_call_run_seconds", task, counts.runTimes)
            self.waits = _histogramLines("taskd_call_queue_wait_seconds", task, counts.waits)


class DaemonMetrics:
    """
    A daemon's metrics in Prometheus' text format.
    """

    def __init__(
        self,
        activity: Activity,
        stats: Callable[[], dict[str, Any]],
        draining: Callable[[], bool],
        processMetrics: bool = True,
    ) -> None:
        """
        @param stats: returns the daemon's counters (the C{stats} reply:
            the pool's, and C{connections}).
        @param draining: returns whether the daemon is draining.
        @param processMetrics: whether to add the daemon process's own
            (C{process_*}, C{prometheus_client}'s C{ProcessCollector}).
        """
        self._activity = activity
        self._stats = stats
        self._draining = draining
        self._tasks: dict[str, _TaskLines] = {}
        self._process: CollectorRegistry | None = None
        if processMetrics:
            from prometheus_client import ProcessCollector

            self._process = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=self._process)

    def render(self) -> bytes:
        """
        @return: every metric, as it is now, in Prometheus' text format.
        """
        activity = self._activity
        activity.fold()
        stats = self._stats()
        tasks = []
        for name, counts in sorted(activity.tasks.items()):
            lines = self._tasks.get(name)
            if lines is None:
                lines = self._tasks[name] = _TaskLines(counts)
            else:
                lines.update(counts)
            tasks.append(lines)
        out = [_family("taskd_calls_total", "counter", "Calls ended, by task and outcome (result, cancelled, or the error type).")]
        out.extend(t.calls for t in tasks)
        out.append(_family("taskd_call_run_seconds", "histogram", "Seconds calls ran in a worker, by task."))
        out.extend(t.runTimes for t in tasks)
        out.append(_family("taskd_call_queue_wait_seconds", "histogram", "Seconds calls waited before they started, by task."))
        out.extend(t.waits for t in tasks)

        def gauges(name: str, doc: str, label: str, values: Any, kind: str = "gauge") -> None:
            out.append(_family(name, kind, doc))
            for key, n in values:
                out.append(f"{name}{{{label}={labelValue(str(key))}}} {n}\n")

        def one(name: str, doc: str, value: int, kind: str = "gauge") -> None:
            out.append(f"{_family(name, kind, doc)}{name} {value}\n")

        byTask: dict[str, int] = {}
        for call in activity.running():
            byTask[call.name] = byTask.get(call.name, 0) + 1
        gauges("taskd_calls_running", "Calls running in a worker, by task.", "task", sorted(byTask.items()))
        gauges("taskd_calls_queued", "Calls waiting for a worker, by task.", "task", sorted(stats.get("queuedByTask", {}).items()))
        gauges(
            "taskd_calls_queued_by_priority", "Calls waiting for a worker, by priority.", "priority",
            stats.get("queuedByPriority", {}).items(),
        )
        one("taskd_worker_starts_total", "Worker processes that became ready.", activity.workerStarts, "counter")
        gauges(
            "taskd_worker_ends_total", "Worker processes that ended, by reason.", "reason",
            ((reason, activity.workerEnds.get(reason, 0)) for reason in WORKER_END_REASONS), "counter",
        )
        ready = len(activity.workers)
        gauges(
            "taskd_workers", "Worker processes counted against the pool's size, by state.", "state",
            (
                ("ready", ready),
                ("busy", stats.get("busy", 0)),
                ("idle", stats.get("idle", 0)),
                ("starting", max(0, stats.get("workers", 0) - ready)),
            ),
        )
        one("taskd_worker_processes", "Worker processes not yet ended, leaving ones included.", stats.get("processes", 0))
        pids = sorted(pid for pid in activity.workers if pid is not None)
        sizes = ((slot, residentMemory(pid)) for slot, pid in enumerate(pids))
        gauges(
            "taskd_worker_resident_memory_bytes",
            "Resident memory of each ready worker; slot 0 is the one with the lowest process id.", "slot",
            [(slot, size) for slot, size in sizes if size is not None],
        )
        one("taskd_calls_retrying", "Calls waiting out their backoff before another attempt.", stats.get("retrying", 0))
        gauges(
            "taskd_jobs", "Background jobs not yet ended, by state.", "state",
            [(state, stats["jobs" + state.capitalize()]) for state in ("queued", "scheduled", "running") if "jobs" + state.capitalize() in stats],
        )
        one("taskd_connections", "Client connections open.", stats.get("connections", 0))
        one("taskd_received_bytes_total", "Bytes read from client connections.", stats.get("bytesReceived", 0), "counter")
        one("taskd_sent_bytes_total", "Bytes of lines written to client connections.", stats.get("bytesSent", 0), "counter")
        one(
            "taskd_progress_dropped_total",
            "Progress reports not sent because the client's connection had a full write buffer.",
            stats.get("progressDropped", 0), "counter",
        )
        one("taskd_draining", "1 while the daemon drains (it fails its health check), else 0.", 1 if self._draining() else 0)
        text = "".join(out).encode("utf-8")
        if self._process is not None:
            text += generate_latest(self._process)
        return text


class MetricsResource(Resource):
    """
    Serves a daemon's metrics in Prometheus' text format, made in the
    reactor's thread.
    """

    isLeaf = True

    def __init__(self, metrics: DaemonMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self._metrics.render()
