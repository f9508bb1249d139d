"""kopf handlers: thin wrappers that hand plain dicts to the reconcile functions.

``register`` wires them into a registry, so nothing registers at import time and the same
functions are callable from tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Final

import kopf

from roger_operator.builders import autoscale as autoscale_builders
from roger_operator.builders import schedule as schedule_builders
from roger_operator.builders.model import (
    CALLBACK_PLURAL,
    GROUP,
    LABEL_MANAGED_BY,
    MANAGER,
    PARTITION_KIND,
    PLURAL,
    VERSION,
    parse_callback,
    parse_partition,
)
from roger_operator.handlers import autoscale, deletion, partition, schedule
from roger_operator.handlers.context import Context, Key, without_managed_fields
from roger_operator.handlers.refresher import Refresher
from roger_operator.kube import session
from roger_operator.rabbit import Stopping

log = logging.getLogger("roger_operator.handlers")

CHILDREN: Final = (
    ("apps", "v1", "deployments"),
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("", "v1", "serviceaccounts"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    ("policy", "v1", "poddisruptionbudgets"),
)


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a kopf body, without ``managedFields`` (kept in caches)."""
    return copy.deepcopy(dict(without_managed_fields(body)))


def _key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace")), str(meta.get("name"))


def owner_key(body: Mapping[str, Any]) -> Key | None:
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        if (
            ref.get("kind") == PARTITION_KIND
            and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/")
            and ref.get("controller")
        ):
            return str(meta.get("namespace")), str(ref.get("name"))
    return None


def on_partition(ctx: Context, body: Mapping[str, Any]) -> None:
    data = plain(body)
    ctx.partitions[_key(data)] = data
    partition.reconcile(ctx, data, "change")


def on_partition_event(ctx: Context, event: Mapping[str, Any]) -> None:
    body = event.get("object") or {}
    key = _key(body)
    if event.get("type") == "DELETED":
        ctx.partitions.pop(key, None)
        ctx.deleting.pop(key, None)
    else:
        ctx.partitions[key] = plain(body)


def on_callback_event(ctx: Context, event: Mapping[str, Any]) -> None:
    """Keep the Callback cache; a change re-reconciles the Partitions that use it."""
    body = event.get("object") or {}
    key = _key(body)
    if event.get("type") == "DELETED":
        ctx.callbacks.pop(key, None)
    else:
        cb = parse_callback(body)
        old = ctx.callbacks.get(key)
        ctx.callbacks[key] = cb
        if old is not None and (old.module, old.hooks, old.config) == (
            cb.module,
            cb.hooks,
            cb.config,
        ):
            return
    if event.get("type") is None:  # initial listing: resume handlers cover it
        return
    namespace, name = key
    for pkey, pbody in list(ctx.partitions.items()):
        if pkey[0] == namespace and name in ((pbody.get("spec") or {}).get("callbacks") or ()):
            log.info("Callback %s/%s changed: reconciling Partition %s", namespace, name, pkey[1])
            partition.reconcile(ctx, pbody, "callback")


def on_child_event(ctx: Context, event: Mapping[str, Any], plural: str = "") -> None:
    """Repair deleted or drifted children; follow the Deployment's rollout in status."""
    etype = event.get("type")
    body = event.get("object") or {}
    owner = owner_key(body)
    if owner is None:
        return
    if plural == "deployments" or body.get("kind") == "Deployment":
        if etype == "DELETED":
            ctx.deployments.pop(owner, None)
        else:
            ctx.remember_deployment(owner, plain(body))
    if etype is None or etype == "ADDED":
        return
    parent = ctx.partitions.get(owner)
    if parent is None:
        parent = partition.get_partition(ctx, owner)
        if parent is None:
            return
    if (parent.get("metadata") or {}).get("deletionTimestamp"):
        return
    meta = body.get("metadata") or {}
    kind = str(body.get("kind") or "")
    record = ctx.applied.get((kind, str(meta.get("namespace")), str(meta.get("name"))))
    if etype == "DELETED" and kind == "ConfigMap" and record is None:
        return  # an old config collected by handlers.configs (or never applied here)
    if etype == "DELETED":
        log.info("%s %s/%s deleted: repairing", kind, meta.get("namespace"), meta.get("name"))
        partition.reconcile(ctx, parent, "repair")
        return
    if kind == "Deployment":
        if record is not None and int(meta.get("generation") or 0) != record[1]:
            partition.reconcile(ctx, parent, "drift")
        else:
            partition.status_from_deployment(ctx, owner, body)
    elif record is not None and str(meta.get("resourceVersion")) != record[0]:
        partition.reconcile(ctx, parent, "drift")


@contextlib.contextmanager
def while_running(ctx: Context) -> Iterator[None]:
    """A handler's work, unless the operator is stopping (``Context.stop``). kopf waits for
    every handler handed to its threads, even those that start after the stop: they end
    at once, and one that meets the stop at a broker call ends there. Either is retried by
    the next operator, and says so in one line (not a traceback)."""
    if ctx.stopping.is_set():
        raise kopf.TemporaryError(str(Stopping()), delay=10)
    try:
        yield
    except Stopping as exc:
        raise kopf.TemporaryError(str(exc), delay=10) from None


def finalize(ctx: Context, body: dict[str, Any]) -> None:
    """``deletion.delete`` for kopf: ``NotYet`` is a retry later; an unexpected error is
    retried too, but never past the last deadline (the finalizer must not block forever)."""
    try:
        deletion.delete(ctx, body)
    except deletion.NotYet as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from None
    except Stopping:  # never "gave up": the next operator resumes the deletion
        raise
    except Exception as exc:
        spec_grace = 0.0
        with contextlib.suppress(Exception):
            spec_grace = deletion.worker_deadline(ctx, parse_partition(body))
        if deletion.since_deletion(body) < spec_grace + ctx.delete_broker_timeout:
            log.exception("Partition cleanup failed; retrying")
            raise kopf.TemporaryError(f"cleanup failed: {exc}", delay=10) from None
        meta = body.get("metadata") or {}
        message = f"cleanup gave up after repeated errors ({exc}); queues left in RabbitMQ"
        log.error("Partition %s/%s: %s", meta.get("namespace"), meta.get("name"), message)
        ctx.kube.event(body, reason=deletion.KEPT, message=message, type_="Warning")


SCHEDULE_PLURAL: Final = "schedules"
SCHEDULE_INTERVAL: Final = 1.0  # seconds between looks at a Schedule (and sooner at a tick)
SCHEDULE_RETRY: Final = 5.0  # seconds after a look that failed


def register(registry: kopf.OperatorRegistry, ctx: Context) -> None:
    p = (GROUP, VERSION, PLURAL)
    managed = {LABEL_MANAGED_BY: MANAGER}

    def reconcile_partition(body: Any, **_: Any) -> None:
        with while_running(ctx):
            on_partition(ctx, body)

    def delete_partition(body: Any, **_: Any) -> None:
        with while_running(ctx):
            finalize(ctx, plain(body))

    def autoscale_partition(body: Any, **_: Any) -> None:
        with while_running(ctx):
            autoscale.evaluate(ctx, plain(body))

    def watch_partition(event: Any, **_: Any) -> None:
        on_partition_event(ctx, event)

    def watch_callback(event: Any, **_: Any) -> None:
        on_callback_event(ctx, event)

    def watch_child(event: Any, resource: Any = None, **_: Any) -> None:
        on_child_event(ctx, event, str(getattr(resource, "plural", "")))

    kopf.on.login(id="login", registry=registry)(session.login_handler())
    kopf.on.event(*p, id="cache", registry=registry)(watch_partition)
    kopf.on.create(*p, id="reconcile", registry=registry)(reconcile_partition)
    kopf.on.update(*p, id="reconcile", registry=registry)(reconcile_partition)
    kopf.on.resume(*p, id="reconcile", registry=registry)(reconcile_partition)
    # Retried until deletion.delete finishes; its own deadlines bound every wait.
    kopf.on.delete(*p, id="cleanup", registry=registry)(delete_partition)
    if ctx.status_interval > 0:
        # One loop over the cached Partitions, not a kopf timer each (handlers/refresher.py).
        refresher = Refresher(ctx, partition.refresh, ctx.status_interval)
        ctx.wake = refresher.wake
        kopf.on.startup(id="refresher", registry=registry)(lambda **_: refresher.start())
        kopf.on.cleanup(id="refresher", registry=registry)(lambda **_: refresher.stop())
    if ctx.autoscale_interval > 0:
        # Only Partitions that ask for it (a kopf filter: timers start and stop with it).
        kopf.timer(
            *p,
            id="autoscale",
            interval=ctx.autoscale_interval,
            when=lambda body, **_: autoscale_builders.needs_evaluation(body),
            registry=registry,
        )(autoscale_partition)
    kopf.on.event(GROUP, VERSION, CALLBACK_PLURAL, id="callbacks", registry=registry)(
        watch_callback
    )

    async def run_schedule(body: Any, stopped: Any, **_: Any) -> None:
        """One Schedule's loop: a look every second, and one at each tick's time, so that
        a tick's job is enqueued at its time (a kopf timer looks every ``interval`` from
        whenever it started: up to a second late). Each look runs in a thread (it calls
        the API server and the broker); the wait between looks costs no thread."""
        loop = asyncio.get_running_loop()
        while not stopped:
            try:
                upcoming = await loop.run_in_executor(None, schedule.reconcile, ctx, plain(body))
            except Stopping:
                return
            except Exception:  # the next look tries again; the daemon itself never ends
                log.exception("Schedule %s/%s: a look failed", *_key(body))
                await stopped.wait(SCHEDULE_RETRY)
                continue
            now = datetime.datetime.now(datetime.UTC)
            await stopped.wait(schedule_builders.pause_before(upcoming, now, SCHEDULE_INTERVAL))

    def forget_schedule(body: Any, **_: Any) -> None:
        schedule.forget(ctx, plain(body))

    # Nothing is written unless something changed (a tick enqueued, a condition).
    s = (GROUP, VERSION, SCHEDULE_PLURAL)
    kopf.daemon(*s, id="schedule", cancellation_timeout=30, registry=registry)(run_schedule)
    kopf.on.delete(*s, id="forget", optional=True, registry=registry)(forget_schedule)
    for group, version, plural in CHILDREN:
        kopf.on.event(
            group, version, plural, id=f"child-{plural}", labels=managed, registry=registry
        )(watch_child)
