"""The emitter's Prometheus counters (names from ``roger.core.metric_names``)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from threading import Lock
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from roger.core.metric_names import KUBE_EVENT_WRITES, KUBE_EVENTS_DROPPED, KUBE_EVENTS_EMITTED


@dataclass(frozen=True)
class KubeEventMetrics:
    emitted: Any  # Counter {partition, reason}: lifecycle events recorded on an Event
    dropped: Any  # Counter {partition, cause}: lifecycle events that never reached the API
    writes: Any  # Counter {partition, verb}: create/patch requests sent to the API


_lock = Lock()
# By the registry itself, held weakly: keyed by id(), a registry collected and a new one
# created at the same address got the old one's counters (registered on the old registry),
# so the new registry never showed a count (a test caught it after an earlier test's
# registry was gone).
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, KubeEventMetrics] = (
    weakref.WeakKeyDictionary()
)


def kube_event_metrics(registry: CollectorRegistry | None = None) -> KubeEventMetrics:
    """The counters on ``registry`` (default: the global one), created once per registry."""
    registry = registry or REGISTRY
    with _lock:
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = KubeEventMetrics(
                emitted=Counter(
                    KUBE_EVENTS_EMITTED,
                    "Lifecycle events recorded on a Kubernetes Event (after aggregation).",
                    ["partition", "reason"],
                    registry=registry,
                ),
                dropped=Counter(
                    KUBE_EVENTS_DROPPED,
                    "Lifecycle events not recorded as Kubernetes Events, by cause.",
                    ["partition", "cause"],
                    registry=registry,
                ),
                writes=Counter(
                    KUBE_EVENT_WRITES,
                    "Kubernetes API writes (create/patch of Events) sent by this worker.",
                    ["partition", "verb"],
                    registry=registry,
                ),
            )
            _by_registry[registry] = metrics
        return metrics
