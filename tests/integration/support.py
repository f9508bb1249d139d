"""Look at the test broker (queues, raw messages, the management API); run the CLI.

The worker processes themselves: ``roger_devtools.workers``; waits: ``roger_devtools.polling``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pika

from roger.core import buried as bu
from roger.core import message, naming, topology
from roger_devtools.management import management as devtools_management
from roger_devtools.polling import eventually
from roger_operator.builders.model import PartitionSpec, QueueSpec
from tests.brokers import BROKER

ROOT = Path(__file__).resolve().parents[2]
MGMT = BROKER.management_api


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), out.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out.update(extra)
    return out


def roger(*args: str, amqp_url: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion."""
    head = [sys.executable, "-m", "roger.cli"] + (["--amqp-url", amqp_url] if amqp_url else [])
    return subprocess.run(
        [*head, *args],
        cwd=ROOT,
        env=kw.pop("env", env()),
        capture_output=True,
        text=True,
        timeout=kw.pop("timeout", 30),
        **kw,
    )


class Broker:
    """A blocking pika connection for looking at queues and publishing raw messages.

    Its channel is in confirm mode: a publish returns once the broker has the message. An
    unconfirmed publish to a quorum queue whose channel closes at once can be lost (the
    channel is gone before a resend to a leader just elected), which is not what a test of
    the worker means to look at."""

    def __init__(self, amqp_url: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.ch = self._confirmed_channel()

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()

    def _channel(self) -> Any:
        if not self.ch.is_open:
            self.ch = self._confirmed_channel()
        return self.ch

    def _confirmed_channel(self) -> Any:
        ch = self.conn.channel()
        ch.confirm_delivery()
        return ch

    def count(self, queue: str) -> int:
        """Ready messages; -1 if the queue does not exist."""
        try:
            return int(self._channel().queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return -1

    def consumers(self, queue: str) -> int:
        return int(self._channel().queue_declare(queue, passive=True).method.consumer_count)

    def publish(self, queue: str, body: bytes, **props: Any) -> None:
        props.setdefault("delivery_mode", 2)
        self._channel().basic_publish("", queue, body, pika.BasicProperties(**props))

    def drain(self, queue: str) -> list[tuple[Any, bytes]]:
        """Take every ready message of a queue (acknowledged)."""
        out = []
        ch = self._channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))

    def peek(self, queue: str) -> list[tuple[Any, bytes]]:
        """Every ready message of a queue, left in place (requeued by the channel close)."""
        ch = self.conn.channel()
        out = []
        try:
            while True:
                method, props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    return out
                out.append((props, body))
        finally:
            ch.close()

    def delete_partition(self, partition: str) -> None:
        """Every queue whose name starts with ``<partition>-`` (Roger's and the state's)."""
        names = [q["name"] for q in management("/queues/%2F?columns=name")]
        self.delete(*(n for n in names if naming.belongs_to_partition(n, partition)))

    def delete(self, *queues: str) -> None:
        for q in queues:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                self._channel().queue_delete(q)


def management(path: str, method: str = "GET", attempts: int = 5, body: Any = None) -> Any:
    """The management API of the broker under test (``roger_devtools.management``)."""
    return devtools_management(path, method, attempts, body, api=MGMT)


def read_lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def queue_names(
    partition: str, queue: str = "default", levels: Iterable[int] = (1, 2)
) -> list[str]:
    base = f"{partition}-{queue}"
    return [base, *(f"{base}.retry.{s}" for s in levels), f"{base}.buried", f"{base}.invalid"]


def message_count(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (a passive declare on a connection of its own)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def delete_queues(conn: pika.BlockingConnection, names: list[str]) -> None:
    """Delete each queue that exists, one channel each (a refusal closes its channel)."""
    for name in names:
        ch = conn.channel()
        try:
            ch.queue_delete(name)
        except pika.exceptions.ChannelClosedByBroker:
            pass
        finally:
            if ch.is_open:
                ch.close()


def declare(broker: Broker, partition: str, queue: str = "default") -> None:
    ch = broker._channel()
    for name, args in topology.declarations(partition, queue, (1,)):
        ch.queue_declare(name, durable=True, arguments=args)


def bury_legacy(
    broker: Broker, partition: str, ids: list[str], kind: str = "ValueError", **headers: Any
) -> None:
    """Burials as a worker of the previous version left them: in the ``.buried`` queue."""
    intake = naming.buried_queue_name(partition, "default")
    before = broker.count(intake)
    ch = broker._channel()  # after the count, whose refusal would close it
    for ident in ids:
        msg = message.JobMessage(ident, "tests.jobs.basic:ok", {"id": ident}, "default", None)
        h = {bu.ERROR_KIND: kind, bu.ERROR_MESSAGE: "boom", bu.BURIED_REASON: "not_retryable"}
        h.update(headers)
        props = pika.BasicProperties(delivery_mode=2, message_id=ident, headers=h)
        ch.basic_publish("", intake, message.encode(msg), props)
    eventually(lambda: broker.count(intake) == before + len(ids), 30, message="burials")


def operator_spec(
    partition_id: str,
    queues: tuple[str, ...] = ("q",),
    levels: tuple[int, ...] = (1,),
    bound: int = 1,
) -> PartitionSpec:
    """A Partition as the operator's broker code takes it (the rest of the spec unused)."""
    return PartitionSpec(
        name=partition_id, namespace="ns", uid="u", generation=1, partition_id=partition_id,
        secret_name="s", secret_key="url", image="i", replicas=1, jobs=("m",),
        queues=tuple(QueueSpec(q) for q in queues), retry_levels=levels,
        buried_max_length=bound, callbacks=(), event_hooks=(), metrics_port=9100,
        shutdown_timeout=1.0, callback_timeout=1.0, grace_period=1,
    )  # fmt: skip
