"""What keeps tenants apart and callbacks honest, as status problems of a Partition:
queue names another Partition holds, queue names that could be waiting rooms, callback
config values from Secrets, and workers that refused a callback (``CallbackRejected``)."""

from __future__ import annotations

import logging
import time

from roger.core import naming, rejections
from roger_operator.builders import status as st
from roger_operator.builders.callback_secrets import reference_problem, secret_values
from roger_operator.builders.model import CallbackResource, PartitionSpec
from roger_operator.handlers.context import Context
from roger_operator.kube import KubeError, resource_path
from roger_operator.rabbit.claims import QueueNameConflict

log = logging.getLogger("roger_operator.partition")


def queue_naming_problem(spec: PartitionSpec) -> st.Problem | None:
    """A queue whose RabbitMQ name could be an execution-key waiting room (the CRD refuses
    new ones; a Partition created before that rule gets this)."""
    for q in spec.queues:
        why = naming.queue_name_problem(spec.partition_id, q.name)
        if why:
            return st.Problem(st.R_QUEUE_NAME_CONFLICT, f"{why}; nothing is applied")
    return None


def queue_conflict_problem(spec: PartitionSpec, exc: QueueNameConflict) -> st.Problem:
    return st.Problem(
        st.R_QUEUE_NAME_CONFLICT,
        f"queue {exc.queue!r} would use RabbitMQ queue {exc.stem!r} (and its retry, buried and "
        f"invalid queues), which Partition {exc.owner} already uses on this broker; rename the "
        "queue or use another spec.partitionId (queues are never shared); the running "
        "Deployment is left as it was",
    )


def callback_config_problems(
    ctx: Context, spec: PartitionSpec, resolved: list[CallbackResource]
) -> list[st.Problem]:
    """Malformed ``valueFrom`` values, and Secrets (or keys) they name that do not exist.

    Only the key's presence is checked; the value stays in the API server and the kubelet.
    """
    left = "the running Deployment is left as it was"
    out = [
        st.Problem(st.R_CALLBACK_REJECTED, f"{why}; {left}")
        for why in (reference_problem(cb) for cb in resolved)
        if why
    ]
    for value in secret_values(resolved):
        secret = ctx.kube.get(resource_path("v1", "Secret", spec.namespace, value.secret))
        if secret is None or value.key not in (secret.get("data") or {}):
            out.append(
                st.Problem(
                    st.R_SECRET_NOT_FOUND,
                    f"Secret {value.secret} with key {value.key} (Callback {value.callback}, "
                    f"spec.config.{value.config_key}) not found in namespace {spec.namespace}; "
                    f"{left}",
                )
            )
    return out


def callback_rejection(ctx: Context, spec: PartitionSpec, digest: str | None) -> st.Problem | None:
    """``CallbackRejected`` when the workers running config ``digest`` refuse a callback (they
    say so in an Event about the Partition before exiting; ``roger.core.rejections``)."""
    if not spec.callbacks or not digest:
        return None
    selector = (
        f"involvedObject.kind=Partition,involvedObject.name={spec.name},reason={rejections.REASON}"
    )
    try:
        found = ctx.kube.request(
            "GET", f"/api/v1/namespaces/{spec.namespace}/events", query={"fieldSelector": selector}
        )
    except KubeError as exc:
        log.warning("Partition %s/%s: cannot read Events: %s", spec.namespace, spec.name, exc)
        return None
    items = list((found or {}).get("items") or ())
    message = rejections.current_rejection(items, spec.uid, digest, time.time())
    if message is None:
        return None
    return st.Problem(
        st.R_CALLBACK_REJECTED,
        f"worker pods exit at start-up: {message}; a Callback's spec.module must name a class "
        "that implements at least one of before_run, after_run, on_error, on_cancel, on_buried",
        blocking=False,
    )
