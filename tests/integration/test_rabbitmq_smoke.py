"""The broker is real: a persistent message round-trips a quorum queue with confirms."""

from __future__ import annotations

import pika
import pytest

pytestmark = pytest.mark.integration


def test_persistent_message_round_trips_quorum_queue(amqp_url: str, unique_name: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        declared = ch.queue_declare(unique_name, durable=True, arguments={"x-queue-type": "quorum"})
        assert declared.method.message_count == 0
        ch.basic_publish(
            "",
            unique_name,
            b'{"hello": 1}',
            mandatory=True,
            properties=pika.BasicProperties(delivery_mode=2, message_id="m1"),
        )
        method, props, body = ch.basic_get(unique_name, auto_ack=False)
        assert body == b'{"hello": 1}' and props.delivery_mode == 2 and props.message_id == "m1"
        # Not acked yet: rejecting it puts it back, then ack removes it for good.
        ch.basic_nack(method.delivery_tag, requeue=True)
        method, _, _ = ch.basic_get(unique_name, auto_ack=False)
        assert method is not None
        ch.basic_ack(method.delivery_tag)
        assert ch.queue_declare(unique_name, passive=True).method.message_count == 0
        ch.queue_delete(unique_name)
    finally:
        conn.close()
