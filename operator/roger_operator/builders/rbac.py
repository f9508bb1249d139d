"""The cluster permissions the operator needs; the chart's ClusterRole must cover them.

They include ``WORKER_RULES``: Kubernetes only lets the operator grant (in each worker Role)
permissions it holds itself.
"""

from __future__ import annotations

from typing import Any, Final

from roger.core.rbac import WORKER_RULES

_CRUD: Final = ["get", "list", "watch", "create", "update", "patch", "delete"]

OPERATOR_RULES: Final[tuple[dict[str, Any], ...]] = (
    # Its own resources: watch them, finalizer and kopf annotations, status.
    {
        "apiGroups": ["roger.dev"],
        "resources": ["partitions", "callbacks"],
        "verbs": ["get", "list", "watch", "patch", "update"],
    },
    {
        "apiGroups": ["roger.dev"],
        "resources": ["partitions/status"],
        "verbs": ["get", "patch", "update"],
    },
    {"apiGroups": ["roger.dev"], "resources": ["partitions/finalizers"], "verbs": ["update"]},
    # The children of each Partition (server-side apply = patch; create for the first one).
    {
        "apiGroups": [""],
        "resources": ["configmaps", "services", "serviceaccounts"],
        "verbs": _CRUD,
    },
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": _CRUD},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": _CRUD,
    },
    # The worker pods' status: why a rollout cannot finish (an image, a crashing container).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    # The AMQP URL, read by name when reconciling (never listed or watched, never copied).
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # Its own Events (kept queues, conflicts).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf: namespace patterns and resource discovery.
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    # What it grants to every worker Role.
    *WORKER_RULES,
)
