"""Partition reconcile: read (Partition, Callbacks, Secret, broker) -> build -> apply.

Level-triggered: every call computes everything from the current state, so it is the
same function for create, update, operator restart, a drifted or deleted child, a changed
Callback and the periodic refresh.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from roger.core.partition_ref import PartitionRefError, secret_value
from roger_operator import metrics
from roger_operator.builders import status as st
from roger_operator.builders.disruption import disruption_budget, pod_disruption_budget
from roger_operator.builders.manifests import build_children
from roger_operator.builders.model import (
    CallbackResource,
    PartitionSpec,
    SpecError,
    parse_callback,
    parse_partition,
    selector_string,
)
from roger_operator.builders.queue_plan import rollout_finished
from roger_operator.handlers import configs, keda
from roger_operator.handlers.context import Context, Key
from roger_operator.handlers.tenancy import (
    callback_config_problems,
    callback_rejection,
    queue_conflict_problem,
    queue_naming_problem,
)
from roger_operator.kube import KubeError, resource_path
from roger_operator.kube.client import partition_path
from roger_operator.rabbit import BrokerBusy, BrokerError, ClaimConflict
from roger_operator.rabbit.claims import QueueNameConflict, claim_queues

log = logging.getLogger("roger_operator.partition")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owner_token(spec: PartitionSpec) -> str:
    return f"{spec.namespace}/{spec.name}"


def resolve_callbacks(
    ctx: Context, spec: PartitionSpec
) -> tuple[list[CallbackResource], list[str]]:
    """The Partition's Callbacks in its order, and the names that do not exist."""
    found: list[CallbackResource] = []
    missing: list[str] = []
    for name in spec.callbacks:
        cb = ctx.callbacks.get((spec.namespace, name))
        if cb is None:  # the watch may not have delivered it yet
            path = resource_path("roger.dev/v1alpha1", "Callback", spec.namespace, name)
            obj = ctx.kube.get(path)
            if obj is not None:
                cb = parse_callback(obj)
                ctx.callbacks[(spec.namespace, name)] = cb
        if cb is None:
            missing.append(name)
        else:
            found.append(cb)
    return found, missing


def url_key(spec: PartitionSpec) -> tuple[str, str, str]:
    """Where ``ctx.urls`` keeps the URL read from the Partition's Secret reference."""
    return spec.namespace, spec.secret_name, spec.secret_key


def read_amqp_url(ctx: Context, spec: PartitionSpec) -> tuple[str | None, st.Problem | None]:
    """The URL from the Secret (kept in memory only), or the problem that prevents it."""
    secret = ctx.kube.get(resource_path("v1", "Secret", spec.namespace, spec.secret_name))
    if secret is None:
        return None, st.Problem(
            st.R_SECRET_NOT_FOUND,
            f"Secret {spec.secret_name} (spec.amqp.secretRef) not found in namespace "
            f"{spec.namespace}: create it with the amqp:// URL under key {spec.secret_key}; "
            "the running Deployment is left as it was",
        )
    try:
        url = secret_value(secret, spec.secret_key)
    except PartitionRefError:
        return None, st.Problem(
            st.R_SECRET_NOT_FOUND,
            f"Secret {spec.secret_name} key {spec.secret_key} is not a valid text value",
        )
    if not url:
        return None, st.Problem(
            st.R_SECRET_NOT_FOUND,
            f"Secret {spec.secret_name} has no key {spec.secret_key} (spec.amqp.secretRef.key): "
            "add the amqp:// URL under that key; the running Deployment is left as it was",
        )
    ctx.urls[url_key(spec)] = (url, time.monotonic())
    return url, None


def cached_amqp_url(ctx: Context, spec: PartitionSpec) -> str | None:
    """The URL read by a recent reconcile, else from the Secret (status refresh only)."""
    cached = ctx.urls.get(url_key(spec))
    if cached and time.monotonic() - cached[1] < ctx.url_ttl:
        return cached[0]
    return read_amqp_url(ctx, spec)[0]


def remembered_amqp_url(ctx: Context, spec: PartitionSpec) -> str | None:
    """The URL a reconcile last read from this Secret reference, however old.

    For the finalizer only: deleting a namespace deletes its Secrets at the same moment as
    it marks its Partitions, so the Secret is usually gone when the finalizer needs the URL
    to delete the empty queues (the broker's claim still guards whose queues they are)."""
    cached = ctx.urls.get(url_key(spec))
    return cached[0] if cached else None


def _remember(ctx: Context, live: Mapping[str, Any]) -> None:
    meta = live.get("metadata") or {}
    key = (str(live.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
    ctx.applied[key] = (str(meta.get("resourceVersion", "")), int(meta.get("generation") or 0))


def _drop_disruption_budget(ctx: Context, spec: PartitionSpec) -> None:
    """Delete the PodDisruptionBudget this process applied, once the spec drops it."""
    record = ("PodDisruptionBudget", spec.namespace, spec.child_name)
    if ctx.applied.pop(record, None) is not None:
        ctx.kube.delete(resource_path("policy/v1", "PodDisruptionBudget", *record[1:]))


def _deployment_path(spec: PartitionSpec) -> str:
    return resource_path("apps/v1", "Deployment", spec.namespace, spec.child_name)


def worker_pods(ctx: Context, spec: PartitionSpec) -> list[Any] | None:
    """The Partition's worker pods (why a rollout cannot finish); None if unreadable."""
    try:
        found = ctx.kube.request(
            "GET",
            resource_path("v1", "Pod", spec.namespace),
            query={"labelSelector": selector_string(spec.name)},
        )
    except KubeError as exc:
        log.warning("Partition %s/%s: cannot list its pods: %s", spec.namespace, spec.name, exc)
        return None
    return list((found or {}).get("items") or ())


def drain_retired(
    ctx: Context, key: Key, url: str, spec: PartitionSpec, deployment: Mapping[str, Any] | None
) -> None:
    """Delete the retry queues no level uses any more once they are empty and no pod of an
    older config runs (``builders.queue_plan``); until then the refresh comes back."""
    if not ctx.broker.retired(url, spec.partition_id):
        ctx.drains_pending.discard(key)
        return
    ctx.drains_pending.add(key)
    if rollout_finished(deployment) and not ctx.broker.drain_retired(url, spec):
        ctx.drains_pending.discard(key)


def broker_problem(ctx: Context, key: Key, exc: BrokerError, blocking: bool = False) -> st.Problem:
    """``BrokerUnavailable``; when the broker is only busy, the Partition is reconciled again
    as soon as the call it waited for has ended (not at the next refresh or event)."""
    if isinstance(exc, BrokerBusy):
        ctx.retry_when_done(key, exc)
    return st.Problem(st.R_BROKER_UNAVAILABLE, str(exc), blocking=blocking)


def write_status(
    ctx: Context, key: Key, body: Mapping[str, Any], status: Mapping[str, Any]
) -> None:
    previous = ctx.written.get(key, body.get("status"))
    if not st.status_changed(previous, status):
        return
    try:
        ctx.kube.patch_partition_status(key[0], key[1], status)
    except KubeError as exc:
        if exc.status == 404:
            return
        raise
    ctx.written[key] = status
    ready = st.condition(status, st.READY)
    ctx.set_phase(key, "Ready" if ready and ready["status"] == "True" else "NotReady")
    publish_phases(ctx, key[0])


def publish_phases(ctx: Context, namespace: str) -> None:
    """``roger_operator_partitions{partition_namespace,phase}`` from the phases last written."""
    for phase, count in ctx.phase_counts(namespace).items():
        metrics.PARTITIONS.labels(namespace, phase).set(count)


def change_of(body: Mapping[str, Any]) -> tuple[str, int]:
    """What a reconcile builds from: the object (uid) and its spec's version (generation;
    the API server bumps it on every spec change, and nothing else of the object is read)."""
    meta = body.get("metadata") or {}
    return str(meta.get("uid", "")), int(meta.get("generation") or 0)


def already_handled(ctx: Context, key: Key, body: Mapping[str, Any], trigger: str) -> bool:
    """A change kopf hands over again, although its last reconcile ended without a problem.

    kopf patches each Partition it handles and waits (``cli.CONSISTENCY_TIMEOUT_SECONDS``)
    for the watch to bring that version back; when it comes later still (hundreds of
    Partitions created at once on a busy machine), kopf runs the create handler once more
    on the older body. An older generation than the one handled is skipped too: the spec
    has moved on since, and applying it would roll the children back. Only ``change`` is
    skipped: a repair, a drift, a changed Callback or a refresh has its own reason to run,
    and a restarted operator remembers nothing."""
    handled = ctx.handled.get(key)
    uid, generation = change_of(body)
    return (
        trigger == "change"
        and handled is not None
        and handled[0] == uid
        and generation <= handled[1]
    )


def reconcile(ctx: Context, body: Mapping[str, Any], trigger: str = "reconcile") -> None:
    """Bring one Partition's children, queues and status to its spec."""
    meta = body.get("metadata") or {}
    key: Key = (str(meta.get("namespace")), str(meta.get("name")))
    if meta.get("deletionTimestamp"):
        return
    started = time.monotonic()
    result = "ok"
    with ctx.lock(key):
        if ctx.being_deleted(key, body):  # took its body before the deletion began
            return
        if already_handled(ctx, key, body, trigger):
            metrics.RECONCILES.labels("Partition", "unchanged", trigger).inc()
            return
        ctx.handled.pop(key, None)  # remembered again only if this one ends clean
        try:
            clean = _reconcile(ctx, key, body)
        except Exception:
            result = "error"
            metrics.ERRORS.labels("Partition", trigger).inc()
            raise
        finally:
            metrics.RECONCILES.labels("Partition", result, trigger).inc()
            metrics.RECONCILE_DURATION.labels("Partition").observe(time.monotonic() - started)
        if clean:
            ctx.handled[key] = change_of(body)


def _reconcile(ctx: Context, key: Key, body: Mapping[str, Any]) -> bool:
    """One reconcile; whether it ended without a problem (nothing a rerun could fix)."""
    try:
        spec = parse_partition(body)
    except SpecError as exc:
        log.warning("Partition %s/%s cannot be built: %s", *key, exc)
        return False
    previous = body.get("status") or {}
    problems: list[st.Problem] = []
    resolved, missing = resolve_callbacks(ctx, spec)
    if missing:
        problems.append(st.callbacks_problem(spec, missing))
    problems.extend(callback_config_problems(ctx, spec, resolved))
    url, secret_problem = read_amqp_url(ctx, spec)
    if secret_problem:
        problems.append(secret_problem)

    claimed: str | None = None
    stats = None
    naming_problem = queue_naming_problem(spec)
    if naming_problem:
        problems.insert(0, naming_problem)
    elif url:
        try:
            ctx.broker.claim(url, spec.partition_id, owner_token(spec))
            claim_queues(ctx.broker, url, spec, owner_token(spec))
            claimed = spec.partition_id
        except QueueNameConflict as exc:
            problems.insert(0, queue_conflict_problem(spec, exc))
        except ClaimConflict as exc:
            problems.insert(
                0,
                st.Problem(
                    st.R_ID_CONFLICT,
                    f"RabbitMQ partition {spec.partition_id!r} already belongs to Partition "
                    f"{exc.owner}; set spec.partitionId to an id no other Partition uses on "
                    "this broker (queues are never shared)",
                ),
            )
        except BrokerError as exc:
            before = previous.get("partitionId") == spec.partition_id
            problems.append(broker_problem(ctx, key, exc, blocking=not before))

    if url and claimed:
        # Before the pods: a template whose queues the broker refuses is never rolled out
        # (its pods could only crash-loop); the running pods keep their queues.
        try:
            refused = ctx.broker.declare(url, spec)
        except BrokerError as exc:
            refused = []
            problems.append(broker_problem(ctx, key, exc))
        if refused:
            problems.append(st.queue_arguments_problem(refused))

    blocked = any(p.blocking for p in problems)
    deployment: Mapping[str, Any] | None = None
    digest: str | None = None
    if not blocked:
        children, digest = build_children(spec, resolved)
        budget = disruption_budget(body)
        if budget is not None:
            children.append(pod_disruption_budget(spec, budget))
        scaler = keda.wanted(body, spec)  # after the Deployment: no KEDA, workers all the same
        children.extend(scaler)
        try:
            if budget is None:
                _drop_disruption_budget(ctx, spec)
            keda.drop_unwanted(ctx, spec, scaler)
            for manifest in children:
                live = ctx.kube.apply(manifest)
                _remember(ctx, live)
                if manifest["kind"] == "Deployment":
                    deployment = ctx.remember_deployment(key, live)
                    ctx.configs_pending.add(key)
        except KubeError as exc:
            problems.append(st.Problem(st.R_APPLY_FAILED, f"server-side apply failed: {exc}"))
            metrics.ERRORS.labels("Partition", "apply").inc()
    if deployment is None:
        deployment = ctx.kube.get(_deployment_path(spec))
    rejected = callback_rejection(ctx, spec, digest)
    if rejected:  # the pods of this config cannot run: what to fix first
        problems.insert(0, rejected)

    if url and claimed and not blocked:
        try:
            ctx.broker.set_paused(url, spec)
            stats = ctx.broker.stats(url, spec)
            drain_retired(ctx, key, url, spec, deployment)
        except BrokerError as exc:
            problems.append(broker_problem(ctx, key, exc))
            metrics.ERRORS.labels("Partition", "broker").inc()

    pods = worker_pods(ctx, spec)
    configs.collect(ctx, spec, deployment, pods)
    obs = st.Observation(
        spec=spec,
        missing_callbacks=tuple(missing),
        problems=tuple(problems),
        deployment=deployment,
        queue_stats=stats,
        stats_time=now() if stats is not None else None,
        claimed_id=claimed,
        config_hash=digest,
        pods=pods,
    )
    write_status(ctx, key, body, st.compute_status(previous, obs, now()))
    return not problems


def refresh(
    ctx: Context, body: Mapping[str, Any], deployment: Any = None, with_stats: bool = True
) -> None:
    """Status only: Deployment replicas and queue stats (no writes to children)."""
    meta = body.get("metadata") or {}
    key: Key = (str(meta.get("namespace")), str(meta.get("name")))
    if meta.get("deletionTimestamp"):
        return
    with ctx.lock(key):
        if not ctx.holds(key, body):  # deleted (or being deleted) since its body was taken
            return
        try:
            spec = parse_partition(body)
        except SpecError:
            return
        previous = ctx.written.get(key) or body.get("status") or {}
        ready = st.condition(previous, st.READY)
        observed = previous.get("observedGeneration")
        if (
            observed != spec.generation
            or not ready
            or ready.get("reason")
            in (
                st.R_SECRET_NOT_FOUND,
                st.R_CALLBACK_NOT_FOUND,
                st.R_ID_CONFLICT,
                st.R_QUEUE_NAME_CONFLICT,
                st.R_CALLBACK_REJECTED,
                st.R_BROKER_UNAVAILABLE,
                st.R_APPLY_FAILED,
                st.R_DEPLOYMENT_MISSING,
                st.R_QUEUE_ARGUMENTS_REFUSED,
            )
        ):
            if (
                not with_stats
                and key in ctx.broker_waits
                and observed == spec.generation
                and ready
                and ready.get("reason") == st.R_BROKER_UNAVAILABLE
            ):
                return  # its broker call goes on: once it ends, ctx.wake reconciles it
            # Blocked or never finished: retry the whole reconcile (level-triggered).
            reconcile(ctx, body, "refresh" if with_stats else "deployment")
            return
        if deployment is not None:
            deployment = ctx.remember_deployment(key, deployment)
        else:
            deployment = ctx.deployments.get(key) or ctx.kube.get(_deployment_path(spec))
            if deployment is None:
                reconcile(ctx, body, "repair")
                return
        if with_stats and callback_rejection(ctx, spec, previous.get("configHash")):
            reconcile(ctx, body, "refresh")  # a new rejection: the whole status again
            return
        stats = None
        if with_stats:
            url = cached_amqp_url(ctx, spec)
            if url:
                try:
                    # A Ready Partition has no "next reconcile" until an event comes, so
                    # the work an earlier declare left for it (a listing that failed, a
                    # bound policy, an intake still to replace), or that this process
                    # never did, is finished here; nothing left: no broker call.
                    declaring = not ctx.broker.declared(url, spec)
                    if declaring and ctx.broker.declare(url, spec):
                        reconcile(ctx, body, "refresh")  # refused now: the whole status
                        return
                    stats = ctx.broker.stats(url, spec)
                    if declaring or key in ctx.drains_pending:
                        drain_retired(ctx, key, url, spec, deployment)
                except BrokerError:
                    stats = None
                    ctx.urls.pop(url_key(spec), None)
        problems = tuple(
            st.Problem(c["reason"], c["message"], blocking=False)
            for c in [st.condition(previous, st.DEGRADED) or {}]
            if c.get("status") == "True" and c.get("reason") not in st.DERIVED_REASONS
        )
        pods = worker_pods(ctx, spec)
        configs.collect(ctx, spec, deployment, pods)
        obs = st.Observation(
            spec=spec,
            problems=problems,
            deployment=deployment,
            pods=pods,
            queue_stats=stats,
            stats_time=now() if stats is not None else None,
        )
        write_status(ctx, key, body, st.compute_status(previous, obs, now()))


def status_from_deployment(ctx: Context, key: Key, deployment: Mapping[str, Any]) -> None:
    """A Deployment's status moved: recompute the Partition's status (no broker call)."""
    body = ctx.partitions.get(key)
    if body is None:
        return
    refresh(ctx, body, deployment=deployment, with_stats=False)


def get_partition(ctx: Context, key: Key) -> Mapping[str, Any] | None:
    body: Mapping[str, Any] | None = ctx.kube.get(partition_path(*key))
    return body
