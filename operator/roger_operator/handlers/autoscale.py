"""The autoscaling loop: broker counters -> ``builders.autoscale.decide`` -> the scale
subresource, ``status.autoscaling``, an Event, and each worker Pod's deletion cost.

Who wins (docs/autoscaling.md): while ``spec.autoscaling`` is on (engine builtin), the
operator owns ``spec.worker.replicas`` and writes it through the Partition's scale
subresource, as a HorizontalPodAutoscaler does. A ``kubectl scale`` or an edit of
``spec.worker.replicas`` is taken as the current count at the next evaluation and moved to
the decision from there (within min/max at once, otherwise through the stabilisation
windows). Without ``spec.autoscaling`` nothing here touches the replicas.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from roger_operator.builders import autoscale as a
from roger_operator.builders.model import SpecError, parse_partition, selector_string
from roger_operator.handlers.context import Context, Key
from roger_operator.handlers.partition import cached_amqp_url, url_key
from roger_operator.kube import KubeError, resource_path
from roger_operator.kube.client import MERGE_CONTENT_TYPE, partition_path
from roger_operator.rabbit import BrokerError
from roger_operator.rabbit import load as broker_load

log = logging.getLogger("roger_operator.autoscale")
AUTOSCALER_MANAGER = "roger-operator-autoscaler"  # field manager of its Deployment scaling


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: Any) -> float | None:
    try:
        return (
            datetime.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ")
            .replace(tzinfo=datetime.UTC)
            .timestamp()
        )
    except ValueError:
        return None


def _write_status(ctx: Context, key: Key, value: Mapping[str, Any] | None) -> None:
    """Merge ``status.autoscaling`` (None removes it) and keep the status cache in step."""
    written = dict(ctx.written.get(key) or {})
    if written.get("autoscaling") == value and key in ctx.written:
        return
    try:
        ctx.kube.patch_status_field(partition_path(*key), "autoscaling", value)
    except KubeError as exc:
        if exc.status != 404:
            log.warning("Partition %s/%s: status.autoscaling not written: %s", *key, exc)
        return
    if key in ctx.written:
        if value is None:
            written.pop("autoscaling", None)
        else:
            written["autoscaling"] = dict(value)
        ctx.written[key] = written


def evaluate(ctx: Context, body: Mapping[str, Any]) -> a.Decision | None:
    """One evaluation of one Partition; the decision carried out (None: not autoscaled)."""
    meta = body.get("metadata") or {}
    key: Key = (str(meta.get("namespace")), str(meta.get("name")))
    if meta.get("deletionTimestamp"):
        return None
    previous = (body.get("status") or {}).get("autoscaling")
    try:
        auto = a.parse_autoscaling(body)
        spec = parse_partition(body)
    except (a.AutoscalingError, SpecError) as exc:
        log.warning("Partition %s/%s: autoscaling off: %s", *key, exc)
        return None
    if auto is None or auto.engine != a.ENGINE_BUILTIN:
        ctx.autoscale.pop(key, None)
        if previous:
            with ctx.lock(_lock_key(key)):
                _write_status(ctx, key, None)
        return None
    with ctx.lock(_lock_key(key)):
        return _evaluate(ctx, key, body, auto, spec, previous or {})


def _rv(obj: Mapping[str, Any]) -> int:
    """resourceVersion as a number (etcd revisions: what the watch cache compares too)."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _lock_key(key: Key) -> Key:
    """A lock of its own: a reconcile stuck on a slow broker (it holds the Partition's lock
    while declaring queues) must not stop the workers from following the backlog. A status
    write of a concurrent reconcile may carry an older status.autoscaling: the next
    evaluation writes it again."""
    return key[0], f"{key[1]}#autoscale"


def _evaluate(
    ctx: Context,
    key: Key,
    body: Mapping[str, Any],
    auto: a.AutoscalingSpec,
    spec: Any,
    previous: Mapping[str, Any],
) -> a.Decision:
    memory = ctx.autoscale.get(key) or a.Memory(
        last_active=_epoch(previous.get("lastActiveTime")),
        last_scale=_epoch(previous.get("lastScaleTime")),
    )
    url = cached_amqp_url(ctx, spec)
    queues = None
    if url:
        try:
            queues = broker_load.queue_counters(ctx.broker, url, spec)
        except BrokerError as exc:
            log.info("Partition %s/%s: holding replicas: %s", *key, exc)
            ctx.urls.pop(url_key(spec), None)
    now = time.time()
    current = spec.replicas
    if memory.scaled is not None and _rv(body) < memory.scaled[0]:
        current = memory.scaled[1]  # the watch has not shown our own scale yet
    scaled = memory.scaled
    decision = a.decide(
        auto,
        a.Inputs(now, current, queues, True, memory.history, memory.last_active),
    )
    if url and queues is not None and current >= 2:
        update_deletion_costs(ctx, spec, url)  # before any scale-down: idle pods go first
    last_scale, event = memory.last_scale, memory.event
    if decision.reason != (memory.reason or previous.get("reason")) and not decision.scales:
        log.info("Partition %s/%s: %s: %s", *key, decision.reason, decision.message)
    if decision.desired != current:
        try:
            done = ctx.kube.scale_partition(key[0], key[1], decision.desired)
        except KubeError as exc:
            log.warning("Partition %s/%s: scaling to %d failed: %s", *key, decision.desired, exc)
            return decision
        last_scale = now
        scaled = (_rv(done or {}), decision.desired)
        scale_deployment(ctx, spec, decision.desired)
        log.info("Partition %s/%s: %s: %s", *key, decision.reason, decision.message)
        event = _event(ctx, body, decision, event, now)
    ctx.autoscale[key] = a.Memory(
        decision.history, decision.last_active, last_scale, event, decision.reason, scaled
    )
    status: dict[str, Any] = {
        "desired": decision.desired,
        "current": current,
        "reason": decision.reason,
        "message": decision.message,
    }
    if decision.backlog is not None:
        status["backlog"] = decision.backlog
        status["weightedBacklog"] = round(decision.load or 0.0, 3)
    elif "backlog" in previous:
        status["backlog"] = previous["backlog"]
    if last_scale is not None:
        status["lastScaleTime"] = _iso(last_scale)
    if decision.last_active is not None:
        status["lastActiveTime"] = _iso(decision.last_active)
    _write_status(ctx, key, status)
    return decision


def _event(
    ctx: Context,
    body: Mapping[str, Any],
    decision: a.Decision,
    memo: tuple[str, str, int, float] | None,
    now: float,
) -> tuple[str, str, int, float] | None:
    """One Event per scale decision; the same reason again soon is counted in its series."""
    namespace = str((body.get("metadata") or {}).get("namespace"))
    again = a.event_action(memo, decision.reason, now)
    if again is not None and ctx.kube.event_again(namespace, again[0], again[1], decision.message):
        return decision.reason, again[0], again[1], now
    name = ctx.kube.event(body, reason=decision.reason, message=decision.message, action="Scale")
    return (decision.reason, name, 1, now) if name else None


def scale_deployment(ctx: Context, spec: Any, replicas: int) -> None:
    """Scale the worker Deployment at once. The reconcile that the new spec.worker.replicas
    triggers applies the same count, but it also needs the broker (claim, declare): a slow
    or unreachable broker must not keep the workers from following the backlog."""
    path = resource_path("apps/v1", "Deployment", spec.namespace, spec.child_name)
    try:
        ctx.kube.request(
            "PATCH",
            path,
            query={"fieldManager": AUTOSCALER_MANAGER},
            body={"spec": {"replicas": replicas}},
            content_type=MERGE_CONTENT_TYPE,
        )
    except KubeError as exc:
        if exc.status != 404:  # none yet: the reconcile creates it with the new count
            log.warning("Deployment %s/%s not scaled: %s", spec.namespace, spec.child_name, exc)


def update_deletion_costs(ctx: Context, spec: Any, url: str) -> None:
    """Keep each worker Pod's pod-deletion-cost at its running jobs (best effort)."""
    try:
        running = broker_load.running_per_pod(url, spec.partition_id)
        pods = ctx.kube.pods(spec.namespace, selector_string(spec.name))
    except (BrokerError, KubeError) as exc:
        log.info("Partition %s/%s: deletion costs not updated: %s", spec.namespace, spec.name, exc)
        return
    for name, cost in a.deletion_costs(pods, running).items():
        try:
            ctx.kube.annotate(
                resource_path("v1", "Pod", spec.namespace, name), {a.DELETION_COST: cost}
            )
        except KubeError as exc:
            if exc.status != 404:
                log.info("Pod %s/%s: deletion cost not set: %s", spec.namespace, name, exc)
