"""Reading a stream queue from an offset on a blocking connection, without ever nacking.

A stream queue refuses ``basic.nack`` and ``basic.reject`` with a *connection* error (540
NOT_IMPLEMENTED): every channel of the connection goes. pika's ``BlockingChannel.consume``
generator nacks, on close, each delivery still in its buffer, and a stream keeps
delivering up to the prefetch past the record a reader stops at (or after the silence it
stops on): a reader that stops early would take the whole client connection down with it.
This reader consumes with a callback and cancels with ``basic_cancel``, which hands the
deliveries that arrived meanwhile back instead of nacking them; unacknowledged deliveries
of a stream are simply released with the channel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def read_stream(
    conn: Any,
    name: str,
    offset: Any,
    *,
    prefetch: int,
    idle: float,
    until: Callable[[Any, bytes], bool] | None = None,
) -> tuple[list[tuple[Any, bytes]], bool]:
    """``(props, body)`` of each record from ``offset``, in order, each acked as read, up
    to the first for which ``until(props, body)`` is true (not included), or until the
    stream stays silent for ``idle`` seconds. Returns them and whether ``until`` ended the
    read (False: the silence did). A broker refusal (no such stream) is raised as pika's
    ``ChannelClosedByBroker``; the connection stays usable."""
    ch = conn.channel()
    records: list[tuple[Any, bytes]] = []
    ended = [False]
    last = [time.monotonic()]

    def on_delivery(channel: Any, method: Any, props: Any, body: bytes) -> None:
        if ended[0]:
            return  # past the end: released with the channel, never nacked
        channel.basic_ack(method.delivery_tag)
        last[0] = time.monotonic()
        if until is not None and until(props, body):
            ended[0] = True
        else:
            records.append((props, body))

    try:
        ch.basic_qos(prefetch_count=prefetch)
        tag = ch.basic_consume(name, on_delivery, arguments={"x-stream-offset": offset})
        while not ended[0]:
            left = idle - (time.monotonic() - last[0])
            if left <= 0:
                break
            conn.process_data_events(time_limit=left)
        ch.basic_cancel(tag)  # deliveries that arrive until the broker's CancelOk: dropped
    finally:
        if ch.is_open:
            ch.close()
    return records, ended[0]
