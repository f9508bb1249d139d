"""What to do on the broker so a Partition's queues match its spec, given what is there.

RabbitMQ never changes a queue's arguments in place: a re-declare with other arguments is
refused (406), which, done by new worker pods, would be a crash loop. So the arguments of
Roger's queues never carry what a spec can change:

- **length bound of ``.buried``** (``spec.retry.buriedMaxLength``): a policy named
  ``roger-bound:<queue>`` whose pattern is exactly that queue's name (``max-length``,
  ``overflow: drop-head``), changed in place by the operator. A ``.buried`` declared by an
  earlier version carries ``x-max-length``; with a policy too, RabbitMQ applies the lower
  of the two, so a bound at or below the argument is just the policy, and a higher one
  needs the queue declared anew without the argument: ``ReplaceIntake`` files its buried
  jobs into ``.buried.log`` (as every ``roger buried`` verb does) and re-declares it.
  With ``vhost_bound`` (the operator's ``--bound-policy vhost``, for a vhost that holds
  only this operator's Partitions) the queues whose bound is that one share a single
  policy, ``roger-bound``, matching every ``.buried`` of the vhost by name; only the
  others get a policy of their own, above it. Why: every policy written makes RabbitMQ
  match every queue of the vhost against every policy, so one policy per queue makes the
  N-th Partition cost the broker O(N^2) (about 5 s per policy at 500 Partitions, while
  the vhost's declarations wait) and N Partitions O(N^3).
- **retry levels** (``spec.retry.levels``): a retry queue's name carries its delay
  (``.retry.<seconds>``), so new levels are new queues. A retry queue no level uses any
  more is drained: its messages still go back to the main queue when their delay is over,
  and it is deleted once empty and no pod of an older config runs (``DrainRetry``).

What remains refused is a queue of the partition's names that exists with arguments Roger
never gives it (another queue type, another delay): it is not Roger's to delete.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from roger.core import naming, topology

BOUND_ARGUMENTS: Final = ("x-max-length", "x-overflow")
# Arguments RabbitMQ compares on a re-declare (a difference is a 406), among those Roger
# uses; anything else is left for the broker to judge when the queue is declared.
COMPARED: Final = (
    "x-queue-type",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-overflow",
)
POLICY_PREFIX: Final = "roger-bound:"
# Above a user's catch-all policies (usually 0): RabbitMQ applies one policy per queue, the
# highest priority; docs/admin.md says what that means for other policies.
POLICY_PRIORITY: Final = 100
VHOST_POLICY: Final = "roger-bound"
# Below every queue's own policy (which wins where a Partition's bound is another one).
VHOST_POLICY_PRIORITY: Final = POLICY_PRIORITY - 1
BURIED_OVERFLOW: Final = "drop-head"  # as x-max-length alone did: the oldest burial goes


@dataclass(frozen=True)
class SeenQueue:
    """A queue as the management API shows it."""

    name: str
    arguments: Mapping[str, Any]
    messages: int = 0  # ready + unacknowledged


@dataclass(frozen=True)
class Declare:
    """Declare with these arguments (creates it, or asserts it as it is)."""

    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class KeepExisting:
    """Exists with arguments that differ only in a bound a policy overrides: passive only."""

    name: str


@dataclass(frozen=True)
class SetBound:
    """The policy that bounds ``queue`` (``covers``: what it matches, for logs)."""

    covers: str
    policy: str
    pattern: str
    definition: Mapping[str, Any]
    priority: int = POLICY_PRIORITY


@dataclass(frozen=True)
class DropBound:
    """``queue``'s own policy, if there is one: the vhost's shared policy bounds it."""

    queue: str
    policy: str


@dataclass(frozen=True)
class ReplaceIntake:
    """``.buried`` has an ``x-max-length`` below the wanted bound: file its jobs into the
    log, delete it if empty, declare it anew."""

    partition: str
    queue: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class DrainRetry:
    """A retry queue no level uses: delete it once empty and no old pod runs."""

    name: str
    messages: int


@dataclass(frozen=True)
class Refuse:
    """Exists with arguments Roger cannot migrate; the message names them."""

    name: str
    message: str


Action = Declare | KeepExisting | SetBound | DropBound | ReplaceIntake | DrainRetry | Refuse


def policy_name(queue: str) -> str:
    return f"{POLICY_PREFIX}{queue}"


def exact_pattern(queue: str) -> str:
    """A regex matching ``queue`` only (names are ``[a-z0-9_.-]``: only dots need escaping)."""
    return f"^{re.escape(queue)}$"


def _bound(max_length: int) -> dict[str, Any]:
    return {"max-length": max_length, "overflow": BURIED_OVERFLOW}


def bound_policy(queue: str, max_length: int) -> SetBound:
    return SetBound(queue, policy_name(queue), exact_pattern(queue), _bound(max_length))


def vhost_bound_policy(max_length: int) -> SetBound:
    """The one policy bounding every ``.buried`` of the vhost (``--bound-policy vhost``)."""
    return SetBound(
        "every .buried queue of the vhost",
        VHOST_POLICY,
        naming.BURIED_QUEUE_PATTERN,
        _bound(max_length),
        VHOST_POLICY_PRIORITY,
    )


def bound_actions(buried: str, max_length: int, vhost_bound: int | None) -> list[Action]:
    """The policies that bound ``buried`` at ``max_length``: its own, or (when the vhost's
    shared policy gives that bound) the shared one, and its own dropped if an earlier
    mode left one. The shared policy is written before the own one is dropped."""
    if vhost_bound is None or max_length != vhost_bound:
        return [bound_policy(buried, max_length)]
    return [vhost_bound_policy(vhost_bound), DropBound(buried, policy_name(buried))]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b  # RabbitMQ accepts a long where a signedint was declared
    return bool(a == b)


def differences(
    seen: Mapping[str, Any], wanted: Mapping[str, Any], ignore: Sequence[str] = ()
) -> list[str]:
    """The compared arguments whose values differ: ``'x-..' (here: a, wanted: b)``."""
    out = []
    for key in COMPARED:
        if key in ignore:
            continue
        have, want = seen.get(key), wanted.get(key)
        if have is None and want is None:
            continue
        if have is None or want is None or not _same(have, want):
            out.append(f"{key!r} (on the broker: {have!r}, wanted: {want!r})")
    return out


_RETRY_RE = re.compile(r"\.retry\.(\d+)$")


def _retry_seconds(stem: str, name: str) -> int | None:
    if not name.startswith(f"{stem}.retry."):
        return None
    found = _RETRY_RE.search(name)
    return int(found.group(1)) if found and name == f"{stem}.retry.{found.group(1)}" else None


def plan_queue(
    partition: str,
    queue: str,
    retry_levels: Sequence[int],
    buried_max_length: int,
    seen: Mapping[str, SeenQueue] | None,
    vhost_bound: int | None = None,
) -> list[Action]:
    """The actions for one partition queue. ``seen`` is every queue of the broker whose name
    starts with the queue's stem (None: unknown, the management API does not answer; then
    every queue is declared and the broker's 406 is the refusal). ``vhost_bound``: the
    bound of the vhost's shared policy (None: every ``.buried`` has its own)."""
    stem = naming.queue_name(partition, queue)
    buried = naming.buried_queue_name(partition, queue)
    actions: list[Action] = []
    for name, wanted in topology.declarations(partition, queue, tuple(retry_levels)):
        have = None if seen is None else seen.get(name)
        if have is None:
            actions.append(Declare(name, wanted))
            continue
        if name != buried:
            diff = differences(have.arguments, wanted)
            actions.append(Refuse(name, _refusal(name, diff)) if diff else Declare(name, wanted))
            continue
        diff = differences(have.arguments, wanted, ignore=BOUND_ARGUMENTS)
        if diff:
            actions.append(Refuse(name, _refusal(name, diff)))
            continue
        legacy = have.arguments.get("x-max-length")
        if legacy is None and not differences(have.arguments, wanted):
            actions.append(Declare(name, wanted))
        elif legacy is not None and int(legacy) < buried_max_length:
            actions.append(ReplaceIntake(partition, queue, name, wanted))
        else:  # the policy's bound is at or below the argument's: the lower one applies
            actions.append(KeepExisting(name))
    if not any(isinstance(a, Refuse) and a.name == buried for a in actions):
        actions.extend(bound_actions(buried, buried_max_length, vhost_bound))
    levels = set(retry_levels)
    for name, have in sorted((seen or {}).items()):
        seconds = _retry_seconds(stem, name)
        if seconds is not None and seconds not in levels:
            actions.append(DrainRetry(name, have.messages))
    return actions


def _refusal(name: str, diff: Sequence[str]) -> str:
    return (
        f"queue {name} exists with arguments Roger does not give it ({'; '.join(diff)}); "
        "it was not declared by this Partition's workers, so it is not deleted: delete or "
        "rename it, or rename the queue in spec.queues"
    )


def plan(
    partition: str,
    queues: Sequence[str],
    retry_levels: Sequence[int],
    buried_max_length: int,
    seen: Mapping[str, SeenQueue] | None,
    vhost_bound: int | None = None,
) -> list[Action]:
    """``plan_queue`` for each queue of the partition, in order."""
    return [
        action
        for queue in queues
        for action in plan_queue(
            partition, queue, retry_levels, buried_max_length, seen, vhost_bound
        )
    ]


def rollout_finished(deployment: Mapping[str, Any] | None) -> bool:
    """Every pod of the Deployment runs its current template (no old pod could still
    publish to a queue the new config no longer uses)."""
    if not deployment:
        return False
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    return (
        int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("updatedReplicas") or 0) == wanted
        and int(status.get("replicas") or 0) == wanted
    )
