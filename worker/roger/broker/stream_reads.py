"""Reading a stream queue from an offset on a blocking connection, without ever nacking.

A stream queue refuses ``basic.nack`` and ``basic.reject`` with a *connection* error (540
NOT_IMPLEMENTED): every channel of the connection goes. pika's ``BlockingChannel.consume``
generator nacks, on close, each delivery still in its buffer, and a stream keeps
delivering up to the prefetch past the record a reader stops at (or after the silence it
stops on): a reader that stops early would take the whole client connection down with it.
A cancel does not help: pika rejects, too, the deliveries that were waiting to be handed
to a cancelled consumer and those that reach it before the broker's CancelOk. So this
reader never cancels: it consumes with a callback, stops acknowledging at its end, and
closes its channel with the consumer on. pika rejects nothing on a channel that is
closing, and a stream simply releases a closed channel's unacknowledged deliveries.
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
    first_idle: float | None = None,
) -> tuple[list[tuple[Any, bytes]], bool]:
    """``(props, body)`` of each record from ``offset``, in order, each acked as read, up
    to the first for which ``until(props, body)`` is true (not included), or until the
    stream stays silent for ``idle`` seconds (``first_idle`` before its first record: a
    busy broker can take seconds to send a stream's first chunk, then sends the rest at
    once). Returns them and whether ``until`` ended the read (False: the silence did). A
    broker refusal (no such stream) is raised as pika's ``ChannelClosedByBroker``; the
    connection stays usable."""
    ch = conn.channel()
    records: list[tuple[Any, bytes]] = []
    ended, stopped = [False], [False]
    last = [time.monotonic()]
    silence = [idle if first_idle is None else max(idle, first_idle)]

    def on_delivery(channel: Any, method: Any, props: Any, body: bytes) -> None:
        if stopped[0]:
            return  # past the end: released with the channel, never rejected
        channel.basic_ack(method.delivery_tag)
        last[0], silence[0] = time.monotonic(), idle
        if until is not None and until(props, body):
            ended[0] = stopped[0] = True
        else:
            records.append((props, body))

    try:
        ch.basic_qos(prefetch_count=prefetch)
        ch.basic_consume(name, on_delivery, arguments={"x-stream-offset": offset})
        if not records and not stopped[0]:
            last[0] = time.monotonic()  # the silence counts from the broker's ConsumeOk
        while not stopped[0]:
            left = silence[0] - (time.monotonic() - last[0])
            if left <= 0:
                break
            conn.process_data_events(time_limit=left)
    finally:
        stopped[0] = True
        _close_with_consumer_on(conn, ch)
    return records, ended[0]


def _close_with_consumer_on(conn: Any, ch: Any) -> None:
    """Close ``ch`` without cancelling its consumer first, as ``BlockingChannel.close``
    would (and reject what is waiting): the close goes to pika's channel underneath."""
    impl = ch._impl  # pika's own channel under the blocking wrapper
    if impl.is_open:
        impl.close()
    while not impl.is_closed and conn.is_open:
        conn.process_data_events(time_limit=0.05)
