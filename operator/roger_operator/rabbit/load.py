"""What the autoscaler reads from RabbitMQ: per-queue counters and each worker's running jobs.

Ready counts come from a passive declare (exact at once: the management API's figures lag
by its statistics interval, which would delay waking a Partition from zero); running jobs
(unacked deliveries) from the management API, ``None`` where it does not answer. The
running jobs per worker pod come from the workers' own heartbeats (status stream).
"""

from __future__ import annotations

import time
from typing import Any

import pika.exceptions

from roger.broker.state_client import status_records
from roger.core import naming
from roger.core import state as st
from roger_operator.builders.autoscale import QueueCounters
from roger_operator.builders.model import PartitionSpec
from roger_operator.rabbit.broker import Broker, BrokerError, redact


def _ready(broker: Broker, url: str, name: str) -> int:
    try:
        ok = broker.run(url, lambda ch: ch.queue_declare(name, passive=True))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0  # not declared yet: nothing waits in it
        raise BrokerError(redact(str(exc.reply_text), url)) from None
    return int(ok.method.message_count)


def queue_counters(broker: Broker, url: str, spec: PartitionSpec) -> list[QueueCounters]:
    """Ready and running jobs of each queue of the Partition (raises ``BrokerError``)."""
    stats = {s["name"]: s for s in broker.stats(url, spec)}
    out = []
    for q in spec.queues:
        s = stats.get(q.name, {})
        running = int(s["unacked"]) if "unacked" in s else None
        ready = _ready(broker, url, naming.queue_name(spec.partition_id, q.name))
        out.append(
            QueueCounters(q.name, ready, running, q.max_workers, bool(s.get("paused", q.paused)))
        )
    return out


def pod_of(worker: str) -> str:
    """The pod name in a worker ident ``<pod or host>:<pid>``."""
    return worker.rsplit(":", 1)[0]


def running_per_pod(broker: Broker, url: str, partition_id: str) -> dict[str, int]:
    """Running jobs per worker pod, from the live workers' latest heartbeats."""

    def read(ch: Any) -> list[st.WorkerStatus]:
        return status_records(ch.connection, partition_id)

    records = broker.run(url, read)
    out: dict[str, int] = {}
    for r in st.live_workers(records, time.time()):
        pod = pod_of(r.worker)
        out[pod] = out.get(pod, 0) + len(r.running)
    return out
