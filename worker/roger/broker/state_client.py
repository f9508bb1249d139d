"""Partition-wide state seen from a client (``roger.Client``, the CLI): blocking pika.

Every function takes an open ``BlockingConnection`` and opens the channels it needs, so
the client keeps one connection and a refusal (which closes a channel) never breaks it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pika
import pika.exceptions

from roger.broker.stream_reads import read_stream
from roger.core import naming
from roger.core import state as st
from roger.core import worker_status as ws

PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")
READ_IDLE = 0.3  # seconds of silence that end a read of a stream's recent records
# ... and before its first record: a loaded broker was seen taking more than READ_IDLE to
# send the first chunk of a workers stream (a live worker read as none). An empty read
# costs this much.
READ_FIRST_IDLE = 3.0


class DuplicateJob(Exception):
    """``enqueue`` refused: a job with the same queue_key is queued or running."""

    def __init__(self, partition: str, queue_key: str, holder: str | None = None) -> None:
        super().__init__(f"queue_key {queue_key!r} of partition {partition!r} is held")
        self.partition = partition
        self.queue_key = queue_key
        self.holder = holder


def issuer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _confirm_channel(conn: Any) -> Any:
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def publish_control(conn: Any, partition: str, ev: st.ControlEvent) -> None:
    """Publish one control event, confirmed (raises if the broker did not take it)."""
    ch = _confirm_channel(conn)
    try:
        name = naming.control_stream_name(partition)
        ch.queue_declare(name, durable=True, arguments=st.control_stream_arguments())
        ch.basic_publish("", name, st.encode(ev), PERSISTENT, mandatory=True)
    finally:
        if ch.is_open:
            ch.close()


def cancel(conn: Any, partition: str, job_id: str) -> None:
    """Cancel a job cluster-wide: queued jobs are skipped, running ones killed. The event
    waits in the control stream for ``HORIZON`` (7 days) if no worker runs now."""
    publish_control(conn, partition, st.cancel(job_id, time.time(), issuer()))


def set_paused(conn: Any, partition: str, queue: str, paused: bool) -> None:
    """The pause stream of the queue gets the new state (its last event is the state), then
    the control stream gets a notice so that workers subscribe to a new pause stream."""
    naming.validate_name("queue", queue)
    now = time.time()
    ev = st.pause(queue, now, issuer()) if paused else st.resume(queue, now, issuer())
    ch = _confirm_channel(conn)
    try:
        name = naming.pause_stream_name(partition, queue)
        ch.queue_declare(name, durable=True, arguments=st.pause_stream_arguments())
        ch.basic_publish("", name, st.encode(ev), PERSISTENT, mandatory=True)
    finally:
        if ch.is_open:
            ch.close()
    publish_control(conn, partition, ev)


@contextlib.contextmanager
def _key_locked(conn: Any, partition: str, key: str) -> Iterator[Any]:
    """Hold the key's lock and yield a confirm channel to work on (``TimeoutError`` after
    ``QUEUE_KEY_LOCK_WAIT``).

    Whoever reads or writes a key's token holds it: a token taken out to be read is not
    counted by ``x-max-length``, so a take must never run meanwhile.
    """
    lock = naming.queue_key_lock_name(partition, key)
    what = f"queue key {key!r} of {partition!r}"
    with exclusive_lock(conn, lock, st.QUEUE_KEY_LOCK_WAIT, what) as ch:
        yield ch


@contextlib.contextmanager
def exclusive_lock(conn: Any, lock: str, wait: float, what: str) -> Iterator[Any]:
    """Hold ``lock`` (an exclusive queue: it dies with the connection) and yield a confirm
    channel to work on. Busy: retried with a short random backoff for ``wait`` seconds,
    then ``TimeoutError``."""
    deadline = time.monotonic() + wait
    pause = 0.005
    while True:
        ch = conn.channel()
        try:
            ch.queue_declare(lock, exclusive=True, auto_delete=False)
            break
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 405:  # RESOURCE_LOCKED: someone else reads or writes it
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} stayed locked for {wait}s")
        time.sleep(random.uniform(0, pause))
        pause = min(pause * 2, 0.1)
    try:
        ch.confirm_delivery()
        yield ch
    finally:
        if conn.is_open:  # a closed connection freed the lock with it
            if not ch.is_open:
                ch = conn.channel()
            ch.queue_delete(lock)
            ch.close()


def _token_props(job_id: str, expiration: float | None) -> Any:
    return pika.BasicProperties(
        delivery_mode=2,
        content_type="application/json",
        message_id=job_id,
        expiration=None if expiration is None else str(max(1, int(expiration * 1000))),
    )


def take_queue_key(
    conn: Any,
    partition: str,
    key: str,
    job_id: str,
    queue: str,
    *,
    pending_hold: float = st.QUEUE_KEY_PENDING_HOLD,
) -> bool:
    """Atomic test-and-set of a queue key: True if taken for ``job_id``, False if held.

    The key queue is classic with ``x-max-length: 1`` and ``reject-publish``: of concurrent
    publishers exactly one is confirmed, the others are nacked. The token expires after
    ``pending_hold`` seconds unless ``hold_queue_key`` is called once the job is published.
    """
    name = naming.queue_key_queue_name(partition, key)
    token = st.queue_key_token(job_id, queue, time.time())
    with _key_locked(conn, partition, key) as ch:
        ch.queue_declare(name, durable=True, arguments=st.queue_key_arguments())
        try:
            ch.basic_publish("", name, token, _token_props(job_id, pending_hold), mandatory=True)
        except pika.exceptions.NackError:
            return False
        return True


def hold_queue_key(conn: Any, partition: str, key: str, job_id: str) -> bool:
    """The job of a key taken with ``take_queue_key`` is published: hold the key until the
    job leaves the partition (at most ``QUEUE_KEY_MAX_HOLD``). False, and nothing taken,
    when the token is not ``job_id``'s any more (the job already left and a worker freed
    the key, or the pending hold ran out first)."""
    name = naming.queue_key_queue_name(partition, key)
    with _key_locked(conn, partition, key) as ch:
        ch.queue_declare(name, durable=True, arguments=st.queue_key_arguments())
        method, props, body = ch.basic_get(name, auto_ack=False)
        if method is None:
            ch.queue_delete(name, if_empty=True)
            return False
        if props.message_id != job_id:
            ch.basic_nack(method.delivery_tag, requeue=True)
            return False
        # under the lock nobody takes the key between these two
        ch.basic_ack(method.delivery_tag)
        ch.basic_publish("", name, body, _token_props(job_id, None), mandatory=True)
        return True


def release_queue_key(conn: Any, partition: str, key: str, job_id: str | None = None) -> bool:
    """Free a key (only if held by ``job_id`` when given). True if it is free afterwards.

    The client uses it when publishing the job failed after the key was taken; people use
    it (``job_id=None``) to free a key by hand.
    """
    name = naming.queue_key_queue_name(partition, key)
    with _key_locked(conn, partition, key) as ch:
        ch.queue_declare(name, durable=True, arguments=st.queue_key_arguments())
        method, props, _body = ch.basic_get(name, auto_ack=False)
        if method is not None:
            if job_id is not None and props.message_id != job_id:
                ch.basic_nack(method.delivery_tag, requeue=True)
                return False
            ch.basic_ack(method.delivery_tag)
        ch.queue_delete(name, if_empty=True)
        return True


def queue_key_holder(conn: Any, partition: str, key: str) -> str | None:
    """The job id holding ``key``, or None (reads the token under the key's lock)."""
    name = naming.queue_key_queue_name(partition, key)
    with _key_locked(conn, partition, key) as ch:
        ch.queue_declare(name, durable=True, arguments=st.queue_key_arguments())
        method, props, _body = ch.basic_get(name, auto_ack=False)
        if method is None:
            ch.queue_delete(name, if_empty=True)
            return None
        ch.basic_nack(method.delivery_tag, requeue=True)
        return str(props.message_id)


def _read_stream(conn: Any, name: str, offset: Any) -> list[bytes]:
    """Bodies from ``offset`` until the stream stays silent (``READ_IDLE``, or
    ``READ_FIRST_IDLE`` before the first record); none if there is no such stream."""
    try:
        records, _ended = read_stream(
            conn, name, offset, prefetch=1000, idle=READ_IDLE, first_idle=READ_FIRST_IDLE
        )
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        return []
    return [body for _props, body in records]


def is_paused(conn: Any, partition: str, queue: str) -> bool:
    """The queue's pause state: the last event of its pause stream (none: never paused)."""
    bodies = _read_stream(conn, naming.pause_stream_name(partition, queue), "last")
    events = []
    for b in bodies:
        try:
            events.append(st.decode(b))
        except st.InvalidEvent:
            continue
    return st.last_pause_state(events)


def paused_queues(conn: Any, partition: str, queues: Iterable[str]) -> list[str]:
    return [q for q in queues if is_paused(conn, partition, q)]


def status_records(conn: Any, partition: str) -> list[ws.WorkerStatus]:
    """The status records of the last ``HEARTBEAT_STALE`` seconds (every worker that ran
    then, stopping ones included)."""
    since = datetime.datetime.fromtimestamp(
        int(time.time() - ws.HEARTBEAT_STALE - 1), tz=datetime.UTC
    )
    records = []
    for body in _read_stream(conn, naming.workers_stream_name(partition), since):
        rec = ws.decode_status(body)
        if rec is not None:
            records.append(rec)
    return records


def live_workers(
    conn: Any, partition: str, records: list[ws.WorkerStatus] | None = None
) -> list[ws.WorkerStatus]:
    """Workers that published a status record recently, with their running jobs."""
    if records is None:
        records = status_records(conn, partition)
    return ws.live_workers(records, time.time())
