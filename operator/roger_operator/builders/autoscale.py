"""The autoscaling decision: counters and history in, desired replicas and a reason out.

Pure (no I/O, no clock): the operator's loop (``handlers/autoscale.py``) reads the broker,
calls ``decide`` and carries the decision out. The rules follow the HorizontalPodAutoscaler's
``behavior`` so they read the same to anyone who knows it:

- load: every unpaused queue's ready *and* running jobs, each job counting ``1/maxWorkers``
  (a pod runs ``maxWorkers`` jobs of that queue at once); a paused queue adds only its running
  jobs (they still need a pod to finish), never its waiting ones. Queues with ``maxWorkers: 0``
  are not consumed and count nothing.
- recommendation: ``ceil(load / targetBacklogPerReplica)`` within ``[min, max]``.
- stabilisation: scale up to the lowest recommendation of the scale-up window, down to the
  highest of the scale-down window (so a flapping input does not flap the pods).
- scale to zero only after ``scaleToZeroCooldownSeconds`` without any load.
- missing or stale counters: hold (never scale down, never to zero, on what was not seen).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

ENGINE_BUILTIN: Final = "builtin"
ENGINE_KEDA: Final = "keda"

DEFAULT_TARGET: Final = 1.0
DEFAULT_SCALE_UP_WINDOW: Final = 0.0
DEFAULT_SCALE_DOWN_WINDOW: Final = 300.0
DEFAULT_ZERO_COOLDOWN: Final = 300.0

# Event reasons (contracts: issue 16).
SCALED_UP: Final = "ScaledUp"
SCALED_DOWN: Final = "ScaledDown"
SCALED_TO_ZERO: Final = "ScaledToZero"
# Why it did not scale (status.autoscaling.reason).
WITHIN_TARGET: Final = "WithinTarget"
AT_MAX: Final = "AtMaxReplicas"
AT_MIN: Final = "AtMinReplicas"
STABILIZING_UP: Final = "ScaleUpStabilizing"
STABILIZING_DOWN: Final = "ScaleDownStabilizing"
COOLING_DOWN: Final = "ScaleToZeroCoolingDown"
NO_COUNTERS: Final = "CountersUnavailable"
STALE_COUNTERS: Final = "CountersStale"
RUNNING_UNKNOWN: Final = "RunningJobsUnknown"


@dataclass(frozen=True)
class AutoscalingSpec:
    """``spec.autoscaling`` with its defaults."""

    min_replicas: int
    max_replicas: int
    engine: str = ENGINE_BUILTIN
    target: float = DEFAULT_TARGET  # weighted backlog per replica
    scale_up_window: float = DEFAULT_SCALE_UP_WINDOW
    scale_down_window: float = DEFAULT_SCALE_DOWN_WINDOW
    zero_cooldown: float = DEFAULT_ZERO_COOLDOWN


@dataclass(frozen=True)
class QueueCounters:
    name: str
    ready: int
    running: int | None  # None: not known (the broker's management API did not answer)
    max_workers: int
    paused: bool = False


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class Inputs:
    now: float
    current: int  # spec.worker.replicas as it is now
    queues: Sequence[QueueCounters] | None  # None: the broker could not be read
    fresh: bool = True  # False: counters older than the operator trusts
    history: Sequence[Recommendation] = ()
    last_active: float | None = None  # when load was last seen above zero


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str  # an Event reason when desired != current, else why it held
    message: str
    backlog: int | None  # jobs acted on (ready + running counted), None without counters
    load: float | None  # the weighted backlog
    recommendation: int | None  # before stabilisation
    history: tuple[Recommendation, ...]
    last_active: float | None  # carried into the next Inputs

    @property
    def scales(self) -> bool:
        return self.reason in (SCALED_UP, SCALED_DOWN, SCALED_TO_ZERO)


class AutoscalingError(ValueError):
    """``spec.autoscaling`` the API server let through but that cannot be used."""


def parse_autoscaling(body: Mapping[str, Any]) -> AutoscalingSpec | None:
    """``spec.autoscaling`` of a Partition object, None when autoscaling is off."""
    raw = (body.get("spec") or {}).get("autoscaling")
    if not isinstance(raw, Mapping) or raw.get("enabled") is False:
        return None
    behavior = raw.get("behavior") or {}
    up = behavior.get("scaleUp") or {}
    down = behavior.get("scaleDown") or {}
    spec = AutoscalingSpec(
        min_replicas=int(raw.get("minReplicas", 1)),
        max_replicas=int(raw.get("maxReplicas", 1)),
        engine=str(raw.get("engine") or ENGINE_BUILTIN),
        target=float(raw.get("targetBacklogPerReplica", DEFAULT_TARGET)),
        scale_up_window=float(up.get("stabilizationWindowSeconds", DEFAULT_SCALE_UP_WINDOW)),
        scale_down_window=float(down.get("stabilizationWindowSeconds", DEFAULT_SCALE_DOWN_WINDOW)),
        zero_cooldown=float(raw.get("scaleToZeroCooldownSeconds", DEFAULT_ZERO_COOLDOWN)),
    )
    if spec.max_replicas < 1 or spec.min_replicas < 0 or spec.min_replicas > spec.max_replicas:
        raise AutoscalingError("spec.autoscaling needs 0 <= minReplicas <= maxReplicas, max >= 1")
    if spec.target <= 0:
        raise AutoscalingError("spec.autoscaling.targetBacklogPerReplica must be above 0")
    return spec


def needs_evaluation(body: Mapping[str, Any]) -> bool:
    """Whether a Partition needs the builtin autoscaler's timer: it asks for the builtin
    engine, or it still shows a ``status.autoscaling`` that must be cleared. Every other
    Partition gets no timer at all: a timer each, every 5 s, parsing the spec to find
    nothing to do, is 100 evaluations a second at 500 Partitions."""
    raw = (body.get("spec") or {}).get("autoscaling")
    wants = (
        isinstance(raw, Mapping)
        and raw.get("enabled") is not False
        and str(raw.get("engine") or ENGINE_BUILTIN) == ENGINE_BUILTIN
    )
    return wants or bool((body.get("status") or {}).get("autoscaling"))


def weighted_load(queues: Sequence[QueueCounters]) -> tuple[int, float]:
    """(jobs counted, weighted load) of the queues, as the module docstring says."""
    jobs = 0
    load = 0.0
    for q in queues:
        if q.max_workers <= 0:
            continue
        counted = (q.running or 0) + (0 if q.paused else q.ready)
        jobs += counted
        load += counted / q.max_workers
    return jobs, load


def _clamp(value: int, spec: AutoscalingSpec) -> int:
    return max(spec.min_replicas, min(spec.max_replicas, value))


def _hold(
    spec: AutoscalingSpec, inputs: Inputs, reason: str, message: str, history: Sequence[Any]
) -> Decision:
    """Keep the current count (within bounds, but never down to zero on missing data)."""
    desired = _clamp(inputs.current, spec)
    if desired == 0 and inputs.current > 0:
        desired = inputs.current
    if desired != inputs.current:
        reason = SCALED_UP if desired > inputs.current else SCALED_DOWN
        message = f"{message}; replicas brought within [{spec.min_replicas}, {spec.max_replicas}]"
    return Decision(desired, reason, message, None, None, None, tuple(history), inputs.last_active)


def decide(spec: AutoscalingSpec, inputs: Inputs) -> Decision:
    """The replicas the Partition should run now, and why."""
    now = inputs.now
    keep = max(spec.scale_up_window, spec.scale_down_window)
    history = [r for r in inputs.history if now - r.at <= keep]
    # No memory at all (first look, operator restart): for scale-down, as if the current
    # count had just been recommended, so a restart never shortens the scale-down window.
    # (A memory whose entries all aged out is no reason to wait: they are older than it.)
    fresh_start = not inputs.history and spec.scale_down_window > 0
    seed = [Recommendation(now, inputs.current)] if fresh_start else []
    history = history or list(seed)
    if inputs.queues is None:
        return _hold(spec, inputs, NO_COUNTERS, "broker counters unavailable: holding", history)
    if not inputs.fresh:
        return _hold(spec, inputs, STALE_COUNTERS, "broker counters are stale: holding", history)

    jobs, load = weighted_load(inputs.queues)
    # Never seen busy (new Partition, lost status): the cooldown starts now.
    last_active = now if load > 0 or inputs.last_active is None else inputs.last_active
    need = math.ceil(load / spec.target - 1e-9)
    raw = _clamp(need, spec)
    history.append(Recommendation(now, raw))
    up_recs = [r.replicas for r in history[len(seed) :] if now - r.at <= spec.scale_up_window]
    down_recs = [r.replicas for r in history if now - r.at <= spec.scale_down_window]
    up_to = min(up_recs)  # both hold at least the new recommendation
    down_to = max(down_recs)
    current = inputs.current
    desired = current
    if desired < up_to:
        desired = up_to
    if desired > down_to:
        desired = down_to
    desired = _clamp(desired, spec)

    what = f"backlog {jobs} jobs (weighted {load:g}), target {spec.target:g} per replica"
    unknown_running = any(q.running is None for q in inputs.queues if q.max_workers > 0)
    reason = WITHIN_TARGET
    if desired < current and unknown_running:
        desired = max(desired, min(current, spec.max_replicas))
        reason = RUNNING_UNKNOWN
    if desired == 0 and current > 0:
        idle = now - last_active
        if idle < spec.zero_cooldown:
            desired = 1
            reason = COOLING_DOWN
            what += f"; idle {idle:.0f}s of {spec.zero_cooldown:g}s before zero"

    if desired > current:
        reason = SCALED_UP
    elif desired < current:
        reason = SCALED_TO_ZERO if desired == 0 else SCALED_DOWN
    elif reason == WITHIN_TARGET:
        if need > current:
            reason = AT_MAX if current >= spec.max_replicas else STABILIZING_UP
        elif need < current:
            reason = AT_MIN if current <= spec.min_replicas else STABILIZING_DOWN
    message = f"{what}: {current} -> {desired} replicas (recommended {raw})"
    return Decision(desired, reason, message, jobs, load, raw, tuple(history), last_active)


@dataclass(frozen=True)
class Memory:
    """What the loop keeps between evaluations of one Partition (in the operator's memory;
    ``last_active`` also in ``status.autoscaling.lastActiveTime`` to survive a restart)."""

    history: tuple[Recommendation, ...] = ()
    last_active: float | None = None
    last_scale: float | None = None
    event: tuple[str, str, int, float] | None = None  # (reason, Event name, count, at)
    reason: str | None = None  # the last decision's (logged when it changes)
    scaled: tuple[int, int] | None = None  # (resourceVersion after our scale, replicas set)


EVENT_SERIES_SECONDS: Final = 600.0  # the same reason again within this: one Event, counted
DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"


def event_action(
    memo: tuple[str, str, int, float] | None, reason: str, now: float
) -> tuple[str, int] | None:
    """Fold into the last Event (its name and new count), or None for a new Event."""
    if memo is None:
        return None
    last_reason, name, count, at = memo
    if last_reason == reason and now - at <= EVENT_SERIES_SECONDS:
        return name, count + 1
    return None


def deletion_costs(pods: Sequence[Mapping[str, Any]], running: Mapping[str, int]) -> dict[str, str]:
    """The pod-deletion-cost each worker Pod should carry, for those whose value differs.

    The cost is the pod's running jobs (from its heartbeats): the ReplicaSet controller
    removes the cheapest pods first, so idle workers go before busy ones. A pod with no
    heartbeat yet (starting) runs nothing: cost 0.
    """
    out: dict[str, str] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        name = str(meta.get("name"))
        want = str(running.get(name, 0))
        if (meta.get("annotations") or {}).get(DELETION_COST) != want:
            out[name] = want
    return out
