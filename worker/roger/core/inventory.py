"""Which partitions and queues a broker holds, from its list of queue names (pure).

AMQP cannot list queues, so ``roger info`` without a partition asks the management API
for names and counts and this module makes partitions of them. A partition is known by
its state streams (``<p>.workers``, ``<p>.control``: every worker declares them) or by a
job queue family (``<p>-<q>`` with ``<p>-<q>.buried``); as both partition and queue names
may contain ``-``, a family is split at the partition names found first, else at its
last ``-`` (partition names such as ``tenant-a`` have one more often than queue names).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_STATE_SUFFIXES = (".workers", ".control")


@dataclass
class QueueCounts:
    queue: str
    ready: int = 0
    unacked: int = 0
    consumers: int = 0
    retrying: int = 0
    buried: int = 0
    invalid: int = 0


@dataclass
class PartitionCounts:
    partition: str
    queues: dict[str, QueueCounts] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"partition": self.partition, "queues": {k: vars(v) for k, v in self.queues.items()}}


def partitions(rows: Iterable[Mapping[str, Any]]) -> list[PartitionCounts]:
    """``rows``: the management API's queues (``name``, ``messages_ready``,
    ``messages_unacknowledged``, ``consumers``). Sorted by partition name."""
    by_name = {str(r["name"]): r for r in rows}
    names = set(by_name)
    known = {n[: -len(s)] for n in names for s in _STATE_SUFFIXES if n.endswith(s)}
    families = {n[: -len(".buried")] for n in names if n.endswith(".buried")}
    out: dict[str, PartitionCounts] = {p: PartitionCounts(p) for p in known}
    for family in sorted(families):
        owner = max((p for p in known if family.startswith(f"{p}-")), key=len, default=None)
        if owner is None:
            owner = family.rsplit("-", 1)[0]
        queue = family[len(owner) + 1 :]
        if not queue:
            continue
        part = out.setdefault(owner, PartitionCounts(owner))
        part.queues[queue] = _counts(queue, family, by_name)
    return [out[p] for p in sorted(out)]


def _n(row: Mapping[str, Any] | None, key: str) -> int:
    value = (row or {}).get(key)
    return value if isinstance(value, int) else 0


def _counts(queue: str, family: str, rows: Mapping[str, Mapping[str, Any]]) -> QueueCounts:
    main = rows.get(family)
    retrying = sum(
        _n(r, "messages_ready")
        for name, r in rows.items()
        if name.startswith(f"{family}.retry.") and name[len(family) + 7 :].isdigit()
    )
    return QueueCounts(
        queue=queue,
        ready=_n(main, "messages_ready"),
        unacked=_n(main, "messages_unacknowledged"),
        consumers=_n(main, "consumers"),
        retrying=retrying,
        buried=_n(rows.get(f"{family}.buried"), "messages_ready"),
        invalid=_n(rows.get(f"{family}.invalid"), "messages_ready"),
    )


@dataclass(frozen=True)
class ManagementTarget:
    """Where the management API answers, and as whom (from the AMQP URL)."""

    base: str  # http(s)://host:port/api
    vhost: str
    user: str
    password: str


def management_target(amqp_url: str, override: str | None = None) -> ManagementTarget:
    """The management API of the first broker address: the same host, port 15672 (15671
    for ``amqps``), the same credentials and vhost; ``override`` is a base URL to use."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(amqp_url)
    user = unquote(parts.username or "guest")
    password = unquote(parts.password or "guest")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    if override:
        base = override.rstrip("/")
    else:
        tls = parts.scheme.lower() == "amqps"
        host = parts.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        base = f"{'https' if tls else 'http'}://{host}:{15671 if tls else 15672}/api"
    return ManagementTarget(base, vhost, user, password)


@dataclass(frozen=True)
class QueueActivity:
    """What the management API adds to a queue's counts: jobs delivered but not acked (the
    running and prefetched ones) and RabbitMQ's own rates (messages/s, over its last
    sample window): published into the queue and acknowledged from it."""

    unacked: int
    published_per_s: float | None
    acked_per_s: float | None


def _rate(stats: Mapping[str, Any], key: str) -> float | None:
    details = stats.get(f"{key}_details")
    rate = details.get("rate") if isinstance(details, Mapping) else None
    return float(rate) if isinstance(rate, int | float) else None


def queue_activity(rows: Iterable[Mapping[str, Any]]) -> dict[str, QueueActivity]:
    """``rows``: the management API's queues (``name``, ``messages_unacknowledged``,
    ``message_stats``); a queue with no traffic yet has no ``message_stats``: rate 0."""
    out: dict[str, QueueActivity] = {}
    for r in rows:
        stats = r.get("message_stats")
        stats = stats if isinstance(stats, Mapping) else {}
        out[str(r["name"])] = QueueActivity(
            unacked=_n(r, "messages_unacknowledged"),
            published_per_s=_rate(stats, "publish") or 0.0,
            acked_per_s=_rate(stats, "ack") or 0.0,
        )
    return out
