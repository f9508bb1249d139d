"""The Partition finalizer: stop the workers, then remove from RabbitMQ only what is empty.

Each call looks at the world afresh and either finishes (the finalizer goes) or raises
``NotYet`` to be called again, so an operator restart or a new leader resumes a deletion
where it stands. Every wait is bounded from the Partition's ``deletionTimestamp``:

- workers: ``terminationGracePeriodSeconds`` + ``ctx.delete_margin`` for their Pods to go
  and their deliveries to be settled; after that, whatever still holds jobs is kept;
- an unreachable RabbitMQ: ``ctx.delete_broker_timeout``; after that the finalizer goes
  with a Warning Event naming what was left behind.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from roger.core import naming
from roger_operator.builders import cleanup
from roger_operator.builders.model import (
    PartitionSpec,
    SpecError,
    child_name,
    owned_by,
    parse_partition,
    selector_string,
)
from roger_operator.handlers.context import Context, Key
from roger_operator.handlers.partition import (
    owner_token,
    publish_phases,
    read_amqp_url,
    remembered_amqp_url,
)
from roger_operator.kube import resource_path
from roger_operator.rabbit import BrokerError, ClaimConflict, inventory, migration
from roger_operator.rabbit.claims import owned, release_queues

log = logging.getLogger("roger_operator.deletion")
KEPT = "QueuesKept"
DELETED = "QueuesDeleted"
CHILD_KINDS = (
    "ConfigMap",
    "Service",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Deployment",
    "PodDisruptionBudget",
)


class NotYet(Exception):
    """Call again in ``delay`` seconds."""

    def __init__(self, why: str, delay: float) -> None:
        super().__init__(why)
        self.delay = delay


def since_deletion(body: Mapping[str, Any], now: datetime.datetime | None = None) -> float:
    """Seconds since the Partition was marked for deletion (0 when unknown)."""
    stamp = (body.get("metadata") or {}).get("deletionTimestamp")
    if not stamp:
        return 0.0
    try:
        when = datetime.datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return 0.0
    now = now or datetime.datetime.now(datetime.UTC)
    return (now - when.replace(tzinfo=datetime.UTC)).total_seconds()


def worker_deadline(ctx: Context, spec: PartitionSpec) -> float:
    return spec.grace_period + ctx.delete_margin


def delete(ctx: Context, body: Mapping[str, Any]) -> None:
    """Finalizer body; raises ``NotYet`` while workers run or RabbitMQ is unreachable."""
    try:
        spec = parse_partition(body)
    except SpecError:
        return
    key: Key = (spec.namespace, spec.name)
    ctx.deleting[key] = spec.uid  # before the lock: no reconcile starts after this one
    with ctx.lock(key):
        _delete(ctx, key, spec, body)
    ctx.forget(key)
    publish_phases(ctx, spec.namespace)
    for kind in CHILD_KINDS:
        ctx.applied.pop((kind, spec.namespace, child_name(spec.name)), None)
    prefix = f"{child_name(spec.name)}-"  # the config ConfigMaps (builders.config_maps)
    for record in [r for r in ctx.applied if r[0] == "ConfigMap" and r[1] == spec.namespace]:
        rest = record[2][len(prefix) :]
        if record[2].startswith(prefix) and len(rest) == 16 and rest.isalnum():
            ctx.applied.pop(record, None)


def _report(ctx: Context, key: Key, body: Mapping[str, Any], reason: str, message: str) -> None:
    warning = reason == KEPT
    (log.warning if warning else log.info)("Partition %s/%s: %s", *key, message)
    ctx.kube.event(body, reason=reason, message=message, type_="Warning" if warning else "Normal")


def stop_workers(ctx: Context, key: Key, spec: PartitionSpec) -> None:
    """Delete the worker Deployment if it is this Partition's; a Deployment of that name
    that someone else made (the reconcile could never apply over it) is left alone."""
    path = resource_path("apps/v1", "Deployment", spec.namespace, spec.child_name)
    live = ctx.kube.get(path)
    if live is None:
        return
    if not owned_by(live, spec.uid):
        log.warning(
            "Partition %s/%s: Deployment %s is not this Partition's (no owner reference to "
            "it): left alone",
            *key,
            spec.child_name,
        )
        return
    ctx.kube.delete(path, uid=str((live.get("metadata") or {}).get("uid")))


def _delete(ctx: Context, key: Key, spec: PartitionSpec, body: Mapping[str, Any]) -> None:
    stop_workers(ctx, key, spec)
    url, problem = read_amqp_url(ctx, spec)
    if url is None and (url := remembered_amqp_url(ctx, spec)) is not None:
        log.info("Partition %s/%s: its Secret is gone; deleting with the URL last read", *key)
    if url is None:
        why = problem.message if problem else "no AMQP URL"
        _report(ctx, key, body, KEPT, f"queues of {spec.partition_id} left in RabbitMQ: {why}")
        return
    elapsed = since_deletion(body)
    try:
        ctx.broker.claim(url, spec.partition_id, owner_token(spec))
    except ClaimConflict:
        return  # never ours: nothing to clean
    except BrokerError as exc:
        _broker_down(ctx, key, spec, body, elapsed, str(exc))
        return
    try:
        spec = owned(ctx.broker, url, spec, owner_token(spec))  # never another's queues
        facts, sampled = inventory.partition_facts(ctx.broker, url, spec)
        pods = _pods(ctx, spec)
        running = cleanup.still_running(facts, pods, bool(ctx.broker.management_port))
        if ctx.broker.management_port and not sampled:  # on, but did not answer this time
            running.append("RabbitMQ management API (unacked counts) not answering")
        if running and elapsed < worker_deadline(ctx, spec):
            raise NotYet(f"waiting for workers to stop: {'; '.join(running[:5])}", 2.0)
        verdicts = cleanup.decide(facts)
        inventory.delete(ctx.broker, url, verdicts, spec.partition_id)
        deleted, kept = cleanup.summary(verdicts)
        buried = {naming.buried_queue_name(spec.partition_id, q.name) for q in spec.queues}
        migration.drop_bounds(ctx.broker, url, [n for n in deleted if n in buried])
        if kept:
            late = f" (workers still running after {elapsed:.0f}s)" if running else ""
            _report(
                ctx,
                key,
                body,
                KEPT,
                f"deleted {len(deleted)} empty queues; kept {len(kept)}{late}: "
                f"{', '.join(kept)}; partition id {spec.partition_id} stays claimed by "
                f"{owner_token(spec)}",
            )
        else:
            ctx.broker.release(url, spec.partition_id, owner_token(spec))
            release_queues(ctx.broker, url, spec, owner_token(spec))
            message = f"deleted {len(deleted)} empty queues and streams of {spec.partition_id}"
            if deleted:
                _report(ctx, key, body, DELETED, message)
            else:  # a second pass (a retried finalizer, a new leader): nothing new to say
                log.info("Partition %s/%s: %s", *key, message)
        ctx.broker.forget_partition(url, spec.partition_id)
    except BrokerError as exc:
        _broker_down(ctx, key, spec, body, elapsed, str(exc))


def _broker_down(
    ctx: Context, key: Key, spec: PartitionSpec, body: Mapping[str, Any], elapsed: float, why: str
) -> None:
    if elapsed < ctx.delete_broker_timeout:
        log.warning(
            "Partition %s/%s: deletion waits for RabbitMQ (%.0f of %.0fs): %s",
            *key,
            elapsed,
            ctx.delete_broker_timeout,
            why,
        )
        raise NotYet(why, 10.0)
    _report(
        ctx,
        key,
        body,
        KEPT,
        f"RabbitMQ unreachable for {elapsed:.0f}s after deletion ({why}): every queue and "
        f"stream of partition {spec.partition_id} is left in RabbitMQ, and its claim "
        f"({owner_token(spec)}); delete them by hand if they are not needed: "
        f"{', '.join(n for n, _ in ctx.broker.declarations(spec))}",
    )


def _pods(ctx: Context, spec: PartitionSpec) -> int:
    path = resource_path("v1", "Pod", spec.namespace)
    found = ctx.kube.request("GET", path, query={"labelSelector": selector_string(spec.name)})
    return len((found or {}).get("items") or ())
