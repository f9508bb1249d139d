"""The KEDA objects of a Partition (``spec.autoscaling.engine: keda``): which to apply, and
removing them once the Partition no longer wants them.

Applied with the other children (``handlers/partition.py``); owned by the Partition, so
deleting it lets garbage collection remove them. Switching the engine back (or turning
autoscaling off) deletes them here: a ScaledObject left behind would keep writing
``spec.worker.replicas`` against the built-in loop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from roger_operator.builders.autoscale import AutoscalingError, parse_autoscaling
from roger_operator.builders.keda import (
    KEDA_API_VERSION,
    SCALED_OBJECT,
    TRIGGER_AUTHENTICATION,
    keda_manifests,
    keda_settings,
    wants_keda,
)
from roger_operator.builders.manifests import Manifest
from roger_operator.builders.model import PartitionSpec
from roger_operator.handlers.context import Context
from roger_operator.kube import KubeError, resource_path

log = logging.getLogger("roger_operator.keda")
KINDS = (SCALED_OBJECT, TRIGGER_AUTHENTICATION)


def wanted(body: Mapping[str, Any], spec: PartitionSpec) -> list[Manifest]:
    """The KEDA manifests this Partition asks for (none unless engine keda)."""
    try:
        if not wants_keda(body):
            return []
        auto = parse_autoscaling(body)
    except AutoscalingError:
        return []  # the autoscaler logs why; nothing to scale with
    assert auto is not None
    return keda_manifests(spec, auto, keda_settings(body))


def drop_unwanted(ctx: Context, spec: PartitionSpec, manifests: list[Manifest]) -> None:
    """Delete the KEDA objects the Partition no longer wants.

    Only what this process applied, plus one look per Partition and kind after a start
    (a switch made while the operator was down): no request per reconcile for the
    Partitions that never used KEDA. Without KEDA's CRDs the delete is a 404, as for an
    object that is not there.
    """
    keep = {m["kind"] for m in manifests}
    for kind in KINDS:
        if kind in keep:
            continue
        record = (kind, spec.namespace, spec.child_name)
        remembered = ctx.applied.pop(record, None) is not None
        if not remembered and record in ctx.keda_checked:
            continue
        try:
            gone = ctx.kube.delete(
                resource_path(KEDA_API_VERSION, kind, spec.namespace, spec.child_name)
            )
        except KubeError as exc:
            log.warning("%s %s/%s not deleted: %s", kind, spec.namespace, spec.child_name, exc)
            if exc.status == 403:  # no keda.sh rights (an older chart): never used, look once
                ctx.keda_checked.add(record)
            continue
        ctx.keda_checked.add(record)
        if gone:
            log.info("%s %s/%s deleted: engine keda no longer asked", kind, *record[1:])
