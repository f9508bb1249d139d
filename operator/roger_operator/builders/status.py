"""Partition status from what the operator observed, following the API conventions:
``observedGeneration``, conditions ``Ready``/``Progressing``/``Degraded``/``CallbacksResolved``
whose ``lastTransitionTime`` only moves when their status does.
"""

from __future__ import annotations

import re
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
# Why new worker pods cannot run, read from their status (see ``pod_problems``).
R_IMAGE_PULL_FAILED: Final = "ImagePullFailed"
R_JOBS_IMPORT_FAILED: Final = "JobsImportFailed"
R_QUEUE_ARGUMENTS_REFUSED: Final = "QueueArgumentsRefused"
R_WORKER_CRASHING: Final = "WorkerCrashing"
# Reasons recomputed from the Deployment and its pods on every status refresh: a refresh
# never carries them over from the previous status (a reverted edit clears them).
DERIVED_REASONS: Final = (
    R_DEPLOYMENT_FAILED,
    R_DEPLOYMENT_MISSING,
    R_IMAGE_PULL_FAILED,
    R_JOBS_IMPORT_FAILED,
    R_WORKER_CRASHING,
)


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
    # The Partition's worker pods (as the API returns them), when they were read.
    pods: Sequence[Mapping[str, Any]] | None = None


def callbacks_problem(spec: PartitionSpec, missing: Sequence[str]) -> Problem:
    names = ", ".join(missing)
    plural = "s" if len(missing) > 1 else ""
    return Problem(
        R_CALLBACK_NOT_FOUND,
        f"Callback{plural} {names} not found in namespace {spec.namespace}: create "
        f"{'them' if plural else 'it'} or remove {'them' if plural else 'it'} from "
        "spec.callbacks; the running Deployment is left as it was",
    )


IMAGE_PULL_REASONS: Final = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
_JOBS_IMPORT_RE = re.compile(r"cannot import jobs module '([^']+)': ([^\n]*)")
_REFUSED_ARG_RE = re.compile(r"(inequivalent arg '[^']+' for queue '[^']+'[^\n)]*)")
_KEEP = "; the pods of the previous version keep serving until this is fixed or reverted"


def queue_arguments_problem(refused: Sequence[str]) -> Problem:
    """Queues of the spec's names exist with arguments Roger never gives them (another
    queue type, another delay; ``builders.queue_plan``), or the broker refused a
    declaration: nothing is rolled out, the running pods keep their queues."""
    return Problem(
        R_QUEUE_ARGUMENTS_REFUSED,
        f"queues exist with arguments Roger cannot migrate ({'; '.join(refused)}): the "
        "Deployment was not rolled out and its pods keep their queues; revert the change in "
        "spec.queues, or delete or rename the queue on the broker",
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _crash_problem(pod: str, terminated: Mapping[str, Any]) -> Problem:
    """Why a worker container exited, from its termination message (its log's tail)."""
    text = str(terminated.get("message") or "")
    found = _JOBS_IMPORT_RE.search(text)
    if found:
        module, error = found.groups()
        return Problem(
            R_JOBS_IMPORT_FAILED,
            f"jobs module {module} does not import in pod {pod} ({error.strip()}): fix or "
            f"revert spec.jobs or spec.worker.image{_KEEP}",
            blocking=False,
        )
    found = _REFUSED_ARG_RE.search(text)
    if found or "refused the queue declarations" in text:
        detail = found.group(1) if found else _last_line(text)
        return Problem(
            R_QUEUE_ARGUMENTS_REFUSED,
            f"RabbitMQ refused the queue arguments of pod {pod} ({detail}){_KEEP}",
            blocking=False,
        )
    code = terminated.get("exitCode")
    why = _last_line(text) or str(terminated.get("reason") or "no message")
    return Problem(
        R_WORKER_CRASHING,
        f"worker container of pod {pod} exits (code {code}): {why}{_KEEP}",
        blocking=False,
    )


def pod_problems(pods: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """What keeps worker pods from running, one problem per distinct reason (pods in
    name order): an image that cannot be pulled, a container that keeps exiting.

    A container that is ready, or a pod being deleted, is no problem; a restart count
    alone is not either (the container recovered).
    """
    found: dict[str, Problem] = {}
    ordered = sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name")))
    for pod in ordered:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        name = str(meta.get("name"))
        images = {
            c.get("name"): c.get("image") for c in (pod.get("spec") or {}).get("containers") or ()
        }
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            if cs.get("ready"):
                continue
            state = cs.get("state") or {}
            waiting = state.get("waiting") or {}
            problem = None
            if waiting.get("reason") in IMAGE_PULL_REASONS:
                image = images.get(cs.get("name")) or cs.get("image")
                detail = waiting.get("message") or waiting["reason"]
                problem = Problem(
                    R_IMAGE_PULL_FAILED,
                    f"image {image} of pod {name} cannot be pulled ({waiting['reason']}: "
                    f"{detail}): fix or revert spec.worker.image{_KEEP}",
                    blocking=False,
                )
            else:
                terminated = state.get("terminated") or (cs.get("lastState") or {}).get(
                    "terminated"
                )
                if terminated and terminated.get("exitCode") not in (None, 0):
                    problem = _crash_problem(name, terminated)
            if problem is not None and problem.reason not in found:
                found[problem.reason] = problem
    return list(found.values())


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
    problems.extend(pod_problems(obs.pods or ()))
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
        if first:  # a rollout that cannot finish says why, not just "rolling out"
            ready_cond = _condition(READY, False, first.reason, first.message, gen, now, old)
        else:
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
