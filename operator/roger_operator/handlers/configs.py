"""Old config ConfigMaps go once nothing can start a pod from them
(``builders.config_maps`` decides which).

Collecting needs a listing of ConfigMaps and ReplicaSets, so it runs only for Partitions
whose config changed since their old ConfigMaps were last all gone (``ctx.configs_pending``):
after a reconcile, and on the Deployment's status changes (a finished rollout scales the
old ReplicaSet to 0) and the periodic refresh.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from roger_operator.builders.config_maps import referenced_config_map, stale_config_maps
from roger_operator.builders.model import (
    LABEL_MANAGED_BY,
    LABEL_PARTITION,
    MANAGER,
    PartitionSpec,
    owned_by,
    selector_string,
)
from roger_operator.handlers.context import Context, Key
from roger_operator.kube import KubeError, resource_path

log = logging.getLogger("roger_operator.configs")


def _items(ctx: Context, kind: str, namespace: str, selector: str) -> list[Mapping[str, Any]]:
    found = ctx.kube.request(
        "GET",
        resource_path("apps/v1" if kind == "ReplicaSet" else "v1", kind, namespace),
        query={"labelSelector": selector},
    )
    return list((found or {}).get("items") or ())


def collect(
    ctx: Context,
    spec: PartitionSpec,
    deployment: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]] | None,
) -> None:
    """Delete the Partition's ConfigMaps that no pod can start from any more (best effort:
    a failure is retried on the next call)."""
    key: Key = (spec.namespace, spec.name)
    if key not in ctx.configs_pending or deployment is None or pods is None:
        return
    current = referenced_config_map((deployment.get("spec") or {}).get("template"))
    if current is None:
        return
    try:
        owned = f"{LABEL_PARTITION}={spec.name},{LABEL_MANAGED_BY}={MANAGER}"
        maps = _items(ctx, "ConfigMap", spec.namespace, owned)
        sets = _items(ctx, "ReplicaSet", spec.namespace, selector_string(spec.name))
        stale = stale_config_maps(maps, sets, pods, current, spec.uid)
        for name in stale:
            ctx.applied.pop(("ConfigMap", spec.namespace, name), None)
            ctx.kube.delete(resource_path("v1", "ConfigMap", spec.namespace, name))
            log.info("Partition %s/%s: deleted ConfigMap %s (no pod uses it)", *key, name)
    except KubeError as exc:
        log.warning("Partition %s/%s: cannot collect old ConfigMaps: %s", *key, exc)
        return
    left = {str(cm["metadata"]["name"]) for cm in maps if owned_by(cm, spec.uid)} - set(stale)
    if left <= {current}:
        ctx.configs_pending.discard(key)
