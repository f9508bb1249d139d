"""How a batch of jobs is enqueued, as a pure state machine shared by every API.

``steps`` decides and never does I/O: it yields a list of actions (``Publish`` messages,
``Control`` calls on the client's blocking connection) and receives their outcomes (a
result or the exception), so that the blocking client, the asyncio client and
``enqueue_many`` run the same rules with their own waiting:

1. jobs with a queue_key take their keys (``state_client.take_queue_key``: under the
   key's lock, so that no reader of the token can ever let a second take in; taken for
   a minute at first); a take refused is a duplicate unless the holder is our own job
   (an earlier attempt whose confirm was lost);
2. the jobs not refused are published, all in one pipeline, each confirmed;
3. keys of published jobs are held for the job's life (``hold_queue_key``), keys of jobs
   whose publish failed are released (the job is not there).

A connection lost before a confirm leaves the outcome unknown: a job is published once
more (at-least-once, as a worker's redelivery).
"""

from __future__ import annotations

import datetime
import functools
import importlib
import logging
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from roger.broker import delayed, state_client, wire
from roger.broker.publishes import ConnectionLost, DeclareRefused, Publish, Refused, Unroutable
from roger.core import delay, naming, topology
from roger.core import state as st
from roger.core.jobs import JobDefinition
from roger.core.message import (
    JOB_NAME_RE,
    JobMessage,
    caller_job_id,
    encode,
    new_job_id,
    properties,
)

log = logging.getLogger("roger.client")
_MAIN_QUEUE = topology.main_queue_arguments()  # declared as is, never changed


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
    due_at: float | None = None  # a delayed job's time (epoch seconds)

    @property
    def delayed(self) -> bool:
        return self.due_at is not None

    def job_publish(self) -> Publish:
        """The job's publish; a delayed one's route is planned now, from what is left of
        its delay (declaring the ladder or taking a key took some of it)."""
        fields = properties(self.message, self.partition)
        if self.due_at is None:
            props = wire.properties(fields)
            return Publish(self.target, self.body, props, self.message.id, _MAIN_QUEUE)
        props = wire.properties({**fields, "headers": delay.due_header(self.due_at)})
        leg = delay.route(self.partition, self.message.queue, self.due_at - time.time())
        if leg is None:  # due already: straight to its queue
            return Publish(self.target, self.body, props, self.message.id, _MAIN_QUEUE)
        return Publish(leg.routing_key, self.body, props, self.message.id, exchange=leg.exchange)


@dataclass(frozen=True)
class Control:
    """A call on the client's blocking connection (queue keys): ``what`` it does to the
    key of job ``job_id`` ("take", "hold" or "release")."""

    call: Callable[[Any], Any]
    what: str = ""
    job_id: str = ""


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


_TARGETS: dict[tuple[str, str], str] = {}  # (partition, queue) seen valid -> queue name
_PARTITIONS: set[str] = set()  # partition names seen valid


def _target(partition: str, queue: str) -> str:
    """The main queue of ``queue`` in ``partition``, both names checked (once per pair)."""
    found = _TARGETS.get((partition, queue))
    if found is not None:
        return found
    naming.validate_name("partition", partition)
    naming.validate_queue(partition, queue)
    name = naming.queue_name(partition, queue)
    if len(_TARGETS) < CACHE_MAX:
        _TARGETS[(partition, queue)] = name
        _PARTITIONS.add(partition)
    return name


KEYED_DELAY_MAX: float = st.QUEUE_KEY_MAX_HOLD - 86400
"""A delayed job's queue_key is taken at enqueue and frees itself ``QUEUE_KEY_MAX_HOLD``
(7 days) later: a keyed job may wait at most 6 days, so it still holds its key a day
after it is due."""


def prepare(
    partition: str,
    job: JobDefinition | str,
    args: Any,
    queue: str | None,
    job_id: str | None = None,
    due_in: float | None = None,
    queue_key: str | None = None,
) -> Prepared:
    """Validate and encode one job; raises ``EnqueueError``/``InvalidName`` on bad input.
    ``job_id`` is the caller's own id (else a new UUID); ``due_in`` a delay in seconds
    checked by ``roger.core.delay.delay_seconds``; ``queue_key`` replaces the job's own."""
    if partition not in _PARTITIONS:
        naming.validate_name("partition", partition)
    if job_id is not None:
        try:
            caller_job_id(job_id)
        except ValueError as exc:
            raise EnqueueError(str(exc)) from None
    name, definition = _definition(job)
    queue = queue or (definition.queue if definition else "default")
    target = _target(partition, queue)
    own_key, execution_key = definition.keys(args) if definition else (None, None)
    if queue_key is not None and (not isinstance(queue_key, str) or not queue_key):
        raise EnqueueError(f"queue_key must be a non-empty string; got {queue_key!r}")
    queue_key = queue_key if queue_key is not None else own_key
    if due_in is not None and queue_key is not None and due_in > KEYED_DELAY_MAX:
        raise EnqueueError(
            f"a job with a queue_key can be delayed at most {KEYED_DELAY_MAX:.0f}s (6 days):"
            f" its key is held from now and frees itself after {st.QUEUE_KEY_MAX_HOLD}s"
        )
    msg = JobMessage(
        id=new_job_id() if job_id is None else job_id,
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
    if not due_in or delay.route(partition, queue, due_in) is None:
        return Prepared(partition, msg, body, target)
    return Prepared(partition, msg, body, target, msg.queued_at + due_in)


def _ladder(jobs: Sequence[Prepared]) -> list[Action]:
    """Declare the ladder and the due binding once per connection for delayed jobs."""
    wanted = sorted({(j.partition, j.message.queue) for j in jobs if j.delayed})
    return [Control(functools.partial(_ensure, partition=p, queue=q), "ladder") for p, q in wanted]


def _ensure(conn: Any, partition: str, queue: str) -> None:
    delayed.ensure(conn, partition, queue)


def prepare_one(
    partition: str,
    job: JobDefinition | str,
    args: Any,
    queue: str | None,
    job_id: str | None,
    delay_s: float | None,
    at: datetime.datetime | None,
    queue_key: str | None,
) -> Prepared:
    """``Client.enqueue``'s arguments, checked: ``delay_s`` seconds or ``at`` (aware)."""
    try:
        due_in = delay.delay_seconds(delay_s, at, time.time())
    except delay.InvalidDelay as exc:
        raise EnqueueError(str(exc)) from None
    return prepare(partition, job, args, queue, job_id, due_in, queue_key)


JobSpec = (
    tuple[JobDefinition | str, Any]
    | tuple[JobDefinition | str, Any, str | None]
    | tuple[JobDefinition | str, Any, str | None, str | None]
)


def prepare_many(partition: str, jobs: Iterable[JobSpec]) -> list[Prepared]:
    """Every job validated before any is sent: bad input refuses the whole batch."""
    out = []
    for i, spec in enumerate(jobs):
        if not isinstance(spec, tuple) or len(spec) not in (2, 3, 4):
            raise EnqueueError(
                f"job {i}: expected (job, args), (job, args, queue) or (job, args, queue, id);"
                f" got {spec!r}"
            )
        try:
            queue = spec[2] if len(spec) >= 3 else None
            job_id = spec[3] if len(spec) == 4 else None
            out.append(prepare(partition, spec[0], spec[1], queue, job_id))
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
    done: list[tuple[EnqueueResult, BaseException | None] | None] = [None] * len(jobs)

    def refuse(i: int, exc: BaseException) -> None:
        m = jobs[i].message
        status: Literal["duplicate", "error"] = (
            "duplicate" if isinstance(exc, state_client.DuplicateJob) else "error"
        )
        done[i] = (EnqueueResult(m.id, status, m.queue_key, str(exc) or repr(exc)), exc)

    # 0. the ladder, for delayed jobs (a refusal refuses them, not the others)
    ladder = _ladder(jobs)
    if ladder:
        failed = [o for o in (yield ladder) if isinstance(o, BaseException)]
        for i, j in enumerate(jobs):
            if j.delayed and failed:
                refuse(i, EnqueueError(f"cannot prepare the delay queues: {failed[0]}"))

    # 1. queue keys, one at a time, in order: of two jobs with one key, the first wins
    taken: list[int] = []
    for i, job in enumerate(jobs):
        if job.message.queue_key is None or done[i] is not None:
            continue
        [out] = yield [_take(job)]
        if isinstance(out, BaseException):
            refuse(i, out)
        elif out == job.message.id:
            taken.append(i)
        else:
            refuse(i, state_client.DuplicateJob(job.partition, str(job.message.queue_key), out))

    # 2. the jobs
    pending = [i for i, d in enumerate(done) if d is None]
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

    # 3. keys: held for the life of the jobs that are there, freed for those that are not
    results = [d for d in done if d is not None]  # every job has its result by now
    if taken:
        yield [_hold(jobs[i]) if results[i][0].ok else _release(jobs[i]) for i in taken]
    return results


def _take(job: Prepared) -> Control:
    """Take the job's key; the outcome is the holder's job id (ours when taken)."""
    key, m = str(job.message.queue_key), job.message

    def take(conn: Any) -> str | None:
        if state_client.take_queue_key(conn, job.partition, key, m.id, m.queue):
            return m.id
        return state_client.queue_key_holder(conn, job.partition, key)

    return Control(take, "take", m.id)


def _hold(job: Prepared) -> Control:
    """Best effort: failing, the key frees itself after ``QUEUE_KEY_PENDING_HOLD``."""
    key, job_id = str(job.message.queue_key), job.message.id

    def hold(conn: Any) -> None:
        try:
            state_client.hold_queue_key(conn, job.partition, key, job_id)
        except Exception as exc:
            log.warning(
                "job %s is queued but its queue_key %r could not be held (%s): "
                "it frees itself in %.0fs",
                job_id,
                key,
                exc,
                st.QUEUE_KEY_PENDING_HOLD,
            )

    return Control(hold, "hold", job_id)


def _release(job: Prepared) -> Control:
    key, job_id = str(job.message.queue_key), job.message.id
    return Control(
        lambda conn: state_client.release_queue_key(conn, job.partition, key, job_id),
        "release",
        job_id,
    )
