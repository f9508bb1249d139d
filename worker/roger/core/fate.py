"""A delivery's fate: the one answer to "what happens to my job when X".

The worker's runtime reports what happened to a job (``Happened``) together with the
job's facts (``JobFacts``); ``decide`` returns what to do with the delivery (``Fate``),
and the runtime only carries that out. Nothing else in the worker chooses between ack,
retry, burial, parking or requeue.

Hooks follow Roger's callback page: ``on_error`` runs for every failure that does not end a
retry sequence, ``on_buried`` only when a retryable job has failed its whole retry
sequence. A job that is not retryable has no retry sequence: its failure runs
``on_error`` and its message is still kept in ``.buried`` for inspection, marked with the
reason ``not_retryable`` (Roger dropped it).

Requeues that are not the job's fault (pause, shutdown, bystanders of a killed job
process, a waiting room that refused it) charge no retry level, and they put a fresh copy
back (``Requeue``) rather than returning the delivery, so that they never count towards the
broker's delivery limit either. What is left to count are redeliveries after a worker
died or lost its connection with the job: a job delivered ``MAX_DELIVERIES`` times without
an outcome (it kills the whole worker, say) is buried with ``delivery_limit`` before
RabbitMQ 4's quorum queues (20 by default) would drop it, and no message can keep a worker
in a crash loop.

A delivery held unacknowledged past the broker's ``consumer_timeout`` closes its channel,
and the broker has every delivery of that channel again at once (``AckTimedOut``). Each of
them may be delivered elsewhere at once, so none may go on running here: a running one is
stopped (``Stop``: its job process is killed), a waiting one dropped (``Drop``); neither is
acknowledged, and what they hold is freed. The one that overran comes back as a failed
attempt (``Overran``) if its redelivery reaches this worker; elsewhere it is an ordinary
redelivery, counted like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from roger.core.hooks import CONSUMER_TIMEOUT, TIMEOUT, WORKER_CRASH, HookName

Error = tuple[str, str]  # (kind, message)

# Why a message sits in ``.buried`` (header ``x-roger-buried-reason``).
RETRIES_EXHAUSTED: Final = "retries_exhausted"
NOT_RETRYABLE: Final = "not_retryable"
DELIVERY_LIMIT: Final = "delivery_limit"
RETRY_TOO_LARGE: Final = "retry_too_large"  # its next attempt's body would not fit
BuriedReason = Literal["retries_exhausted", "not_retryable", "delivery_limit", "retry_too_large"]
ACK_TIMEOUT_WHY: Final = "its channel was closed by the broker's consumer_timeout"
MAX_DELIVERIES: Final = 10  # below RabbitMQ 4's default quorum-queue limit of 20


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What the fate of a failed attempt depends on."""

    retryable: bool
    retry_count: int  # 0 = the first run
    levels: tuple[int, ...]  # the partition's retry levels, in seconds


# -- what happened ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeliveredTooOften:
    """The broker delivered it ``count`` times before (``MAX_DELIVERIES`` or more), each
    time without an outcome (see ``too_many_deliveries``)."""

    count: int


def too_many_deliveries(count: int) -> bool:
    return count >= MAX_DELIVERIES


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The job returned."""


@dataclass(frozen=True, slots=True)
class Raised:
    """The job raised ``error`` (an exception's class name and message)."""

    error: Error
    stack: str | None = None


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The job ran past its ``max_execution_time``; its process was killed."""

    limit: float


@dataclass(frozen=True, slots=True)
class ProcessDied:
    """The job's process exited on its own. ``alone``: this job is known to be the one
    that killed it (it ran alone there); otherwise the culprit is unknown."""

    alone: bool
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class Bystander:
    """The job's process was killed for another job (deadline, cancel, hung hook)."""


@dataclass(frozen=True, slots=True)
class BeforeRunHung:
    """A ``before_run`` hook hung; the process was killed before the job started."""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """A cancel names this job (while it waited or ran)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The message can never run: invalid, unknown or disallowed job (a park reason)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Paused:
    """Its queue was paused before the job started."""


@dataclass(frozen=True, slots=True)
class ShuttingDown:
    """The worker stops before the job started."""


@dataclass(frozen=True, slots=True)
class MoveRefused:
    """The broker refused to take it into an execution key's waiting room."""


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The channel that delivered it is gone: the broker has the message again."""


@dataclass(frozen=True, slots=True)
class AckTimedOut:
    """The broker closed the channel that delivered it: a delivery there (this one or
    another) stayed unacknowledged past its ``consumer_timeout``. The broker has it again.
    ``running``: its job process has it."""

    running: bool


@dataclass(frozen=True, slots=True)
class Overran:
    """A redelivery of a job this worker stopped because it held its delivery past the
    broker's ``consumer_timeout`` (``timeout`` seconds)."""

    timeout: float


@dataclass(frozen=True, slots=True)
class NotDue:
    """A delayed job arrived ``seconds`` before its time (a delay longer than one pass of
    the ladder, ``roger.core.delay.LEG_MAX``)."""

    seconds: float


Happened = (
    DeliveredTooOften
    | Succeeded
    | Raised
    | TimedOut
    | ProcessDied
    | Bystander
    | BeforeRunHung
    | Cancelled
    | Refused
    | Paused
    | ShuttingDown
    | MoveRefused
    | ConnectionLost
    | AckTimedOut
    | Overran
    | NotDue
)


# -- fates -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ack:
    """Done: acknowledge; ``after_run`` ran beside the job."""

    hook: HookName = "after_run"
    outcome: str = "succeeded"


@dataclass(frozen=True, slots=True)
class Retry:
    """Publish to retry level ``seconds`` (retry_count + 1), then acknowledge."""

    seconds: int
    error: Error
    hook: HookName = "on_error"
    outcome: str = "retried"


@dataclass(frozen=True, slots=True)
class Bury:
    """Publish to ``.buried`` with ``reason``, then acknowledge."""

    reason: BuriedReason
    error: Error
    hook: HookName
    outcome: str = "buried"


@dataclass(frozen=True, slots=True)
class Park:
    """Publish to ``.invalid`` (never run, never lost), then acknowledge."""

    reason: str
    outcome: str = "parked"


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Never run (again): ``on_cancel`` once, keys freed, acknowledged, not retried."""

    hook: HookName = "on_cancel"
    outcome: str = "cancelled"


@dataclass(frozen=True, slots=True)
class Requeue:
    """Back to its queue without charge: a fresh copy (confirmed), then the delivery is
    acknowledged, so the broker's delivery count starts again."""

    why: str


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Back to the broker without a retry level (``basic.nack``: it counts as a delivery,
    as it may be the one that kills processes); its next run here is alone in the one-slot
    quarantine process, where a crash names its culprit."""


@dataclass(frozen=True, slots=True)
class Rerun:
    """Run again here at once (the delivery is kept), without ``before_run``."""

    skip_before: bool = True


@dataclass(frozen=True, slots=True)
class Delay:
    """Into the delay ladder again for ``seconds`` (confirmed), then acknowledged."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Abandon:
    """Nothing to do: the broker redelivers it (its channel is gone)."""


@dataclass(frozen=True, slots=True)
class Drop:
    """The broker has it again (its channel is gone): free what it holds (execution keys),
    acknowledge nothing, never run it here."""

    why: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The broker has it again (its channel is gone) and may deliver it elsewhere at once:
    kill its job process so that it never runs twice at once, free what it holds,
    acknowledge nothing."""

    why: str


Fate = (
    Ack
    | Retry
    | Bury
    | Park
    | CancelJob
    | Requeue
    | Quarantine
    | Rerun
    | Delay
    | Abandon
    | Drop
    | Stop
)


def on_failure(facts: JobFacts, error: Error) -> Retry | Bury:
    """A failed attempt: the next retry level, or ``.buried`` once there is none."""
    if not facts.retryable:
        return Bury(NOT_RETRYABLE, error, "on_error")
    if facts.retry_count < len(facts.levels):
        return Retry(facts.levels[facts.retry_count], error)
    return Bury(RETRIES_EXHAUSTED, error, "on_buried")


def retry_too_large(decided: Retry) -> Bury:
    """A retry whose body would be refused (``roger.core.message.retry_body``): kept in
    ``.buried`` as delivered, with the failure's error, rather than lost or looping. Its
    hook stays ``on_error``, which ran (or runs) for the failure already."""
    return Bury(RETRY_TOO_LARGE, decided.error, decided.hook)


def failure_hook(facts: JobFacts) -> HookName:
    """The hook a failure of this attempt runs (chosen before the job runs, so the job
    process can call it beside the job, with the callbacks' state)."""
    return on_failure(facts, ("", "")).hook


_ATTEMPTS: dict[tuple[bool, int, tuple[int, ...]], tuple[JobFacts, HookName]] = {}


def attempt(
    retryable: bool, retry_count: int, levels: tuple[int, ...]
) -> tuple[JobFacts, HookName]:
    """``JobFacts`` and ``failure_hook`` of an attempt, made once per distinct attempt
    (a few per partition) rather than once per delivery."""
    key = (retryable, retry_count, levels)
    found = _ATTEMPTS.get(key)
    if found is None:
        facts = JobFacts(retryable, retry_count, levels)
        found = (facts, failure_hook(facts))
        if len(_ATTEMPTS) < 1024:  # retry counts are bounded by the levels; a cap anyway
            _ATTEMPTS[key] = found
    return found


SUCCEEDED: Final = Succeeded()  # what happened to most jobs: one instance, no allocation
_ACK: Final = Ack()


def decide(happened: Happened, facts: JobFacts) -> Fate:
    """The fate of a delivery after ``happened``. Exhaustive over ``Happened``."""
    if happened is SUCCEEDED:  # the hot path, once per job: no pattern matching
        return _ACK
    match happened:
        case DeliveredTooOften(count=count):
            error = ("delivery_limit", f"delivered {count} times without an outcome")
            return Bury(DELIVERY_LIMIT, error, "on_buried")
        case Succeeded():
            return _ACK
        case Raised(error=error):
            return on_failure(facts, error)
        case TimedOut(limit=limit):
            return on_failure(facts, (TIMEOUT, f"exceeded max_execution_time of {limit:g}s"))
        case ProcessDied(alone=True, exit_code=code):
            return on_failure(facts, (WORKER_CRASH, f"job process exited (code {code})"))
        case ProcessDied(alone=False):
            return Quarantine()
        case Bystander():
            return Requeue("its job process was killed for another job")
        case BeforeRunHung():
            return Rerun(skip_before=True)
        case Cancelled():
            return CancelJob()
        case Refused(reason=reason):
            return Park(reason)
        case Paused():
            return Requeue("queue paused")
        case ShuttingDown():
            return Requeue("worker shutting down")
        case MoveRefused():
            return Requeue("the waiting room refused it")
        case ConnectionLost():
            return Abandon()
        case AckTimedOut(running=True):
            return Stop(ACK_TIMEOUT_WHY)
        case AckTimedOut(running=False):
            return Drop(ACK_TIMEOUT_WHY)
        case Overran(timeout=timeout):
            detail = f"held its delivery past the broker's consumer_timeout of {timeout:g}s"
            return on_failure(facts, (CONSUMER_TIMEOUT, detail))
        case NotDue(seconds=seconds):
            return Delay(seconds)
    raise AssertionError(f"no fate for {happened!r}")  # pragma: no cover (mypy checks)
