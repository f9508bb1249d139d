"""Partition-wide state (cancel, pause, queue keys, execution keys): the pure parts.

All of it lives in RabbitMQ; this module holds what every reader and writer must agree on:
the control events and their validation, how a worker folds them into memory, and the
arguments of the state queues and streams. The worker status records (``<p>.workers``)
are ``roger.core.worker_status``.

Where the state lives (see ``roger.core.naming`` for the names):

- ``<p>.control`` (stream): ``cancel``, ``cancel_done`` and ``wait`` events. Workers read it
  from ``now - HORIZON`` and follow it live. Retention: ``x-max-age`` = ``HORIZON`` (7 days)
  and ``x-max-length-bytes``; folded state forgets entries older than ``HORIZON`` too, so a
  cancelled id is honoured for 7 days and then forgotten.
- ``<p>.pause.<queue>`` (stream, one per queue): the last event is the queue's state. Stream
  retention never removes the active segment, so the last event is never lost however old;
  concurrent pause/resume of one queue are ordered by the stream (last one wins).
- ``<p>.qkey.<digest>`` (classic durable queue, ``x-max-length: 1``,
  ``x-overflow: reject-publish``): holds one token (``message_id`` = the holder's job id)
  while the key is taken. A classic queue decides publishes one at a time, so exactly one
  of many concurrent publishers is confirmed (a quorum queue is *not* exact here: it
  admits several). But the limit counts ready messages only: a token taken out to be read
  does not count, so whoever reads or writes a token (take, hold, release, peek) first
  declares ``<p>.qkey.<digest>.lock``, an exclusive queue (others get ``RESOURCE_LOCKED``
  and retry; the broker frees it when its connection dies). A token is taken with a
  per-message TTL of ``QUEUE_KEY_PENDING_HOLD`` (a minute) and replaced by one without
  (the queue's ``x-message-ttl`` of ``QUEUE_KEY_MAX_HOLD``, 7 days, applies) once its job
  is published: a client that dies between taking a key and publishing its job leaves the
  key held for a minute, not days.
- ``<p>.xkey.<digest>`` (exclusive queue): declared by the worker connection that runs a job
  with that execution key; others get ``RESOURCE_LOCKED``; the broker frees it when the
  connection dies.
- ``<p>-execution-waiting-<key>`` (quorum queue, ``x-expires`` = ``HORIZON``): jobs whose
  execution key was busy.
- ``<p>.workers`` (stream, ``x-max-age`` 1 hour): worker status records for ``info``
  (``roger.core.worker_status``).
- ``<p>.checkpoint`` (stream): checkpoints, each the control stream folded up to an offset
  (header ``control-offset``). A worker starts from the last one and reads the control
  stream from that offset on, instead of replaying up to ``HORIZON`` of events; ready
  workers write one every ``CHECKPOINT_INTERVAL`` once ``CHECKPOINT_MIN_EVENTS`` events
  followed the newest. A cancel is honoured for ``HORIZON`` after it was issued: it is in
  the replayed tail or in the checkpoint, unless more than ``CONTROL_MAX_BYTES`` of events
  (about 2 million) were written after the newest checkpoint.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

HORIZON: Final = 7 * 24 * 3600  # seconds a cancel (and a wait notice) is remembered
QUEUE_KEY_MAX_HOLD: Final = HORIZON  # seconds after which a queue key frees itself
QUEUE_KEY_PENDING_HOLD: Final = 60.0  # seconds a key is held before its job is published
QUEUE_KEY_LOCK_WAIT: Final = 15.0  # seconds to wait for a queue key's lock before failing
# A worker freeing the key of a job that left waits longer for the key's lock than a client
# does: giving up leaves the key held for QUEUE_KEY_MAX_HOLD, and the lock's holder may be a
# client whose host vanished, whose exclusive lock queue the broker drops only once it
# notices its connection is silent (measured on 3.10: 186 s with the default AMQP heartbeat
# of 60 s, 16 s with 5 s).
QUEUE_KEY_RELEASE_PATIENCE: Final = 600.0
CONTROL_MAX_BYTES: Final = 200_000_000
CONTROL_SEGMENT_BYTES: Final = 1_000_000  # retention drops whole segments: keep them small
PAUSE_MAX_BYTES: Final = 1_000_000
PAUSE_SEGMENT_BYTES: Final = 100_000
CHECKPOINT_MAX_BYTES: Final = 100_000_000
CHECKPOINT_SEGMENT_BYTES: Final = 10_000_000
CHECKPOINT_INTERVAL: Final = 60.0  # seconds between a worker's looks at whether to write one
CHECKPOINT_MIN_EVENTS: Final = 1_000  # events after the newest checkpoint before a new one
MAX_ID: Final = 128
MAX_KEY: Final = 1024
MAX_BY: Final = 200

_QUEUE_RE: Final = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")

EventType = Literal["cancel", "cancel_done", "wait", "pause", "resume"]
CONTROL_TYPES: Final[tuple[str, ...]] = ("cancel", "cancel_done", "wait")
PAUSE_TYPES: Final[tuple[str, ...]] = ("pause", "resume")


class InvalidEvent(ValueError):
    """A control event that no reader may act on (it is skipped and logged)."""


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """``cancel`` / ``cancel_done`` carry ``job_id``; ``wait`` carries ``key`` (an execution
    key that has jobs waiting); ``pause`` / ``resume`` carry ``queue``."""

    type: EventType
    at: float  # time.time() of the writer
    job_id: str | None = None
    key: str | None = None
    queue: str | None = None
    by: str | None = None  # who issued it (host/pid, user), for people reading the stream


def cancel(job_id: str, at: float, by: str | None = None) -> ControlEvent:
    return validate(ControlEvent("cancel", at, job_id=job_id, by=by))


def cancel_done(job_id: str, at: float, by: str | None = None) -> ControlEvent:
    return validate(ControlEvent("cancel_done", at, job_id=job_id, by=by))


def wait(key: str, at: float) -> ControlEvent:
    return validate(ControlEvent("wait", at, key=key))


def pause(queue: str, at: float, by: str | None = None) -> ControlEvent:
    return validate(ControlEvent("pause", at, queue=queue, by=by))


def resume(queue: str, at: float, by: str | None = None) -> ControlEvent:
    return validate(ControlEvent("resume", at, queue=queue, by=by))


def _str(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise InvalidEvent(f"{what} must be a string of 1-{limit} characters")
    return value


def validate(ev: ControlEvent) -> ControlEvent:
    if ev.type not in CONTROL_TYPES + PAUSE_TYPES:
        raise InvalidEvent(f"unknown event type {ev.type!r}")
    if not isinstance(ev.at, int | float) or isinstance(ev.at, bool) or not math.isfinite(ev.at):
        raise InvalidEvent("at must be a finite number")
    if ev.type in ("cancel", "cancel_done"):
        _str(ev.job_id, "job_id", MAX_ID)
    elif ev.type == "wait":
        _str(ev.key, "key", MAX_KEY)
    elif not isinstance(ev.queue, str) or not _QUEUE_RE.match(ev.queue):
        raise InvalidEvent("queue must be a valid queue name")
    if ev.by is not None:
        _str(ev.by, "by", MAX_BY)
    return ev


def encode(ev: ControlEvent) -> bytes:
    data: dict[str, Any] = {"type": ev.type, "at": ev.at}
    for name in ("job_id", "key", "queue", "by"):
        value = getattr(ev, name)
        if value is not None:
            data[name] = value
    return json.dumps(data, separators=(",", ":")).encode()


def decode(body: bytes) -> ControlEvent:
    """Parse and validate; raises ``InvalidEvent``. Unknown fields are ignored."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidEvent(f"not JSON: {str(exc)[:100]}") from None
    if not isinstance(data, dict):
        raise InvalidEvent("not a JSON object")
    kind = data.get("type")
    if kind not in CONTROL_TYPES + PAUSE_TYPES:
        raise InvalidEvent(f"unknown event type {kind!r}")
    return validate(
        ControlEvent(
            kind,
            data.get("at"),  # type: ignore[arg-type]  # checked by validate
            job_id=data.get("job_id"),
            key=data.get("key"),
            queue=data.get("queue"),
            by=data.get("by"),
        )
    )


# -- folding --------------------------------------------------------------------------


@dataclass
class ControlState:
    """What a worker knows from ``<p>.control``: bounded by ``horizon`` seconds.

    ``cancelled`` and ``done`` map job id -> time of the event; ``waiting`` maps an execution
    key -> last time a job was parked for it. ``expire`` drops entries older than the
    horizon (the stream forgets them at the same age), so memory is bounded by the events
    of the last ``horizon`` seconds.
    """

    horizon: float = HORIZON
    cancelled: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    waiting: dict[str, float] = field(default_factory=dict)

    def apply(self, ev: ControlEvent, now: float) -> bool:
        """Fold one event; True if it is new and recent enough to matter."""
        if ev.at < now - self.horizon:
            return False
        if ev.type == "cancel":
            assert ev.job_id is not None
            new = ev.job_id not in self.cancelled
            self.cancelled[ev.job_id] = max(ev.at, self.cancelled.get(ev.job_id, ev.at))
            return new
        if ev.type == "cancel_done":
            assert ev.job_id is not None
            new = ev.job_id not in self.done
            self.done[ev.job_id] = ev.at
            return new
        if ev.type == "wait":
            assert ev.key is not None
            self.waiting[ev.key] = max(ev.at, self.waiting.get(ev.key, ev.at))
            return True
        return False

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self.cancelled

    def cancel_handled(self, job_id: str) -> bool:
        """``on_cancel`` already ran for this job somewhere (a redelivery must not rerun it)."""
        return job_id in self.done

    def expire(self, now: float) -> int:
        cutoff = now - self.horizon
        dropped = 0
        for table in (self.cancelled, self.done, self.waiting):
            old = [k for k, at in table.items() if at < cutoff]
            for k in old:
                del table[k]
            dropped += len(old)
        return dropped


@dataclass
class PauseState:
    """Per queue, the last ``pause``/``resume`` event read from its pause stream wins."""

    paused: dict[str, bool] = field(default_factory=dict)

    def apply(self, ev: ControlEvent) -> bool:
        """Fold one event; True if the queue's state changed."""
        if ev.type not in PAUSE_TYPES or ev.queue is None:
            return False
        value = ev.type == "pause"
        changed = self.paused.get(ev.queue, False) != value
        self.paused[ev.queue] = value
        return changed

    def is_paused(self, queue: str) -> bool:
        return self.paused.get(queue, False)

    def paused_queues(self) -> list[str]:
        return sorted(q for q, p in self.paused.items() if p)


def last_pause_state(events: Iterable[ControlEvent]) -> bool:
    """The state a pause stream's events (in stream order) leave the queue in."""
    paused = False
    for ev in events:
        if ev.type in PAUSE_TYPES:
            paused = ev.type == "pause"
    return paused


# -- queue and stream arguments ---------------------------------------------------------


def control_stream_arguments() -> dict[str, Any]:
    return {
        "x-queue-type": "stream",
        "x-max-age": f"{HORIZON // 86400}D",
        "x-max-length-bytes": CONTROL_MAX_BYTES,
        "x-stream-max-segment-size-bytes": CONTROL_SEGMENT_BYTES,
    }


def pause_stream_arguments() -> dict[str, Any]:
    """No max-age: the last event must outlive any retention (the active segment stays)."""
    return {
        "x-queue-type": "stream",
        "x-max-length-bytes": PAUSE_MAX_BYTES,
        "x-stream-max-segment-size-bytes": PAUSE_SEGMENT_BYTES,
    }


def checkpoint_stream_arguments() -> dict[str, Any]:
    """No max-age: the last checkpoint must outlive any retention (the active segment stays)."""
    return {
        "x-queue-type": "stream",
        "x-max-length-bytes": CHECKPOINT_MAX_BYTES,
        "x-stream-max-segment-size-bytes": CHECKPOINT_SEGMENT_BYTES,
    }


def queue_key_arguments() -> dict[str, Any]:
    """Classic on purpose: its length limit is exact under concurrent publishers."""
    return {
        "x-queue-type": "classic",
        "x-max-length": 1,
        "x-overflow": "reject-publish",
        "x-message-ttl": QUEUE_KEY_MAX_HOLD * 1000,
        "x-expires": (QUEUE_KEY_MAX_HOLD + 3600) * 1000,
    }


def waiting_queue_arguments() -> dict[str, Any]:
    """Durable quorum queue that disappears when unused for ``HORIZON``.

    Unused means: not declared (workers re-declare it on every park and sweep) and not read.
    """
    return {"x-queue-type": "quorum", "x-expires": HORIZON * 1000}


# -- checkpoints ----------------------------------------------------------------------


def encode_checkpoint(control: ControlState) -> bytes:
    """The folded control state, compressed (the caller records the offset it covers)."""
    data = {
        "v": 1,
        "cancelled": control.cancelled,
        "done": control.done,
        "waiting": control.waiting,
    }
    return zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 6)


def decode_checkpoint(body: bytes) -> list[ControlEvent]:
    """The events that rebuild a checkpoint's state (fold them with ``ControlState.apply``).

    Raises ``InvalidEvent`` for anything malformed (the reader then replays instead)."""
    try:
        data = json.loads(zlib.decompress(body))
        tables = [(kind, data[name]) for kind, name in _CHECKPOINT_TABLES]
    except (ValueError, zlib.error, KeyError, TypeError, RecursionError) as exc:
        raise InvalidEvent(f"not a checkpoint: {str(exc)[:100]}") from None
    events = []
    for kind, table in tables:
        if not isinstance(table, dict):
            raise InvalidEvent(f"checkpoint table {kind} is not an object")
        for name, at in table.items():
            if kind == "wait":
                events.append(validate(ControlEvent("wait", at, key=name)))
            else:
                events.append(validate(ControlEvent(kind, at, job_id=name)))
    return events


_CHECKPOINT_TABLES: Final[tuple[tuple[EventType, str], ...]] = (
    ("cancel", "cancelled"),
    ("cancel_done", "done"),
    ("wait", "waiting"),
)


# -- queue key tokens ---------------------------------------------------------------------


def queue_key_token(job_id: str, queue: str, at: float) -> bytes:
    return json.dumps({"job_id": job_id, "queue": queue, "at": at}).encode()
