"""What ``Client.info`` reports: each queue's messages and consumers, its retry, buried
and invalid queues, the paused queues and the live workers of a partition."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pika.exceptions import AMQPChannelError

from roger.broker import state_client
from roger.core import naming
from roger.core import worker_status as ws


@dataclass
class QueueInfo:
    queue: str
    exists: bool
    messages: int = 0  # ready in the main queue
    consumers: int = 0
    retrying: int = 0
    retry: dict[int, int] = field(default_factory=dict)  # per level (seconds)
    buried: int = 0
    invalid: int = 0
    paused: bool = False


@dataclass
class PartitionInfo:
    partition: str
    queues: dict[str, QueueInfo]
    paused: list[str] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)  # live, with running jobs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _count(conn: Any, name: str) -> tuple[int, int] | None:
    """Messages and consumers of a queue, None if it does not exist (a passive declare)."""
    ch = conn.channel()
    try:
        ok = ch.queue_declare(name, passive=True)
    except AMQPChannelError:  # 404 closed the channel
        return None
    finally:
        if ch.is_open:
            ch.close()
    return ok.method.message_count, ok.method.consumer_count


def info(
    conn: Any,
    partition: str,
    queues: Sequence[str] | None,
    retry_levels: tuple[int, ...] | None,
) -> PartitionInfo:
    records = state_client.status_records(conn, partition)
    learned_queues, learned_levels = ws.learned_topology(records)
    if queues is None:
        queues = learned_queues or ("default",)
    if retry_levels is None:
        retry_levels = learned_levels if learned_levels is not None else naming.DEFAULT_RETRY_LEVELS
    out: dict[str, QueueInfo] = {}
    for queue in queues:
        main = _count(conn, naming.queue_name(partition, queue))
        info = QueueInfo(queue=queue, exists=main is not None)
        if main is not None:
            info.messages, info.consumers = main
        for s in retry_levels:
            found = _count(conn, naming.retry_queue_name(partition, queue, s))
            info.retry[s] = found[0] if found else 0
        info.retrying = sum(info.retry.values())
        buried = _count(conn, naming.buried_queue_name(partition, queue))
        invalid = _count(conn, naming.invalid_queue_name(partition, queue))
        info.buried = buried[0] if buried else 0
        info.invalid = invalid[0] if invalid else 0
        out[queue] = info
    paused = state_client.paused_queues(conn, partition, queues)
    for name in paused:
        out[name].paused = True
    workers = [ws.status_view(w) for w in state_client.live_workers(conn, partition, records)]
    return PartitionInfo(partition=partition, queues=out, paused=paused, workers=workers)
