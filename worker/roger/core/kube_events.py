"""Lifecycle hooks as Kubernetes Events: the pure part (no I/O, no threads, no clock).

What a hook becomes (reason, type, message), which hooks are "similar" (the aggregation
key), the Event bodies and patches. The per-worker write budget (token buckets) and the
aggregation table that decides which write to make next are
``roger.core.event_aggregation``; ``roger.kube`` does the I/O.

Event API: core/v1 Events with ``count``, as client-go's ``record.EventRecorder`` and its
``EventCorrelator`` do. The newer ``events.k8s.io/v1`` API (client-go's ``tools/events``,
``series``) makes ``note`` immutable after create, so an aggregated Event could never say
"N similar" nor keep the latest job id; core/v1 lets one PATCH update count, lastTimestamp
and message together. Both APIs read the same objects (``kubectl get events``,
``kubectl describe partition``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple

from roger.core.lifecycle import BURIED_DROPPED, EventName, LifecycleEvent

PARTITION_GROUP: Final = "roger.dev"
PARTITION_VERSION: Final = "v1alpha1"
PARTITION_API_VERSION: Final = f"{PARTITION_GROUP}/{PARTITION_VERSION}"
PARTITION_KIND: Final = "Partition"
PARTITION_PLURAL: Final = "partitions"
REPORTING_CONTROLLER: Final = "roger.dev/worker"

# The API's limits: events.k8s.io/v1 ``note`` (= core/v1 message) is at most 1024 bytes,
# reportingInstance at most 128 characters.
MESSAGE_LIMIT: Final = 1024
INSTANCE_LIMIT: Final = 128
_ELLIPSIS: Final = "…"

EventType = Literal["Normal", "Warning"]
NORMAL: Final = "Normal"
WARNING: Final = "Warning"

# hook -> (reason, type); ``buried_dropped`` is no hook but always an Event
HOOK_EVENTS: Final[dict[EventName, tuple[str, EventType]]] = {
    "before_run": ("JobStarted", "Normal"),
    "after_run": ("JobSucceeded", "Normal"),
    "on_error": ("JobFailed", "Warning"),
    "on_cancel": ("JobCancelled", "Normal"),
    "on_buried": ("JobBuried", "Warning"),
    BURIED_DROPPED: ("BuriedJobDropped", "Warning"),
}


def truncate(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (as the API counts), marked with …."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    room = limit - len(_ELLIPSIS.encode("utf-8"))
    return data[:room].decode("utf-8", errors="ignore") + _ELLIPSIS


def reason_and_type(hook: EventName) -> tuple[str, EventType]:
    return HOOK_EVENTS[hook]


def job_message(event: LifecycleEvent) -> str:
    """One job's line: its name, id, retry count and, for failures, error kind and message."""
    head = f"Job {event.job_name} (id {event.job_id}, retry {event.retry_count})"
    error = ""
    if event.error is not None:
        kind, message = event.error
        error = f": {kind}: {message}" if message else f": {kind}"
    if event.hook == "before_run":
        return f"{head} started on queue {event.queue}"
    if event.hook == "after_run":
        took = f" in {event.duration:.3f}s" if event.duration is not None else ""
        return f"{head} succeeded{took}"
    if event.hook == "on_error":
        return f"{head} failed{error}"
    if event.hook == "on_cancel":
        return f"{head} cancelled"
    if event.hook == BURIED_DROPPED:
        return (
            f"{head} dropped from {event.partition}-{event.queue}.buried: the bound was "
            "reached before anyone filed it (roger buried list)"
        )
    return f"{head} buried{error}"


def event_message(latest: LifecycleEvent, count: int) -> str:
    """The Event's message: the job's line, prefixed with "N similar" once aggregated."""
    line = job_message(latest)
    if count > 1:
        line = f"{count} similar, latest: {line}"
    return truncate(line)


@dataclass(frozen=True, slots=True)
class Regarding:
    """The Partition object the Events are about."""

    namespace: str
    name: str
    uid: str | None = None

    def reference(self) -> dict[str, str]:
        ref = {
            "apiVersion": PARTITION_API_VERSION,
            "kind": PARTITION_KIND,
            "name": self.name,
            "namespace": self.namespace,
        }
        if self.uid:
            ref["uid"] = self.uid
        return ref


class AggregationKey(NamedTuple):
    """Similar events: same regarding object, reason, type and job name (not job id)."""

    namespace: str
    name: str
    reason: str
    type: str
    job_name: str


def aggregation_key(event: LifecycleEvent, regarding: Regarding) -> AggregationKey:
    reason, type_ = HOOK_EVENTS[event.hook]
    return AggregationKey(regarding.namespace, regarding.name, reason, type_, event.job_name)


def timestamp(at: float) -> str:
    """metav1.Time (RFC 3339, seconds)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_name(regarding_name: str, now_ns: int, salt: int) -> str:
    """Like client-go: ``<object>.<hex nanoseconds>``, plus a salt against two workers."""
    return f"{regarding_name}.{now_ns:x}{salt & 0xFFFF:04x}"


def instance_name(pod_or_host: str) -> str:
    return pod_or_host[:INSTANCE_LIMIT] or "unknown"


def new_event(
    *,
    name: str,
    regarding: Regarding,
    latest: LifecycleEvent,
    count: int,
    first_at: float,
    instance: str,
) -> dict[str, Any]:
    """A core/v1 Event body for the create."""
    reason, type_ = HOOK_EVENTS[latest.hook]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": regarding.namespace},
        "involvedObject": regarding.reference(),
        "reason": reason,
        "type": type_,
        "message": event_message(latest, count),
        "count": count,
        "firstTimestamp": timestamp(first_at),
        "lastTimestamp": timestamp(latest.at),
        "source": {"component": REPORTING_CONTROLLER, "host": instance},
        "reportingComponent": REPORTING_CONTROLLER,
        "reportingInstance": instance,
        "action": latest.hook,
    }


def count_patch(latest: LifecycleEvent, count: int) -> dict[str, Any]:
    """A merge patch growing an Event: count, lastTimestamp and the "N similar" message."""
    return {
        "count": count,
        "lastTimestamp": timestamp(latest.at),
        "message": event_message(latest, count),
    }
