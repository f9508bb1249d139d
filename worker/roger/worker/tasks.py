"""The worker's bookkeeping for one consumed queue and the jobs in flight."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from roger.core import naming
from roger.core.fate import Error, Happened, JobFacts
from roger.core.hooks import HookName
from roger.core.jobs import JobDefinition
from roger.core.lifecycle import LifecycleEvent
from roger.core.message import JobMessage
from roger.worker.ledger import Epoch

MAX_SUSPECTS = 10_000


@dataclass(slots=True, eq=False)
class QueueState:
    partition: str
    name: str  # Roger's queue name, e.g. "default"
    rabbit: str  # "<partition>-<queue>"
    max_workers: int
    children: list[Any] = field(default_factory=list)  # its ChildProcs
    pending: deque[Task] = field(default_factory=deque)
    hook_backlog: deque[HookTask] = field(default_factory=deque)
    epoch: Epoch | None = None  # the consumer channel (kept across pauses)
    consumer_tag: str | None = None
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
        rabbit = naming.queue_name(partition, name)
        return cls(partition=partition, name=name, rabbit=rabbit, max_workers=max_workers)


@dataclass(slots=True, eq=False)
class Task:
    """A delivery being run by a child; ``settled`` once its outcome is decided.

    ``reported``: the outcome its job process told while the job's own hooks (after_run,
    on_error, on_buried) still run there. The outcome is carried out only once they are
    done, so that a worker dying meanwhile leaves the job unsettled (run again: the crash
    explains it) rather than settled with its hooks never run."""

    key: int
    queue: QueueState
    tag: int
    epoch: Epoch  # the channel it came on: acked there or not at all
    msg: JobMessage
    body: bytes
    props: Any
    job: JobDefinition
    facts: JobFacts
    failure_hook: HookName  # the hook a failure of this attempt runs in the job process
    skip_before: bool = False
    started: float = 0.0  # time.monotonic() at dispatch
    started_at: float = 0.0  # time.time() at dispatch
    settled: bool = False
    timer: Any = None
    reported: Happened | None = None
    reported_duration: float = 0.0

    def max_execution_time(self) -> float | None:
        return self.msg.max_execution_time or self.job.max_execution_time

    def lifecycle_event(
        self, hook: HookName, error: tuple[str, str] | None, duration: float | None
    ) -> LifecycleEvent:
        return LifecycleEvent(
            hook=hook,
            partition=self.queue.partition,
            queue=self.queue.name,
            job_id=self.msg.id,
            job_name=self.msg.name,
            retry_count=self.msg.retry_count,
            at=time.time(),
            error=error,
            duration=duration,
        )


@dataclass(slots=True, eq=False)
class HookTask:
    """A hook of a job that cannot run beside it (on_cancel; on_error / on_buried of a job
    whose process died; any hook its process was cut short in), run (state None) in
    another job process. ``then`` settles the job once it ran, or definitively could not:
    hooks are at-least-once, like jobs."""

    key: int
    queue: QueueState
    hook: str
    frame: bytes
    then: Callable[[], None]
    attempts: int = 1


class RunHooks(Protocol):
    def __call__(
        self,
        task: Task,
        hook: HookName,
        error: Error | None,
        then: Callable[[], None],
        stack: str | None = None,
    ) -> None:
        """Run the callbacks' ``hook`` for a job not running (or whose hooks were cut
        short) in some job process, then ``then()``: the job is settled after it."""
