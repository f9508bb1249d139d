"""The worker's bookkeeping for one consumed queue and the jobs in flight."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from roger.core import naming
from roger.core.jobs import JobDefinition
from roger.core.message import JobMessage
from roger.core.settle import AckTracker

MAX_SUSPECTS = 10_000


@dataclass(slots=True, eq=False)
class QueueState:
    name: str  # Roger's queue name, e.g. "default"
    rabbit: str  # "<partition>-<queue>"
    max_workers: int
    children: list[Any] = field(default_factory=list)
    pending: deque[Task] = field(default_factory=deque)
    hook_backlog: deque[HookTask] = field(default_factory=deque)
    tracker: AckTracker = field(default_factory=AckTracker)
    channel: Any = None
    consumer_tag: str | None = None
    gen: int = -1
    warm: bool = False  # every first job process is ready: consuming may start
    want: bool = False  # consuming was asked for before the pool was warm
    pump_scheduled: bool = False  # a dispatch is due at the end of this loop turn
    # Jobs that were in a job process that died on its own with several jobs: each runs
    # once alone in the quarantine process (one slot) to find out which one kills it.
    suspects: dict[str, None] = field(default_factory=dict)
    suspect_pending: deque[Task] = field(default_factory=deque)
    quarantine: Any = None  # the one-slot ChildProc, started when a suspect arrives

    def suspect(self, job_id: str) -> None:
        self.suspects[job_id] = None
        while len(self.suspects) > MAX_SUSPECTS:  # bounded: forget the oldest
            del self.suspects[next(iter(self.suspects))]

    @classmethod
    def make(cls, partition: str, name: str, max_workers: int) -> QueueState:
        return cls(name=name, rabbit=naming.queue_name(partition, name), max_workers=max_workers)


@dataclass(slots=True, eq=False)
class Task:
    """A delivery being run by a child; ``settled`` once its outcome is decided."""

    key: int
    queue: QueueState
    tag: int
    gen: int
    msg: JobMessage
    body: bytes
    props: Any
    job: JobDefinition
    bury: bool  # a failure of this attempt is a burial (on_buried), not a retry
    skip_before: bool = False
    started: float = 0.0  # time.monotonic() at dispatch
    started_at: float = 0.0  # time.time() at dispatch
    settled: bool = False
    timer: Any = None

    def max_execution_time(self) -> float | None:
        return self.msg.max_execution_time or self.job.max_execution_time


@dataclass(slots=True, eq=False)
class HookTask:
    """on_error / on_buried of a job whose process died, run (state None) in another."""

    key: int
    queue: QueueState
    hook: str
    frame: bytes
