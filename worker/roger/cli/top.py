"""``kubectl roger top``: each Partition's queues, rates, running jobs and workers, refreshed.

Counts come over AMQP (passive declares: ready jobs, consumers, retrying, buried) and from
the workers' status records (stream ``<p>.workers``: running jobs, heartbeats), as ``roger
info`` reads them; unacked jobs and the rates are RabbitMQ's own, from the management API
(shown as ``-`` when it cannot be reached). Nothing is consumed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from roger.cli.common import UsageError, _Parser
from roger.cli.kube_access import Kube, KubeRefused
from roger.core import naming
from roger.core.inventory import QueueActivity

if TYPE_CHECKING:
    from roger.broker.client import Client

CLEAR = "\x1b[H\x1b[2J"


@dataclass
class QueueRow:
    queue: str
    exists: bool
    ready: int
    consumers: int
    retrying: int
    buried: int
    paused: bool
    activity: QueueActivity | None  # None: the management API was not reachable


@dataclass
class PartitionView:
    namespace: str
    name: str
    partition_id: str = ""
    queues: list[QueueRow] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)  # status_view records
    error: str | None = None


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(views: Sequence[PartitionView], now: float) -> str:
    """The screen: one line per queue, then one per worker with its running jobs."""
    out = [
        f"{'NAMESPACE':<16} {'PARTITION':<20} {'QUEUE':<14} {'READY':>6} {'UNACKED':>7}"
        f" {'RETRYING':>8} {'BURIED':>6} {'CONSUMERS':>9} {'IN/S':>6} {'ACK/S':>6} PAUSED"
    ]
    for v in views:
        if v.error:
            out.append(f"{v.namespace:<16} {v.name:<20} error: {v.error}")
        for q in v.queues:
            a = q.activity
            if not q.exists:
                out.append(f"{v.namespace:<16} {v.name:<20} {q.queue:<14} (not declared yet)")
                continue
            out.append(
                f"{v.namespace:<16} {v.name:<20} {q.queue:<14} {q.ready:>6}"
                f" {'-' if a is None else a.unacked:>7} {q.retrying:>8} {q.buried:>6}"
                f" {q.consumers:>9} {_rate(a.published_per_s if a else None):>6}"
                f" {_rate(a.acked_per_s if a else None):>6} {'yes' if q.paused else 'no'}"
            )
    out.append("")
    out.append(f"{'NAMESPACE':<16} {'PARTITION':<20} {'WORKER':<36} {'SEEN':>5} RUNNING")
    for v in views:
        for w in v.workers:
            jobs = ", ".join(f"{r['name']} {r['id']} ({r['queue']})" for r in w["running"])
            seen = f"{max(0.0, now - float(w['at'])):.0f}s"
            out.append(
                f"{v.namespace:<16} {v.name:<20} {w['worker']:<36} {seen:>5}"
                f" {len(w['running'])}{': ' + jobs if jobs else ''}"
            )
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kubectl roger top", description=__doc__)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print once and exit (scripts)")
    p.add_argument(
        "--management-url",
        metavar="URL",
        help="the management API (default: the broker's host, port 15672, /api)",
    )
    return p


class Sampler:
    """One sample of every Partition in scope; broker clients kept between refreshes."""

    def __init__(self, kube: Kube, management_url: str | None) -> None:
        self.kube = kube
        self.management_url = management_url
        self.clients: dict[str, Client] = {}

    def close(self) -> None:
        for c in self.clients.values():
            c.close()

    def _client(self, url: str) -> Client:
        from roger.broker.client import Client

        if url not in self.clients:
            self.clients[url] = Client(url, name="kubectl-roger top")
        return self.clients[url]

    def sample(self) -> list[PartitionView]:
        activity: dict[str, dict[str, QueueActivity] | None] = {}
        secrets: dict[tuple[str, str], Any] = {}
        views = []
        for obj in self.kube.partitions():
            meta = obj.get("metadata") or {}
            view = PartitionView(str(meta.get("namespace", "")), str(meta.get("name", "")))
            views.append(view)
            url = None
            try:
                ref, url = self.kube.broker_url(obj, secrets)
                view.partition_id = ref.partition_id
                if url not in activity:
                    activity[url] = self._activity(url)
                try:
                    self._fill(view, url, obj, activity[url])
                except Exception:  # a connection lost in between: once more, on a new one
                    self._forget(url)
                    view.queues, view.workers = [], []
                    self._fill(view, url, obj, activity[url])
            except KubeRefused as exc:
                view.error = str(exc)
            except Exception as exc:  # one broker down must not hide the others
                if url is not None:
                    self._forget(url)
                view.error = f"broker: {type(exc).__name__}: {exc}".splitlines()[0]
        return views

    def _forget(self, url: str) -> None:
        client = self.clients.pop(url, None)
        if client is not None:
            client.close()

    def _activity(self, url: str) -> dict[str, QueueActivity] | None:
        try:
            return self._client(url).activity(self.management_url)
        except OSError:
            return None

    def _fill(
        self,
        view: PartitionView,
        url: str,
        obj: dict[str, Any],
        activity: dict[str, QueueActivity] | None,
    ) -> None:
        queues = tuple(str(q["name"]) for q in (obj.get("spec") or {}).get("queues") or ())
        info = self._client(url).info(view.partition_id, queues or None)
        for q in info.queues.values():
            main = naming.queue_name(view.partition_id, q.queue)
            view.queues.append(
                QueueRow(
                    q.queue,
                    q.exists,
                    q.messages,
                    q.consumers,
                    q.retrying,
                    q.buried,
                    q.paused,
                    None if activity is None else activity.get(main),
                )
            )
        view.workers = info.workers


def top(kube: Kube, argv: Sequence[str]) -> int:
    opts = _parser().parse_args(argv)
    if opts.interval <= 0:
        raise UsageError("--interval must be > 0")
    sampler = Sampler(kube, opts.management_url)
    clear = sys.stdout.isatty() and not opts.once
    try:
        while True:
            views = sampler.sample()
            screen = render(views, time.time())
            print((CLEAR if clear else "") + screen, flush=True)
            if opts.once:
                return 1 if any(v.error for v in views) else 0
            time.sleep(opts.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        sampler.close()
