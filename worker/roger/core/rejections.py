"""A worker that refuses its callbacks tells its Partition: the ``CallbackRejected`` Event.

The worker exits at start-up (before consuming anything) when a callback is not a callback
class; in a pod it first writes a core/v1 Warning Event about its Partition. The operator
reads it back to set ``Degraded`` (reason ``CallbackRejected``), but only while it is
current: the Event carries the digest of the config file the worker ran with (the same
digest as the pod template's ``roger.dev/config-hash``), so an Event from an older config
never outlives the fix. Pure: the bodies and the staleness rule; I/O in ``roger.kube`` and
the operator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from roger.core.kube_events import (
    REPORTING_CONTROLLER,
    WARNING,
    Regarding,
    instance_name,
    timestamp,
    truncate,
)

REASON: Final = "CallbackRejected"
CONFIG_HASH_ANNOTATION: Final = "roger.dev/config-hash"
NO_FILE: Final = "flags"  # the digest of a worker started without --config
# A rejection not repeated for this long is old news (a kubelet restarts a crash-looping
# container at least every 5 minutes, and each start repeats the Event).
FRESH_SECONDS: Final = 600.0


def config_digest(text: str | None) -> str:
    """The digest the operator puts on the pod template (``builders.config.config_hash``)."""
    if text is None:
        return NO_FILE
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def event_name(partition_name: str, digest: str) -> str:
    """One Event per (Partition, config): every restart of a rejecting pod updates it."""
    return f"{partition_name}.callback-rejected.{digest}"


def rejection_event(
    regarding: Regarding, message: str, digest: str, instance: str, at: float
) -> dict[str, Any]:
    """The core/v1 Event body for the create."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": event_name(regarding.name, digest),
            "namespace": regarding.namespace,
            "annotations": {CONFIG_HASH_ANNOTATION: digest},
        },
        "involvedObject": regarding.reference(),
        "reason": REASON,
        "type": WARNING,
        "message": truncate(message),
        "count": 1,
        "firstTimestamp": timestamp(at),
        "lastTimestamp": timestamp(at),
        "source": {"component": REPORTING_CONTROLLER, "host": instance_name(instance)},
        "reportingComponent": REPORTING_CONTROLLER,
        "reportingInstance": instance_name(instance),
        "action": "Start",
    }


def repeat_patch(message: str, at: float) -> dict[str, Any]:
    """A merge patch for the same rejection seen again."""
    return {"message": truncate(message), "lastTimestamp": timestamp(at)}


def _seconds(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def current_rejection(
    events: list[Mapping[str, Any]], uid: str, digest: str, now: float
) -> str | None:
    """The message of the newest rejection that applies to the Partition ``uid`` running
    the config ``digest`` and was seen within ``FRESH_SECONDS``; None if there is none."""
    best: tuple[float, str] | None = None
    for event in events:
        meta = event.get("metadata") or {}
        involved = event.get("involvedObject") or {}
        if event.get("reason") != REASON or (involved.get("uid") and involved["uid"] != uid):
            continue
        if (meta.get("annotations") or {}).get(CONFIG_HASH_ANNOTATION) != digest:
            continue
        seen = _seconds(event.get("lastTimestamp")) or _seconds(event.get("eventTime"))
        if seen is None or now - seen > FRESH_SECONDS:
            continue
        if best is None or seen > best[0]:
            best = (seen, str(event.get("message") or REASON))
    return best[1] if best else None
