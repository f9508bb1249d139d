"""Per-broker claims of a Partition's queue stems (``<partition>-<queue>``).

The partition id is claimed by ``Broker.claim``; a stem needs its own claim because
``<partition>-<queue>`` is ambiguous across partitions (``a`` + ``b-c`` and ``a-b`` + ``c``).
Each claim is a durable exchange whose ``alternate-exchange`` argument names the owner
(``roger.core.naming.queue_claim_exchange_name``): RabbitMQ refuses a re-declare with another
owner (406), so the first Partition wins atomically, on whichever operator, and the second
learns who holds the name. Nothing is ever published to a claim exchange.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import pika.exceptions

from roger.core import naming
from roger_operator.builders.model import PartitionSpec
from roger_operator.rabbit.broker import Broker, BrokerError
from roger_operator.rabbit.redaction import redact

_OWNER_RE = re.compile(r"current is '([^']*)'")  # the 406 names the current argument


class QueueNameConflict(Exception):
    """A queue stem of this Partition is claimed by another Partition on the broker."""

    def __init__(self, queue: str, stem: str, owner: str) -> None:
        super().__init__(f"queue name {stem!r} (queue {queue!r}) is claimed by Partition {owner}")
        self.queue = queue
        self.stem = stem
        self.owner = owner


def _claim(broker: Broker, url: str, exchange: str, owner: str) -> str | None:
    """Declare ``exchange`` owned by ``owner``; the current owner when someone else has it."""

    def declare(ch: Any) -> None:
        ch.exchange_declare(
            exchange, "fanout", durable=True, arguments={"alternate-exchange": owner}
        )

    try:
        broker.run(url, declare)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            match = _OWNER_RE.search(str(exc.reply_text))
            return match.group(1) if match else "?"
        raise BrokerError(redact(str(exc.reply_text), url)) from None
    return None


def _delete_exchange(channel: Any, name: str) -> None:
    channel.exchange_delete(name)


def claim_queues(broker: Broker, url: str, spec: PartitionSpec, owner: str) -> None:
    """Claim every queue stem of ``spec`` for ``owner``; raises ``QueueNameConflict`` at the
    first stem another Partition holds (the stems claimed before it stay claimed: they are
    ``owner``'s and go when it is deleted)."""
    for q in spec.queues:
        exchange = naming.queue_claim_exchange_name(spec.partition_id, q.name)
        holder = _claim(broker, url, exchange, owner)
        if holder is not None:
            raise QueueNameConflict(q.name, naming.queue_name(spec.partition_id, q.name), holder)


def release_queues(broker: Broker, url: str, spec: PartitionSpec, owner: str) -> list[str]:
    """Give up the stems ``owner`` holds (others' claims are left alone); the released ones."""
    released = []
    for q in spec.queues:
        exchange = naming.queue_claim_exchange_name(spec.partition_id, q.name)
        if _claim(broker, url, exchange, owner) is None:
            broker.run(url, functools.partial(_delete_exchange, name=exchange))
            released.append(exchange)
    return released


def owned(broker: Broker, url: str, spec: PartitionSpec, owner: str) -> PartitionSpec:
    """``spec`` with only the queues whose stems ``owner`` holds (claiming the unclaimed,
    as a Partition created before stems were claimed has them): deleting a Partition must
    never touch the queues of the Partition that owns a conflicting name."""
    queues = tuple(
        q
        for q in spec.queues
        if _claim(broker, url, naming.queue_claim_exchange_name(spec.partition_id, q.name), owner)
        is None
    )
    return dataclasses.replace(spec, queues=queues)
