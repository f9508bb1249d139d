"""How a batch of jobs is enqueued, as a pure state machine shared by every API.

``steps`` decides and never does I/O: it yields a list of actions (``Publish`` messages,
``Control`` calls on the client's blocking connection) and receives their outcomes (a
result or the exception), so that the blocking client, the asyncio client and
``enqueue_many`` run the same rules with their own waiting:

1. jobs with a queue_key take their keys, all in one pipeline (a key queue holds at most
   one token: the broker nacks the second; a key queue deleted under us returns ours);
2. the jobs not refused are published, all in one pipeline, each confirmed;
3. keys taken for jobs whose publish failed are released (the job is not there).

A connection lost before a confirm leaves the outcome unknown: a job is published once
more (at-least-once, as a worker's redelivery); a key is taken once more and, if that is
refused, the key's holder is read: our own job id means the first attempt took it.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pika

from roger.broker import state_client
from roger.broker.publisher import ConnectionLost, DeclareRefused, Publish, Refused, Unroutable
from roger.core import naming, topology
from roger.core import state as st
from roger.core.jobs import JobDefinition
from roger.core.message import JOB_NAME_RE, JobMessage, encode, new_job_id, properties

KEY_ATTEMPTS = 5  # a key queue that keeps vanishing under us (holders releasing it)
NOT_FOUND = 404


class EnqueueError(RuntimeError):
    """The job could not be enqueued (bad name, no such queue, broker refusal)."""


@dataclass(frozen=True)
class EnqueueResult:
    """What became of one job of ``enqueue_many``."""

    job_id: str
    status: Literal["enqueued", "duplicate", "error"]
    queue_key: str | None = None
    error: str | None = None  # why, when not enqueued

    @property
    def ok(self) -> bool:
        return self.status == "enqueued"


@dataclass(frozen=True)
class Prepared:
    """A validated job, encoded, ready to publish."""

    partition: str
    message: JobMessage
    body: bytes
    target: str

    def job_publish(self) -> Publish:
        props = pika.BasicProperties(**properties(self.message, self.partition))
        return Publish(self.target, self.body, props, topology.main_queue_arguments())

    def key_publish(self) -> Publish:
        key = self.message.queue_key
        assert key is not None
        props = pika.BasicProperties(
            delivery_mode=2, content_type="application/json", message_id=self.message.id
        )
        token = st.queue_key_token(self.message.id, self.message.queue, time.time())
        name = naming.queue_key_queue_name(self.partition, key)
        return Publish(name, token, props, st.queue_key_arguments(), remember=False)


@dataclass(frozen=True)
class Control:
    """A call on the client's blocking connection (rare paths: key checks, releases)."""

    call: Callable[[Any], Any]


Action = Publish | Control
Outcome = Any  # the action's result, or the exception it raised
Steps = Generator[list[Action], list[Outcome], list[tuple[EnqueueResult, BaseException | None]]]


_FOUND: dict[str, JobDefinition] = {}  # job name -> its definition, once imported
_MISSING: dict[str, float] = {}  # job name -> when its module last failed to import
MISSING_RECHECK = 10.0  # seconds before a failed import is tried again
CACHE_MAX = 4096


def _definition(job: JobDefinition | str) -> tuple[str, JobDefinition | None]:
    """A job name and, when its module imports here, its definition (for defaults).

    Lookups are cached: an import that fails searches the whole ``sys.path`` and took
    most of an enqueue's time; a failure is retried after ``MISSING_RECHECK`` seconds.
    """
    if isinstance(job, JobDefinition):
        return job.name, job
    found = _FOUND.get(job) if isinstance(job, str) else None
    if found is not None:
        return job, found  # type: ignore[return-value]
    if not isinstance(job, str) or not JOB_NAME_RE.match(job):
        raise EnqueueError(f"job must be a @roger.job function or 'module:function'; got {job!r}")
    failed_at = _MISSING.get(job)
    if failed_at is not None and time.monotonic() - failed_at < MISSING_RECHECK:
        return job, None
    module, _, attr = job.partition(":")
    try:
        value = getattr(importlib.import_module(module), attr, None)
    except ImportError:
        value = None
    if not isinstance(value, JobDefinition):
        if len(_MISSING) < CACHE_MAX:
            _MISSING[job] = time.monotonic()
        return job, None
    if len(_FOUND) < CACHE_MAX:
        _FOUND[job] = value
    _MISSING.pop(job, None)
    return job, value


def prepare(partition: str, job: JobDefinition | str, args: Any, queue: str | None) -> Prepared:
    """Validate and encode one job; raises ``EnqueueError``/``InvalidName`` on bad input."""
    naming.validate_name("partition", partition)
    name, definition = _definition(job)
    queue = queue or (definition.queue if definition else "default")
    naming.validate_name("queue", queue)
    queue_key, execution_key = definition.keys(args) if definition else (None, None)
    msg = JobMessage(
        id=new_job_id(),
        name=name,
        args=args,
        queue=queue,
        queue_key=queue_key,
        execution_key=execution_key,
        queued_at=time.time(),
        max_execution_time=definition.max_execution_time if definition else None,
    )
    try:
        body = encode(msg)
    except (TypeError, ValueError, RecursionError) as exc:
        raise EnqueueError(f"args must be JSON-serialisable: {exc}") from None
    return Prepared(partition, msg, body, naming.queue_name(partition, queue))


JobSpec = tuple[JobDefinition | str, Any] | tuple[JobDefinition | str, Any, str | None]


def prepare_many(partition: str, jobs: Iterable[JobSpec]) -> list[Prepared]:
    """Every job validated before any is sent: bad input refuses the whole batch."""
    out = []
    for i, spec in enumerate(jobs):
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise EnqueueError(f"job {i}: expected (job, args) or (job, args, queue); got {spec!r}")
        try:
            out.append(prepare(partition, spec[0], spec[1], spec[2] if len(spec) == 3 else None))
        except Exception as exc:  # a key function's own error too: the batch is refused
            raise EnqueueError(f"job {i}: {exc}") from exc
    return out


def _publish_error(exc: BaseException) -> BaseException:
    if isinstance(exc, Unroutable):
        return EnqueueError(f"queue {exc.queue} does not exist")
    if isinstance(exc, DeclareRefused | Refused):
        return EnqueueError(str(exc))
    return exc


def steps(jobs: Sequence[Prepared]) -> Steps:
    """The enqueue of ``jobs`` (see the module docstring); returns one result per job."""
    done: dict[int, tuple[EnqueueResult, BaseException | None]] = {}

    def refuse(i: int, exc: BaseException) -> None:
        m = jobs[i].message
        status: Literal["duplicate", "error"] = (
            "duplicate" if isinstance(exc, state_client.DuplicateJob) else "error"
        )
        done[i] = (EnqueueResult(m.id, status, m.queue_key, str(exc) or repr(exc)), exc)

    # 1. queue keys
    taken: set[int] = set()
    pending = [i for i, j in enumerate(jobs) if j.message.queue_key is not None]
    uncertain: set[int] = set()  # a take whose confirm was lost
    for _attempt in range(KEY_ATTEMPTS):
        if not pending:
            break
        outcomes = yield [jobs[i].key_publish() for i in pending]
        retry, check = [], []
        for i, out in zip(pending, outcomes, strict=True):
            if not isinstance(out, BaseException):
                taken.add(i)
            elif isinstance(out, Refused) and i in uncertain:
                check.append(i)  # held: maybe by our own lost attempt
            elif isinstance(out, Refused):
                key = str(jobs[i].message.queue_key)
                refuse(i, state_client.DuplicateJob(jobs[i].partition, key))
            elif isinstance(out, Unroutable) or (
                isinstance(out, DeclareRefused) and out.code == NOT_FOUND
            ):
                retry.append(i)
            elif isinstance(out, ConnectionLost):
                uncertain.add(i)
                retry.append(i)
            else:
                refuse(i, _publish_error(out))
        if check:
            holders = yield [_holder(jobs[i]) for i in check]
            for i, holder in zip(check, holders, strict=True):
                if holder == jobs[i].message.id:
                    taken.add(i)
                elif isinstance(holder, BaseException):
                    refuse(i, holder)
                else:
                    key = str(jobs[i].message.queue_key)
                    refuse(i, state_client.DuplicateJob(jobs[i].partition, key, holder))
        pending = retry
    for i in pending:
        why = f"could not take queue key {jobs[i].message.queue_key!r}: its queue keeps vanishing"
        refuse(i, EnqueueError(why))

    # 2. the jobs
    pending = [i for i in range(len(jobs)) if i not in done]
    for attempt in range(2):
        if not pending:
            break
        outcomes = yield [jobs[i].job_publish() for i in pending]
        retry = []
        for i, out in zip(pending, outcomes, strict=True):
            if not isinstance(out, BaseException):
                m = jobs[i].message
                done[i] = (EnqueueResult(m.id, "enqueued", m.queue_key), None)
            elif isinstance(out, ConnectionLost) and attempt == 0:
                retry.append(i)
            else:
                refuse(i, _publish_error(out))
        pending = retry

    # 3. keys of jobs that are not there
    release = [i for i in taken if not done[i][0].ok]
    if release:
        yield [_release(jobs[i]) for i in release]
    return [done[i] for i in range(len(jobs))]


def _holder(job: Prepared) -> Control:
    key = str(job.message.queue_key)
    return Control(lambda conn: state_client.queue_key_holder(conn, job.partition, key))


def _release(job: Prepared) -> Control:
    key, job_id = str(job.message.queue_key), job.message.id
    return Control(lambda conn: state_client.release_queue_key(conn, job.partition, key, job_id))
