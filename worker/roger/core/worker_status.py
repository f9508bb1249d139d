"""Worker status records: what each worker says about itself on ``<p>.workers``.

Every worker publishes a record every ``HEARTBEAT_INTERVAL`` seconds to its partition's
``<p>.workers`` stream (``x-max-age`` 1 hour): its queues and slots, paused queues, running
jobs, retry levels, whether it is stopping. Readers (``roger info``, the client's admin
half, the operator's load reader) keep the latest record of each worker heard from within
``HEARTBEAT_STALE`` (``live_workers``) and learn the partition's queues and retry levels
from them (``learned_topology``). Pure: encoding, decoding and folding, no I/O. The other
partition-wide state (cancel, pause, keys) is ``roger.core.state``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

HEARTBEAT_INTERVAL: Final = 5.0  # seconds between worker status records
HEARTBEAT_STALE: Final = 3 * HEARTBEAT_INTERVAL  # a worker silent this long is gone
WORKERS_MAX_AGE: Final = "1h"
WORKERS_MAX_BYTES: Final = 50_000_000
WORKERS_SEGMENT_BYTES: Final = 1_000_000


def workers_stream_arguments() -> dict[str, Any]:
    return {
        "x-queue-type": "stream",
        "x-max-age": WORKERS_MAX_AGE,
        "x-max-length-bytes": WORKERS_MAX_BYTES,
        "x-stream-max-segment-size-bytes": WORKERS_SEGMENT_BYTES,
    }


@dataclass(frozen=True, slots=True)
class RunningJob:
    id: str
    name: str
    queue: str
    started_at: float
    execution_key: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    worker: str  # "host:pid"
    at: float
    queues: dict[str, int]  # queue -> max_workers
    paused: tuple[str, ...] = ()
    running: tuple[RunningJob, ...] = ()
    stopping: bool = False
    retry_levels: tuple[int, ...] | None = None  # None: a record from before they were sent


def status_view(st: WorkerStatus) -> dict[str, Any]:
    """A status record as plain data: what ``info`` shows and what the stream carries."""
    return {
        "worker": st.worker,
        "at": st.at,
        "queues": st.queues,
        "paused": list(st.paused),
        "running": [
            {
                "id": r.id,
                "name": r.name,
                "queue": r.queue,
                "started_at": r.started_at,
                "execution_key": r.execution_key,
            }
            for r in st.running
        ],
    }


def encode_status(st: WorkerStatus) -> bytes:
    record = {
        **status_view(st),
        "stopping": st.stopping,
        **({} if st.retry_levels is None else {"retry_levels": list(st.retry_levels)}),
    }
    return json.dumps(record, separators=(",", ":")).encode()


def decode_status(body: bytes) -> WorkerStatus | None:
    """A status record, or None for anything malformed (readers skip it)."""
    try:
        d = json.loads(body)
        return WorkerStatus(
            worker=str(d["worker"]),
            at=float(d["at"]),
            queues={str(k): int(v) for k, v in dict(d.get("queues") or {}).items()},
            paused=tuple(str(q) for q in d.get("paused") or ()),
            running=tuple(
                RunningJob(
                    id=str(r["id"]),
                    name=str(r["name"]),
                    queue=str(r["queue"]),
                    started_at=float(r["started_at"]),
                    execution_key=r.get("execution_key"),
                )
                for r in d.get("running") or ()
            ),
            stopping=bool(d.get("stopping", False)),
            retry_levels=(
                None if d.get("retry_levels") is None else tuple(int(s) for s in d["retry_levels"])
            ),
        )
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def learned_topology(
    records: Iterable[WorkerStatus],
) -> tuple[tuple[str, ...] | None, tuple[int, ...] | None]:
    """The partition's queues and retry levels as its workers report them (sorted unions),
    None for what no record tells."""
    queues: set[str] = set()
    levels: set[int] = set()
    any_levels = False
    for r in records:
        queues.update(r.queues)
        if r.retry_levels is not None:
            any_levels = True
            levels.update(r.retry_levels)
    return (
        tuple(sorted(queues)) if queues else None,
        tuple(sorted(levels)) if any_levels else None,
    )


def live_workers(records: Iterable[WorkerStatus], now: float) -> list[WorkerStatus]:
    """The latest record of each worker that is neither stale nor stopped."""
    latest: dict[str, WorkerStatus] = {}
    for r in records:
        if r.worker not in latest or r.at >= latest[r.worker].at:
            latest[r.worker] = r
    return sorted(
        (r for r in latest.values() if not r.stopping and now - r.at <= HEARTBEAT_STALE),
        key=lambda r: r.worker,
    )
