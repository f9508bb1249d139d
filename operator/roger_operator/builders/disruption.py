"""The worker PodDisruptionBudget (``spec.worker.disruptionBudget``), for node drains.

Scale-downs are not evictions (a PodDisruptionBudget never blocks them); drains and other
evictions are. Pods that are not ready may always be evicted, so a budget cannot wedge a
drain behind a worker that never became ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from roger_operator.builders.manifests import Manifest, labels, owner_reference
from roger_operator.builders.model import PartitionSpec, selector_labels


def disruption_budget(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``spec.worker.disruptionBudget`` of a Partition object, None when unset."""
    worker = (body.get("spec") or {}).get("worker") or {}
    budget = worker.get("disruptionBudget")
    return budget if isinstance(budget, Mapping) and budget else None


def pod_disruption_budget(spec: PartitionSpec, budget: Mapping[str, Any]) -> Manifest:
    pdb_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(spec.name)},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    for key in ("maxUnavailable", "minAvailable"):
        if key in budget:
            pdb_spec[key] = budget[key]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": spec.child_name,
            "namespace": spec.namespace,
            "labels": labels(spec),
            "ownerReferences": [owner_reference(spec)],
        },
        "spec": pdb_spec,
    }
