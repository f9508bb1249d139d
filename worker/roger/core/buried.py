"""Buried jobs as records: what a buried job is, which ones a filter selects, and what a
replay or a drop writes. Pure; ``roger.broker.buried_store`` does the I/O.

Buried jobs are kept in a stream per partition queue (``<p>-<q>.buried.log``, see
``docs/admin.md``): every record is read by offset, never consumed, so listing changes
nothing. A record is a burial (the job's body and the worker's burial headers) or a
tombstone naming a burial that was replayed or dropped. ``fold`` turns the records into
the buried jobs still there, oldest first.

A burial is known by its *burial id*: ``<job id>/<retry_count>/<replayed_count>``. The
same attempt buried twice (a worker died between the broker's confirm and its ack, or a
filing from the legacy ``.buried`` queue was interrupted) gives one id, so the copies
fold into one job.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from roger.core.lifecycle import BURIED_DROPPED, LifecycleEvent
from roger.core.message import InvalidMessage, JobMessage, decode, encode

RECORD: Final = "x-roger-record"  # "burial" or "tombstone"
BURIAL: Final = "burial"
TOMBSTONE: Final = "tombstone"
BURIAL_ID: Final = "x-roger-burial-id"
TOMBSTONE_KIND: Final = "x-roger-tombstone"  # "replayed" or "dropped"
REPLAYED: Final = "replayed"
DROPPED: Final = "dropped"
REPLAYED_AT: Final = "x-roger-replayed-at"  # epoch seconds of the last replay
REPLAYED_COUNT: Final = "x-roger-replayed-count"
BURIED_AT: Final = "x-roger-buried-at"
BURIED_REASON: Final = "x-roger-buried-reason"
ERROR_KIND: Final = "x-roger-error-kind"
ERROR_MESSAGE: Final = "x-roger-error-message"
STACKTRACE: Final = "x-roger-stacktrace"
# A job replayed this many times is refused unless forced: it keeps failing.
MAX_REPLAYS: Final = 3
# Headers a replayed job carries through its retries, so a later burial still knows.
CARRIED: Final = (REPLAYED_AT, REPLAYED_COUNT)


def _int(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _seconds(value: Any) -> float | None:
    """A header timestamp (an integer, or a datetime as pika reads one) as epoch seconds."""
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if type(value) in (int, float):
        return float(value)
    return None


def _str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value if isinstance(value, str) else None


def burial_id(job_id: str, retry_count: int, replayed_count: int) -> str:
    return f"{job_id}/{retry_count}/{replayed_count}"


def fallback_burial_id(body: bytes) -> str:
    """A burial whose body is no job (never written by a worker): its content's digest."""
    return "sha256:" + hashlib.sha256(body).hexdigest()[:32]


def carried_headers(headers: Any) -> dict[str, Any]:
    """The replay stamps of a delivery, to be kept on its retry or burial."""
    if not isinstance(headers, Mapping):
        return {}
    return {k: headers[k] for k in CARRIED if type(headers.get(k)) is int}


@dataclass(frozen=True, slots=True)
class BuriedJob:
    """One buried job as ``roger buried list/show`` shows it."""

    burial_id: str
    offset: int
    id: str
    name: str
    queue: str
    args: Any
    error_kind: str | None
    error_message: str | None
    reason: str | None
    stacktrace: str | None
    attempts: int  # retry_count + 1
    buried_at: float | None
    replayed_count: int
    replayed_at: float | None
    body: bytes
    headers: Mapping[str, Any]

    def summary(self) -> dict[str, Any]:
        """What ``list`` prints: JSON-able, without the body or stack trace."""
        return {
            "id": self.id,
            "job": self.name,
            "queue": self.queue,
            "error_kind": self.error_kind,
            "error_message": self.error_message,
            "reason": self.reason,
            "attempts": self.attempts,
            "buried_at": _iso(self.buried_at),
            "replayed_count": self.replayed_count,
        }

    def detail(self) -> dict[str, Any]:
        """What ``show`` prints: the summary, the args, the stack trace and the history."""
        out = self.summary()
        out.update(
            burial_id=self.burial_id,
            args=self.args,
            stacktrace=self.stacktrace,
            history=history(self),
        )
        return out


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).isoformat()


def history(job: BuriedJob) -> list[str]:
    """The attempts as far as the record tells them (Roger keeps no more)."""
    out = []
    if job.replayed_count:
        out.append(f"replayed {job.replayed_count} time(s), last at {_iso(job.replayed_at)}")
    out.append(f"{job.attempts} attempt(s) since, the last failed with {job.error_kind}")
    if job.reason:
        out.append(f"buried: {job.reason} at {_iso(job.buried_at)}")
    return out


def burial_record(
    offset: int, body: bytes, headers: Mapping[str, Any], timestamp: float | None
) -> BuriedJob:
    """A burial as read from the log (or the legacy queue: ``offset`` is then -1)."""
    try:
        msg: JobMessage | None = decode(body)
    except InvalidMessage:
        msg = None
    replayed_count = _int(headers.get(REPLAYED_COUNT))
    given = _str(headers.get(BURIAL_ID))
    if msg is not None:
        bid = given or burial_id(msg.id, msg.retry_count, replayed_count)
    else:
        bid = given or fallback_burial_id(body)
    buried_at = _seconds(headers.get(BURIED_AT)) or timestamp
    return BuriedJob(
        burial_id=bid,
        offset=offset,
        id=msg.id if msg else bid,
        name=msg.name if msg else "",
        queue=msg.queue if msg else "",
        args=msg.args if msg else None,
        error_kind=_str(headers.get(ERROR_KIND)),
        error_message=_str(headers.get(ERROR_MESSAGE)),
        reason=_str(headers.get(BURIED_REASON)),
        stacktrace=_str(headers.get(STACKTRACE)),
        attempts=(msg.retry_count + 1) if msg else 0,
        buried_at=buried_at,
        replayed_count=replayed_count,
        replayed_at=_seconds(headers.get(REPLAYED_AT)),
        body=body,
        headers=dict(headers),
    )


def filing_headers(job: BuriedJob, filed_at: float) -> dict[str, Any]:
    """Headers of a burial written to the log: the burial's own, its id and time."""
    out = dict(job.headers)
    out.update({RECORD: BURIAL, BURIAL_ID: job.burial_id})
    out.setdefault(BURIED_AT, int(job.buried_at if job.buried_at is not None else filed_at))
    return out


def tombstone_headers(bid: str, kind: str, at: float) -> dict[str, Any]:
    return {RECORD: TOMBSTONE, BURIAL_ID: bid, TOMBSTONE_KIND: kind, "x-roger-at": int(at)}


@dataclass(frozen=True, slots=True)
class Record:
    """One record of the log: its offset, headers and body."""

    offset: int
    headers: Mapping[str, Any]
    body: bytes
    timestamp: float | None = None


def fold(records: Iterable[Record]) -> list[BuriedJob]:
    """The buried jobs still there, oldest first: burials less tombstones, one per id."""
    live: dict[str, BuriedJob] = {}
    gone: set[str] = set()
    for r in records:
        kind = _str(r.headers.get(RECORD))
        if kind == TOMBSTONE:
            bid = _str(r.headers.get(BURIAL_ID))
            if bid is not None:
                gone.add(bid)
                live.pop(bid, None)
            continue
        job = burial_record(r.offset, r.body, r.headers, r.timestamp)
        if job.burial_id not in gone and job.burial_id not in live:
            live[job.burial_id] = job
    return list(live.values())


def tombstoned(records: Iterable[Record]) -> set[str]:
    return {
        bid
        for r in records
        if _str(r.headers.get(RECORD)) == TOMBSTONE
        and (bid := _str(r.headers.get(BURIAL_ID))) is not None
    }


@dataclass(frozen=True, slots=True)
class Selection:
    """``--id`` (any of them), ``--queue``, ``--job``, ``--error``; ``all_`` for ``--all``."""

    ids: tuple[str, ...] = ()
    queue: str | None = None
    job: str | None = None
    error: str | None = None
    all_: bool = True

    def matches(self, job: BuriedJob) -> bool:
        if self.ids and job.id not in self.ids and job.burial_id not in self.ids:
            return False
        if self.queue is not None and job.queue != self.queue:
            return False
        if self.job is not None and job.name != self.job:
            return False
        return self.error is None or job.error_kind == self.error


def select(jobs: Iterable[BuriedJob], selection: Selection) -> list[BuriedJob]:
    """The jobs a verb acts on; nothing unless ``--all`` or some ``--id`` was given."""
    if not selection.all_ and not selection.ids:
        return []
    return [j for j in jobs if selection.matches(j)]


def find(jobs: Sequence[BuriedJob], ident: str) -> BuriedJob | None:
    """``show ID``: by job id (the newest burial of it) or by burial id."""
    for job in reversed(jobs):
        if ident in (job.id, job.burial_id):
            return job
    return None


def replay_refusal(job: BuriedJob, max_replays: int, force: bool) -> str | None:
    """Why a job may not be replayed, or None."""
    if not job.name:
        return "its body is not a job"
    if job.replayed_count >= max_replays and not force:
        return f"replayed {job.replayed_count} times already (--force to replay anyway)"
    return None


def replayed_message(job: BuriedJob, now: float) -> tuple[bytes, dict[str, Any]]:
    """Body and headers of the fresh attempt: ``retry_count`` 0, the replay stamped, the
    burial id kept so an interrupted replay can tell it was made."""
    msg = replace(decode(job.body), retry_count=0)
    headers = {
        REPLAYED_AT: int(now),
        REPLAYED_COUNT: job.replayed_count + 1,
        BURIAL_ID: job.burial_id,
    }
    return encode(msg), headers


def as_json(jobs: Iterable[BuriedJob]) -> str:
    return json.dumps([j.summary() for j in jobs], indent=2, default=str)


def buried_dropped_event(
    partition: str, queue: str, props: Any, body: bytes, at: float
) -> LifecycleEvent:
    """What observers (metrics, Events) learn of a buried job dropped at the bound."""
    headers = getattr(props, "headers", None) or {}
    job = burial_record(-1, body, headers, None)
    kind = _str(headers.get(ERROR_KIND))
    return LifecycleEvent(
        hook=BURIED_DROPPED,
        partition=partition,
        queue=queue,
        job_id=job.id,
        job_name=job.name or "?",
        retry_count=max(job.attempts - 1, 0),
        at=at,
        error=(kind, _str(headers.get(ERROR_MESSAGE)) or "") if kind else None,
    )
