"""Buried jobs on the broker: file, read, replay and drop (blocking pika, one lock).

Workers bury into the bounded ``<p>-<q>.buried`` queue (Roger's, unchanged). Every verb
here first *files* that intake into the stream ``<p>-<q>.buried.log`` (each message
copied, confirmed, then acked: an interrupted filing leaves a copy that folds into the
same burial id), then reads the stream by offset, which consumes and reorders nothing.

A replay writes, for each job: its fresh copy into ``<p>-<q>.replaying`` (confirmed),
then a tombstone into the log (confirmed), then rejects the copy, which the broker moves
into the job's queue (at-least-once dead-lettering keeps it in ``.replaying`` until the
queue confirmed it). Every run first finishes what an interrupted one left in
``.replaying`` (tombstone if missing, then move), so a replay killed at any point loses
and duplicates nothing. One exclusive lock per partition queue serialises the verbs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from roger.broker.state_client import exclusive_lock
from roger.broker.stream_reads import read_stream
from roger.core import buried as b
from roger.core import naming, topology

# Publishes (queue, body, properties) and returns once the broker confirmed every one of
# them; raises if it did not. ``roger.Client`` pipelines them on its I/O thread.
PublishMany = Callable[[list[tuple[str, bytes, Any]]], None]
LOCK_WAIT = 30.0  # seconds to wait for another verb on the same queue
MARK = "mark"  # a record that tells a reader it has reached the end of the log
LOG_SILENCE = 30.0  # seconds without a record before a reader gives up on the log's end
BATCH = 200  # jobs filed, or copied, tombstoned and moved, together


@dataclass
class ReplayReport:
    replayed: list[b.BuriedJob] = field(default_factory=list)
    refused: list[tuple[b.BuriedJob, str]] = field(default_factory=list)
    recovered: int = 0  # copies an interrupted replay had left in ``.replaying``


def _props(headers: dict[str, Any], like: Any = None) -> Any:
    return pika.BasicProperties(
        delivery_mode=2,
        content_type="application/json",
        headers=headers,
        message_id=getattr(like, "message_id", None),
        type=getattr(like, "type", None),
        app_id=getattr(like, "app_id", None),
        timestamp=getattr(like, "timestamp", None),
    )


def blocking_publisher(ch: Any) -> PublishMany:
    """One confirmed publish after another on a confirm channel (slow: tests, scripts)."""

    def publish(items: list[tuple[str, bytes, Any]]) -> None:
        for queue, body, props in items:
            ch.basic_publish("", queue, body, props, mandatory=True)

    return publish


@contextmanager
def locked(conn: Any, partition: str, queue: str) -> Iterator[Any]:
    """The queue's buried-jobs lock, with its log declared, and a confirm channel."""
    naming.validate_name("queue", queue)
    lock = naming.buried_lock_name(partition, queue)
    with exclusive_lock(conn, lock, LOCK_WAIT, f"buried jobs of {partition}-{queue}") as ch:
        ch.queue_declare(
            naming.buried_log_name(partition, queue),
            durable=True,
            arguments=topology.buried_log_arguments(),
        )
        yield ch


def read_log(ch: Any, partition: str, queue: str) -> list[b.Record]:
    """Every record of the log, from its first offset to a marker written now (so the
    end is known exactly, never guessed from a silence)."""
    log = naming.buried_log_name(partition, queue)
    nonce = uuid.uuid4().hex
    ch.basic_publish("", log, b"", _props({b.RECORD: MARK, "x-roger-nonce": nonce}), mandatory=True)

    def is_my_mark(props: Any, _body: bytes) -> bool:
        headers = props.headers or {}
        return headers.get(b.RECORD) == MARK and headers.get("x-roger-nonce") == nonce

    records, ended = read_stream(
        ch.connection, log, "first", prefetch=500, idle=LOG_SILENCE, until=is_my_mark
    )
    if not ended:
        raise TimeoutError(f"the log {log} went silent before its end")
    out: list[b.Record] = []
    for props, body in records:
        headers = dict(props.headers or {})
        if headers.get(b.RECORD) == MARK:
            continue  # another reader's end
        out.append(
            b.Record(
                offset=int(headers.get("x-stream-offset", -1)),
                headers=headers,
                body=body,
                timestamp=float(props.timestamp) if props.timestamp else None,
            )
        )
    return out


def file_intake(ch: Any, publish: PublishMany, partition: str, queue: str, known: set[str]) -> int:
    """Move the ``.buried`` intake into the log, oldest first, a batch at a time (copies
    confirmed, then the batch acked); ``known`` are the burial ids the log holds or
    tombstoned (a copy of one is acked without a second record)."""
    intake = naming.buried_queue_name(partition, queue)
    log = naming.buried_log_name(partition, queue)
    filed = 0
    try:
        ch.queue_declare(intake, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0  # no intake (yet): nothing to file
        raise
    while True:
        last_tag, items = None, []
        for _ in range(BATCH):
            method, props, body = ch.basic_get(intake, auto_ack=False)
            if method is None:
                break
            last_tag = method.delivery_tag
            job = b.burial_record(-1, body, dict(props.headers or {}), props.timestamp)
            if job.burial_id not in known:
                headers = b.filing_headers(job, time.time())
                items.append((log, body, _props(headers, props)))
                known.add(job.burial_id)
        if last_tag is None:
            return filed
        publish(items)
        ch.basic_ack(last_tag, multiple=True)
        filed += len(items)


def jobs(
    conn: Any, partition: str, queue: str, publish: PublishMany | None = None
) -> list[b.BuriedJob]:
    """The queue's buried jobs, oldest first (after filing the intake)."""
    with locked(conn, partition, queue) as ch:
        return _filed_jobs(ch, publish or blocking_publisher(ch), partition, queue)


def _filed_jobs(ch: Any, publish: PublishMany, partition: str, queue: str) -> list[b.BuriedJob]:
    records = read_log(ch, partition, queue)
    live = b.fold(records)
    known = {j.burial_id for j in live} | b.tombstoned(records)
    if file_intake(ch, publish, partition, queue, known):
        live = b.fold(read_log(ch, partition, queue))
    return live


def _tombstones(partition: str, queue: str, bids: list[str], kind: str) -> list[Any]:
    log = naming.buried_log_name(partition, queue)
    now = time.time()
    return [(log, b"", _props(b.tombstone_headers(bid, kind, now))) for bid in bids]


def drop(
    conn: Any,
    partition: str,
    queue: str,
    selection: b.Selection,
    publish: PublishMany | None = None,
) -> list[b.BuriedJob]:
    """Tombstone the selected jobs (confirmed)."""
    with locked(conn, partition, queue) as ch:
        publish = publish or blocking_publisher(ch)
        chosen = b.select(_filed_jobs(ch, publish, partition, queue), selection)
        publish(_tombstones(partition, queue, [j.burial_id for j in chosen], b.DROPPED))
        return chosen


def replay(
    conn: Any,
    partition: str,
    queue: str,
    selection: b.Selection,
    *,
    publish: PublishMany | None = None,
    max_replays: int = b.MAX_REPLAYS,
    force: bool = False,
    dry_run: bool = False,
) -> ReplayReport:
    """Put the selected jobs back into their queue as fresh attempts (see the module)."""
    report = ReplayReport()
    main = naming.queue_name(partition, queue)
    staging = naming.replay_staging_name(partition, queue)
    with locked(conn, partition, queue) as ch:
        publish = publish or blocking_publisher(ch)
        ch.queue_declare(main, passive=True)  # 404 if the queue is gone: nothing moves
        ch.queue_declare(
            staging, durable=True, arguments=topology.replay_staging_arguments(partition, queue)
        )
        records = read_log(ch, partition, queue)
        done = b.tombstoned(records)
        if not dry_run:
            report.recovered = _move_staged(ch, publish, partition, queue, done)
        known = {j.burial_id for j in b.fold(records)} | done
        if file_intake(ch, publish, partition, queue, known):
            records = read_log(ch, partition, queue)
        # recovered copies were tombstoned after ``records`` was read: never twice
        live = [j for j in b.fold(records) if j.burial_id not in done]
        chosen = []
        for job in b.select(live, selection):
            refusal = b.replay_refusal(job, max_replays, force)
            if refusal is None:
                chosen.append(job)
            else:
                report.refused.append((job, refusal))
        if dry_run:
            report.replayed = chosen
            return report
        for start in range(0, len(chosen), BATCH):
            batch = chosen[start : start + BATCH]
            publish([_copy(partition, staging, job, time.time()) for job in batch])
            bids = [job.burial_id for job in batch]
            publish(_tombstones(partition, queue, bids, b.REPLAYED))
            done.update(bids)
            _move_staged(ch, publish, partition, queue, done)
            report.replayed.extend(batch)
    return report


def _copy(partition: str, staging: str, job: b.BuriedJob, now: float) -> Any:
    body, headers = b.replayed_message(job, now)
    props = pika.BasicProperties(
        delivery_mode=2,
        content_type="application/json",
        message_id=job.id,
        app_id=partition,
        type=job.name,
        timestamp=int(now),
        headers=headers,
    )
    return (staging, body, props)


def _move_staged(ch: Any, publish: PublishMany, partition: str, queue: str, done: set[str]) -> int:
    """Every copy in ``.replaying`` into the job's queue, its burial tombstoned first."""
    staging = naming.replay_staging_name(partition, queue)
    moved = 0
    while True:
        last_tag, missing = None, []
        for _ in range(BATCH):
            method, props, _body = ch.basic_get(staging, auto_ack=False)
            if method is None:
                break
            last_tag = method.delivery_tag
            bid = (props.headers or {}).get(b.BURIAL_ID)
            if isinstance(bid, str) and bid not in done:
                missing.append(bid)
                done.add(bid)
            moved += 1
        if last_tag is None:
            return moved
        publish(_tombstones(partition, queue, missing, b.REPLAYED))
        ch.basic_nack(last_tag, multiple=True, requeue=False)  # the broker moves them
