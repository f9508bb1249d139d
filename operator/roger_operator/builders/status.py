"""Partition status from what the operator observed, following the API conventions:
``observedGeneration``, conditions ``Ready``/``Progressing``/``Degraded``/``CallbacksResolved``
whose ``lastTransitionTime`` only moves when their status does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from roger_operator.builders.model import PartitionSpec, selector_string

READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
CALLBACKS_RESOLVED: Final = "CallbacksResolved"
CONDITION_TYPES: Final = (READY, PROGRESSING, DEGRADED, CALLBACKS_RESOLVED)

# Reasons (CamelCase, stable: alerts and tests match on them).
R_READY: Final = "Ready"
R_ROLLING_OUT: Final = "RollingOut"
R_COMPLETE: Final = "Complete"
R_AS_EXPECTED: Final = "AsExpected"
R_RESOLVED: Final = "Resolved"
R_CALLBACK_NOT_FOUND: Final = "CallbackNotFound"
R_SECRET_NOT_FOUND: Final = "SecretNotFound"
R_ID_CONFLICT: Final = "PartitionIdConflict"
R_BROKER_UNAVAILABLE: Final = "BrokerUnavailable"
R_APPLY_FAILED: Final = "ApplyFailed"
R_DEPLOYMENT_FAILED: Final = "DeploymentFailed"
R_DEPLOYMENT_MISSING: Final = "DeploymentMissing"
R_QUEUE_NAME_CONFLICT: Final = "QueueNameConflict"
R_CALLBACK_REJECTED: Final = "CallbackRejected"


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    blocking: bool = True  # True: children were not applied this time


@dataclass(frozen=True)
class Observation:
    """What one reconcile (or status refresh) found."""

    spec: PartitionSpec
    missing_callbacks: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()
    deployment: Mapping[str, Any] | None = None
    queue_stats: Sequence[Mapping[str, Any]] | None = None
    stats_time: str | None = None
    claimed_id: str | None = None
    config_hash: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def callbacks_problem(spec: PartitionSpec, missing: Sequence[str]) -> Problem:
    names = ", ".join(missing)
    plural = "s" if len(missing) > 1 else ""
    return Problem(
        R_CALLBACK_NOT_FOUND,
        f"Callback{plural} {names} not found in namespace {spec.namespace}: create "
        f"{'them' if plural else 'it'} or remove {'them' if plural else 'it'} from "
        "spec.callbacks; the running Deployment is left as it was",
    )


def _condition(
    ctype: str, status: bool, reason: str, message: str, generation: int, now: str, old: Any
) -> dict[str, Any]:
    value = "True" if status else "False"
    previous = old.get(ctype) if isinstance(old, Mapping) else None
    since = now
    if previous and previous.get("status") == value and previous.get("lastTransitionTime"):
        since = previous["lastTransitionTime"]
    return {
        "type": ctype,
        "status": value,
        "observedGeneration": generation,
        "lastTransitionTime": since,
        "reason": reason,
        "message": message,
    }


def rollout(
    deployment: Mapping[str, Any] | None, desired: int
) -> tuple[bool, bool, str | None, int, int]:
    """(exists, complete, failure message, replicas, readyReplicas) of a Deployment."""
    if not deployment:
        return False, False, None, 0, 0
    st = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    replicas = int(st.get("replicas") or 0)
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    available = int(st.get("availableReplicas") or 0)
    current = int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    complete = current and updated >= desired and ready >= desired and replicas == desired
    complete = complete and available >= desired
    failure = None
    for cond in st.get("conditions") or ():
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            failure = cond.get("message") or "ReplicaFailure"
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            failure = cond.get("message") or "ProgressDeadlineExceeded"
    return True, complete, failure, replicas, ready


def compute_status(
    previous: Mapping[str, Any] | None, obs: Observation, now: str
) -> dict[str, Any]:
    """The whole new ``status`` of a Partition."""
    spec = obs.spec
    prev = dict(previous or {})
    old = {c.get("type"): c for c in prev.get("conditions") or () if isinstance(c, Mapping)}
    gen = spec.generation
    exists, complete, failure, replicas, ready = rollout(obs.deployment, spec.replicas)
    problems = list(obs.problems)
    if failure:
        problems.append(Problem(R_DEPLOYMENT_FAILED, failure, blocking=False))
    if not exists and not problems:
        problems.append(
            Problem(R_DEPLOYMENT_MISSING, f"Deployment {spec.child_name} does not exist yet")
        )
    first = problems[0] if problems else None
    blocking = next((p for p in problems if p.blocking), None)

    if obs.missing_callbacks:
        cb = callbacks_problem(spec, obs.missing_callbacks)
        cb_cond = _condition(CALLBACKS_RESOLVED, False, cb.reason, cb.message, gen, now, old)
    else:
        n = len(spec.callbacks)
        msg = f"all {n} callbacks found" if n else "no callbacks requested"
        cb_cond = _condition(CALLBACKS_RESOLVED, True, R_RESOLVED, msg, gen, now, old)

    if first:
        degraded = _condition(DEGRADED, True, first.reason, first.message, gen, now, old)
    else:
        degraded = _condition(DEGRADED, False, R_AS_EXPECTED, "no problems", gen, now, old)

    if blocking:
        progressing = _condition(
            PROGRESSING, False, blocking.reason, blocking.message, gen, now, old
        )
        ready_cond = _condition(READY, False, blocking.reason, blocking.message, gen, now, old)
    elif complete:
        msg = f"{ready}/{spec.replicas} worker pods ready with the current configuration"
        progressing = _condition(PROGRESSING, False, R_COMPLETE, msg, gen, now, old)
        if first:
            ready_cond = _condition(READY, False, first.reason, first.message, gen, now, old)
        else:
            ready_cond = _condition(READY, True, R_READY, msg, gen, now, old)
    else:
        msg = f"rolling out: {ready}/{spec.replicas} worker pods ready"
        progressing = _condition(PROGRESSING, True, R_ROLLING_OUT, msg, gen, now, old)
        ready_cond = _condition(READY, False, R_ROLLING_OUT, msg, gen, now, old)

    status: dict[str, Any] = {
        "observedGeneration": gen,
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": selector_string(spec.name),
        "queueCount": len(spec.queues),
        "conditions": [ready_cond, progressing, degraded, cb_cond],
    }
    claimed = obs.claimed_id or prev.get("partitionId")
    if claimed:
        status["partitionId"] = claimed
    config_hash = obs.config_hash or prev.get("configHash")
    if config_hash:
        status["configHash"] = config_hash
    if obs.queue_stats is not None:
        status["queues"] = [dict(q) for q in obs.queue_stats]
        status["backlog"] = sum(int(q.get("ready") or 0) for q in obs.queue_stats)
        if obs.stats_time:
            status["statsTime"] = obs.stats_time
    else:
        for key in ("queues", "backlog", "statsTime"):
            if key in prev:
                status[key] = prev[key]
    if "autoscaling" in prev:  # written by handlers/autoscale.py alone
        status["autoscaling"] = prev["autoscaling"]
    return status


def condition(status: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for c in (status or {}).get("conditions") or ():
        if c.get("type") == ctype:
            return c  # type: ignore[no-any-return]
    return None


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether a status patch would change anything (``statsTime`` alone does not count)."""
    a = {k: v for k, v in (old or {}).items() if k != "statsTime"}
    b = {k: v for k, v in new.items() if k != "statsTime"}
    return a != b
