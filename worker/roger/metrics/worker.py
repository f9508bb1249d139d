"""The worker's Prometheus metrics, all living in the parent process.

Jobs run in child processes, but every count is made here from their frames, so the
numbers are right without multiprocess collectors. ``.labels()`` children are cached; the
series moved for every job are ``roger.metrics.hot``'s plain counts, without locks.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
)

from roger.core import metric_names as names
from roger.core.lifecycle import BURIED_DROPPED, LifecycleEvent
from roger.core.message import PARK_REASONS
from roger.metrics.hot import HotCounter, HotHistogram
from roger.version import package_version

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)
_SAMPLED = {
    "ready": names.QUEUE_MESSAGES,
    "consumers": names.QUEUE_CONSUMERS,
    "retrying": names.QUEUE_RETRYING,
    "buried": names.QUEUE_BURIED,
    "invalid": names.QUEUE_INVALID,
}


class WorkerMetrics:
    """Implements ``Telemetry`` and ``LifecycleObserver`` for one partition."""

    def __init__(self, partition: str, version: str | None = None, registry: Any = None) -> None:
        self.partition = partition
        if registry is None:
            # A registry of its own, with the standard process_* and python_* series.
            registry = CollectorRegistry()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = registry
        r, p = self.registry, ["partition"]
        # Moved for every job: plain counts read at scrape time (roger.metrics.hot).
        fixed = (partition,)
        self.lifecycle = HotCounter(
            names.LIFECYCLE_EVENTS, "Hooks fired", [*p, "queue", "job_name", "hook"], fixed
        )
        self.duration = HotHistogram(
            names.JOB_DURATION,
            "Job run time",
            [*p, "queue", "job_name", "outcome"],
            fixed,
            DURATION_BUCKETS,
        )
        self.retries = HotCounter(
            names.JOB_RETRIES, "Retries published", [*p, "queue", "job_name"], fixed
        )
        self.outcomes = HotCounter(
            names.JOB_OUTCOMES, "Settled jobs", [*p, "queue", "job_name", "outcome"], fixed
        )
        for hot in (self.lifecycle, self.duration, self.retries, self.outcomes):
            r.register(hot)
        self.jobs_running = Gauge(names.JOBS_RUNNING, "Jobs running", [*p, "queue"], registry=r)
        self.parked_total = Counter(
            names.MESSAGES_PARKED,
            "Messages parked in .invalid",
            [*p, "queue", "reason"],
            registry=r,
        )
        self.buried_dropped = Counter(
            names.BURIED_DROPPED,
            "Buried jobs dropped to keep .buried within buried_max_length",
            [*p, "queue"],
            registry=r,
        )
        self.callback_failures = Counter(
            names.CALLBACK_FAILURES,
            "Callbacks that raised, hung or died",
            [*p, "callback", "hook", "reason"],
            registry=r,
        )
        self.samples = {
            key: Gauge(name, f"Sampled queue {key}", [*p, "queue"], registry=r)
            for key, name in _SAMPLED.items()
        }
        self.reconnects = Counter(names.BROKER_RECONNECTS, "AMQP reconnects", p, registry=r)
        self.ack_timeouts = Counter(
            names.CONSUMER_TIMEOUTS,
            "Consumer channels the broker closed for its consumer_timeout",
            [*p, "queue"],
            registry=r,
        )
        self.ack_risk = Gauge(
            names.CONSUMER_TIMEOUT_RISK,
            "1: jobs of the queue may hold a delivery past the broker's consumer_timeout",
            [*p, "queue"],
            registry=r,
        )
        self.paused = Gauge(
            names.QUEUE_PAUSED, "Queue paused (1) or consumed (0)", [*p, "queue"], registry=r
        )
        Info(names.WORKER_INFO, "Worker", p, registry=r).labels(partition).info(
            {"version": version or package_version()}
        )
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._running: dict[str, int] = {}
        self._child(self.reconnects)  # a counter at 0 from the start, not at the first one

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(self.partition, *labels)
        return child

    def observe(self, event: LifecycleEvent) -> None:
        if event.hook == BURIED_DROPPED:  # no hook fired: its own counter
            self._child(self.buried_dropped, event.queue).inc()
            return
        self.lifecycle.inc((event.queue, event.job_name, event.hook))

    def running(self, queue: str, delta: int) -> None:
        # A plain count read at scrape time: two gauge updates per job cost more.
        self._running[queue] = self._running.get(queue, 0) + delta

    def outcome(self, queue: str, job: str, outcome: str, duration: float | None) -> None:
        key = (queue, job, outcome)
        self.outcomes.inc(key)
        if outcome == "retried":
            self.retries.inc((queue, job))
        if duration is not None:
            self.duration.observe(key, duration)

    def parked(self, queue: str, reason: str) -> None:
        self._child(self.parked_total, queue, reason).inc()

    def callback_failed(self, callback: str, hook: str, reason: str) -> None:
        self._child(self.callback_failures, callback, hook, reason).inc()

    def queue_sample(self, queue: str, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            gauge = self.samples.get(key)
            if gauge is not None:
                self._child(gauge, queue).set(value)

    def reconnected(self) -> None:
        self._child(self.reconnects).inc()

    def ack_timed_out(self, queue: str) -> None:
        self._child(self.ack_timeouts, queue).inc()

    def ack_timeout_risk(self, queue: str, at_risk: bool) -> None:
        self._child(self.ack_risk, queue).set(1 if at_risk else 0)

    def prepare(self, queues: list[str]) -> None:
        """Series of the known label sets at 0, so that dashboards show 0, not "No data"."""
        for queue in queues:
            self._child(self.paused, queue).set(0)
            self._child(self.ack_timeouts, queue)
            self._child(self.jobs_running, queue).set_function(
                lambda queue=queue: self._running.get(queue, 0)
            )
            for reason in PARK_REASONS:
                self._child(self.parked_total, queue, reason)

    def queue_paused(self, queue: str, paused: bool) -> None:
        self._child(self.paused, queue).set(1 if paused else 0)

    def close(self, timeout: float) -> None:
        pass
