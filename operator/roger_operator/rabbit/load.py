"""What the autoscaler reads from RabbitMQ: per-queue counters and each worker's running jobs.

Ready counts come from a passive declare (exact at once: the management API's figures lag
by its statistics interval, which would delay waking a Partition from zero); running jobs
(unacked deliveries) from the management API, ``None`` where it does not answer. The
running jobs per worker pod come from the workers' own heartbeats (status stream).
"""

from __future__ import annotations

import contextlib
import datetime
import time
from typing import Any

import pika.exceptions

from roger.core import naming
from roger.core import worker_status as ws
from roger_operator.builders.autoscale import QueueCounters
from roger_operator.builders.model import PartitionSpec
from roger_operator.rabbit.broker import Broker, BrokerError
from roger_operator.rabbit.redaction import addresses, redact

READ_LIMIT = 8.0  # seconds at most spent reading heartbeats
FIRST_WAIT = 3.0  # seconds a stream may take to deliver its first record


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


def _stream_bodies(url: str, stream: str, since: datetime.datetime, idle: float) -> list[bytes]:
    """Records of ``stream`` from ``since`` until it stays silent ``idle`` seconds.

    A connection of its own, closed without cancelling the consumer: cancelling rejects
    the deliveries still in flight, which a stream refuses by closing the connection.
    """
    params = pika.URLParameters(addresses(url)[0])
    params.connection_attempts = 1
    params.socket_timeout = 5.0
    params.client_properties = {"connection_name": "roger-operator-heartbeats"}
    bodies: list[bytes] = []
    try:
        conn = pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as exc:
        raise BrokerError(redact(f"RabbitMQ unavailable ({type(exc).__name__})", url)) from None
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1000)

        def take(channel: Any, method: Any, _props: Any, body: bytes) -> None:
            bodies.append(body)
            channel.basic_ack(method.delivery_tag)

        ch.basic_consume(stream, take, arguments={"x-stream-offset": since})
        started = time.monotonic()
        while time.monotonic() - started < READ_LIMIT:
            seen = len(bodies)
            conn.process_data_events(time_limit=idle)
            # silence ends the read, once the stream had time to start delivering
            if len(bodies) == seen and (seen or time.monotonic() - started > FIRST_WAIT):
                break
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:  # no stream yet: no worker ever ran
            raise BrokerError(redact(str(exc.reply_text), url)) from None
    except pika.exceptions.AMQPError as exc:
        raise BrokerError(redact(f"reading {stream}: {type(exc).__name__}", url)) from None
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return bodies


def running_per_pod(url: str, partition_id: str, idle: float = 0.3) -> dict[str, int]:
    """Running jobs per worker pod, from the live workers' latest heartbeats."""
    since = datetime.datetime.fromtimestamp(
        int(time.time() - ws.HEARTBEAT_STALE - 1), tz=datetime.UTC
    )
    bodies = _stream_bodies(url, naming.workers_stream_name(partition_id), since, idle)
    records = [r for r in map(ws.decode_status, bodies) if r is not None]
    out: dict[str, int] = {}
    for r in ws.live_workers(records, time.time()):
        pod = pod_of(r.worker)
        out[pod] = out.get(pod, 0) + len(r.running)
    return out
