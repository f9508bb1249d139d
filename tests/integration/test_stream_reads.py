"""A reader that stops partway through a stream leaves the connection open
(roger.broker.stream_reads): a stream queue answers a nack with a connection error, and
pika's consume generator nacks what is left in its buffer when its channel closes. The
pause-state test failed that way under load (2026-12-02): the reader stopped on a silence
while the stream was still delivering, and the broker closed the connection (540). A first
fix that cancelled the consumer still failed 2 runs in 5 with both cores busy (pika
rejects what reaches a cancelled consumer); the reader now never cancels."""

from __future__ import annotations

from typing import Any

import pika
import pytest

from roger.broker import buried_store
from roger.broker.stream_reads import read_stream
from roger.core import naming, topology
from tests.integration.support import delete_queues

pytestmark = pytest.mark.integration


def _stream(conn: pika.BlockingConnection, name: str, bodies: list[bytes]) -> None:
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(name, durable=True, arguments={"x-queue-type": "stream"})
    for body in bodies:
        ch.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2))
    ch.close()


def test_stopping_before_the_end_of_a_stream_keeps_the_connection(
    unique_name: str, conn: pika.BlockingConnection
) -> None:
    name = f"{unique_name}.stream"
    bodies = [b"r%d" % i for i in range(300)]
    try:
        _stream(conn, name, bodies)  # all there before the read: 250 in flight past its end
        for _ in range(5):

            def at_50(_props: object, body: bytes) -> bool:
                return body == b"r50"

            records, ended = read_stream(conn, name, "first", prefetch=500, idle=5, until=at_50)
            assert ended and [body for _, body in records] == bodies[:50]
            assert conn.is_open
        # the silence ends a read too; the connection still serves every channel
        records, ended = read_stream(conn, name, "first", prefetch=100, idle=0.5)
        assert not ended and [body for _, body in records] == bodies
        assert conn.channel().queue_declare(name, passive=True).method.queue == name
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as missing:
            read_stream(conn, f"{name}.missing", "first", prefetch=10, idle=0.5)
        assert missing.value.reply_code == 404 and conn.is_open
    finally:
        delete_queues(conn, [name])


class _FilingMeanwhile:
    """A channel on which 300 records are filed right after each end marker, as a worker
    filing burials while someone reads the log."""

    def __init__(self, ch: Any, log: str) -> None:
        self._ch, self._log, self.connection = ch, log, ch.connection

    def basic_publish(self, *args: Any, **kwargs: Any) -> None:
        self._ch.basic_publish(*args, **kwargs)
        for i in range(300):
            self._ch.basic_publish("", self._log, b"%d" % i, pika.BasicProperties(headers={}))


def test_a_buried_log_read_while_burials_are_filed_keeps_the_connection(
    unique_name: str, conn: pika.BlockingConnection
) -> None:
    """The records filed after a reader's end marker reach it (its prefetch) but are not
    read, and do not close its connection; the next reader reads them."""
    partition, queue = unique_name, "default"
    log = naming.buried_log_name(partition, queue)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(log, durable=True, arguments=topology.buried_log_arguments())
    try:
        assert buried_store.read_log(_FilingMeanwhile(ch, log), partition, queue) == []
        assert conn.is_open
        assert len(buried_store.read_log(ch, partition, queue)) == 300
    finally:
        delete_queues(conn, [log])
