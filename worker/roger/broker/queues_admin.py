"""Queued jobs seen and purged, partitions listed (``roger jobs``, ``purge``, ``info``).

Blocking pika on the client's control connection; the partition list comes from the
management API (AMQP cannot list queues).
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request
from typing import Any

import pika
import pika.exceptions

from roger.core import naming
from roger.core.inventory import (
    ManagementTarget,
    PartitionCounts,
    QueueActivity,
    partitions,
    queue_activity,
)
from roger.core.message import InvalidMessage, decode

MANAGEMENT_TIMEOUT = 10.0


def count(conn: Any, name: str) -> int | None:
    """Ready messages of a queue; None if it does not exist."""
    ch = conn.channel()
    try:
        return int(ch.queue_declare(name, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise
    finally:
        if ch.is_open:
            ch.close()


def purge(conn: Any, names: list[str]) -> dict[str, int]:
    """Purge each queue that exists; how many ready messages each one lost."""
    out: dict[str, int] = {}
    for name in names:
        if count(conn, name) is None:
            continue
        ch = conn.channel()
        try:
            out[name] = int(ch.queue_purge(name).method.message_count)
        finally:
            if ch.is_open:
                ch.close()
    return out


def peek(conn: Any, name: str, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` ready jobs from the head of a queue, left in place: taken without
    an ack and returned by closing the channel (see docs/admin.md for what that costs)."""
    ch = conn.channel()
    out: list[dict[str, Any]] = []
    try:
        for _ in range(limit):
            method, props, body = ch.basic_get(name, auto_ack=False)
            if method is None:
                break
            out.append(_job_row(props, body))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
    finally:
        if ch.is_open:
            ch.close()  # every message taken goes back, in its place
    return out


def _job_row(props: Any, body: bytes) -> dict[str, Any]:
    headers = props.headers or {}
    try:
        msg = decode(body)
    except InvalidMessage as exc:
        return {"id": props.message_id, "job": None, "invalid": exc.reason}
    return {
        "id": msg.id,
        "job": msg.name,
        "args": msg.args,
        "retry_count": msg.retry_count,
        "queued_at": msg.queued_at,
        "queue_key": msg.queue_key,
        "execution_key": msg.execution_key,
        "deliveries": headers.get("x-delivery-count", 0),
    }


def _management_get(target: ManagementTarget, query: str) -> list[dict[str, Any]]:
    """The vhost's queues from the management API (``query``: its ``?columns=...``)."""
    vhost = urllib.parse.quote(target.vhost, safe="")
    req = urllib.request.Request(f"{target.base}/queues/{vhost}{query}")
    token = base64.b64encode(f"{target.user}:{target.password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=MANAGEMENT_TIMEOUT) as resp:
        rows = json.load(resp)
    return [r for r in rows if isinstance(r, dict) and "name" in r]


def broker_partitions(target: ManagementTarget) -> list[PartitionCounts]:
    """Every partition the broker holds, with its queues and their counts."""
    query = "?columns=name,messages_ready,messages_unacknowledged,consumers"
    return partitions(_management_get(target, query))


def broker_activity(target: ManagementTarget) -> dict[str, QueueActivity]:
    """Unacked messages and publish/ack rates of every queue of the vhost."""
    return queue_activity(
        _management_get(target, "?columns=name,messages_unacknowledged,message_stats")
    )


def queue_family(partition: str, queue: str, levels: tuple[int, ...]) -> list[str]:
    """The main queue and its retry queues: what ``purge`` empties."""
    return [
        naming.queue_name(partition, queue),
        *(naming.retry_queue_name(partition, queue, s) for s in levels),
    ]
