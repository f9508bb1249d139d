"""What the worker must know about the broker's version: measured here, on 3.10 and on 4.0.

Run on both (``make test`` for 3.10, ``make test-rabbitmq4`` for 4.0). Each difference is
asserted for the version under test, so a broker upgrade that changes it fails here first.

Measured (3.10.8 and 4.0.5): a quorum queue without ``x-delivery-limit`` keeps a requeued
message forever on 3.10; 4.0 applies a default limit of 20 and drops the message on its 21st
return (no dead-letter target is set). Returns caused by a closed channel (a worker that
stops, reconnects or pauses with unacked deliveries) count exactly like a rejection. The
``x-delivery-count`` header is 0 on a first delivery on 3.10 and absent on 4.0.
``x-delivery-limit: -1`` turns the limit off on 4.0 but drops the message on its first
return on 3.10. An explicit limit with a dead-letter target dead-letters the message with
reason ``delivery_limit`` on both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pika
import pytest

from roger_devtools.polling import eventually
from tests.brokers import BROKER

pytestmark = pytest.mark.integration

RETURNS = 25  # more than 4.0's default delivery limit of 20
LIMIT_4_0 = 20


def _quorum_queue_with_one_message(
    conn: pika.BlockingConnection, name: str, **arguments: Any
) -> Any:
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum", **arguments})
    ch.basic_publish("", name, b"job", properties=pika.BasicProperties(delivery_mode=2))
    return ch


def _return_repeatedly(
    conn: pika.BlockingConnection, name: str, give_back: Callable[[Any, Any], None]
) -> list[Any]:
    """Take the message and give it back RETURNS times; the x-delivery-count of each take."""
    seen = []
    for _ in range(RETURNS):
        ch = conn.channel()
        method, props, _body = ch.basic_get(name, auto_ack=False)
        if method is None:
            break
        seen.append((props.headers or {}).get("x-delivery-count"))
        give_back(ch, method)
    return seen


def _still_queued(conn: pika.BlockingConnection, name: str) -> bool:
    ch = conn.channel()
    method, _props, _body = ch.basic_get(name, auto_ack=True)
    ch.queue_delete(name)
    return method is not None


def test_the_broker_is_the_version_under_test(conn: pika.BlockingConnection) -> None:
    raw = conn._impl.server_properties["version"]
    version = raw.decode() if isinstance(raw, bytes) else str(raw)
    assert version.startswith(BROKER.version + "."), (version, BROKER.version)


@pytest.mark.parametrize("how", ["nack-requeue", "channel-close"])
def test_quorum_queue_delivery_limit_by_version(
    conn: pika.BlockingConnection, unique_name: str, how: str
) -> None:
    def nack(ch: Any, method: Any) -> None:
        ch.basic_nack(method.delivery_tag, requeue=True)
        ch.close()

    def close(ch: Any, _method: Any) -> None:
        ch.close()  # unacked: the broker returns it to the queue

    _quorum_queue_with_one_message(conn, unique_name).close()
    seen = _return_repeatedly(conn, unique_name, nack if how == "nack-requeue" else close)
    kept = _still_queued(conn, unique_name)
    if BROKER.version == "3.10":
        # No limit: every return is delivered again, and the message stays.
        assert len(seen) == RETURNS and kept
        assert seen[:3] == [0, 1, 2]
    else:
        # Default limit 20: delivered once plus 20 times more, then dropped without a trace.
        assert len(seen) == LIMIT_4_0 + 1 and not kept
        assert seen[:3] == [None, 1, 2] and seen[-1] == LIMIT_4_0


def _nack(ch: Any, method: Any) -> None:
    ch.basic_nack(method.delivery_tag, requeue=True)
    ch.close()


def test_delivery_limit_minus_one_by_version(
    conn: pika.BlockingConnection, unique_name: str
) -> None:
    _quorum_queue_with_one_message(conn, unique_name, **{"x-delivery-limit": -1}).close()
    seen = _return_repeatedly(conn, unique_name, _nack)
    kept = _still_queued(conn, unique_name)
    if BROKER.version == "3.10":
        assert len(seen) == 1 and not kept  # -1 is "no return allowed", not "no limit"
    else:
        assert len(seen) == RETURNS and kept  # -1 switches the default limit off


def test_an_explicit_limit_dead_letters_with_its_reason_on_both(
    conn: pika.BlockingConnection, unique_name: str
) -> None:
    dead = f"{unique_name}-dead"
    ch = conn.channel()
    ch.queue_declare(dead, durable=True, arguments={"x-queue-type": "quorum"})
    limit = {"x-delivery-limit": 3, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    _quorum_queue_with_one_message(conn, unique_name, **limit).close()
    seen = _return_repeatedly(conn, unique_name, _nack)
    assert len(seen) == 3 + 1 and not _still_queued(conn, unique_name)

    def dead_lettered() -> Any:
        method, props, body = ch.basic_get(dead, auto_ack=True)
        return (props, body) if method is not None else None

    props, body = eventually(dead_lettered, timeout=10, message="the dead-lettered message")
    assert body == b"job"
    assert [d["reason"] for d in props.headers["x-death"]] == ["delivery_limit"]
    ch.queue_delete(dead)
