"""Declaring a partition's delay ladder (``roger.core.delay``) on a blocking channel.

Idempotent: the client declares it before its first delayed job of a partition queue (once
per connection); the objects are the same for everyone, so no one needs to know who was
first. A worker declares only the due exchange and its queues' bindings
(``roger.core.delay.worker_topology``).
"""

from __future__ import annotations

import weakref
from typing import Any

from roger.core import delay, topology


def declare_ladder(channel: Any, partition: str) -> None:
    """Every exchange, queue and binding of ``partition``'s ladder."""
    ladder = delay.ladder(partition)
    for exchange in ladder.exchanges:
        channel.exchange_declare(exchange, "topic", durable=True)
    for name, arguments in ladder.queues:
        channel.queue_declare(name, durable=True, arguments=arguments)
    for queue, exchange, pattern in ladder.queue_bindings:
        channel.queue_bind(queue, exchange, routing_key=pattern)
    for destination, source, pattern in ladder.exchange_bindings:
        channel.exchange_bind(destination, source, routing_key=pattern)


def bind_queue(channel: Any, partition: str, queue: str) -> None:
    """Let due jobs reach ``queue`` (declared first, as a publish to it would)."""
    name, exchange, pattern = delay.due_binding(partition, queue)
    channel.queue_declare(name, durable=True, arguments=topology.main_queue_arguments())
    channel.queue_bind(name, exchange, routing_key=pattern)


def prepare(channel: Any, partition: str, queue: str) -> None:
    declare_ladder(channel, partition)
    bind_queue(channel, partition, queue)


_READY: weakref.WeakKeyDictionary[Any, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


def ensure(conn: Any, partition: str, queue: str) -> None:
    """``prepare`` on a channel of the blocking ``conn``, once per connection and queue."""
    done = _READY.setdefault(conn, set())
    if (partition, queue) in done:
        return
    channel = conn.channel()
    try:
        prepare(channel, partition, queue)
    finally:
        if channel.is_open:
            channel.close()
    done.add((partition, queue))
