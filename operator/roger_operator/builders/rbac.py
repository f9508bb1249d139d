"""The cluster permissions the operator needs; the chart's ClusterRole must cover them.

They include ``WORKER_RULES``: Kubernetes only lets the operator grant (in each worker Role)
permissions it holds itself.
"""

from __future__ import annotations

from typing import Any, Final

from roger.core.rbac import WORKER_RULES

_CRUD: Final = ["get", "list", "watch", "create", "update", "patch", "delete"]

OPERATOR_RULES: Final[tuple[dict[str, Any], ...]] = (
    # Its own resources: watch them, finalizer and kopf annotations, status (kopf puts a
    # finalizer on each Schedule for its timer).
    {
        "apiGroups": ["roger.dev"],
        "resources": ["partitions", "callbacks", "schedules"],
        "verbs": ["get", "list", "watch", "patch", "update"],
    },
    {
        "apiGroups": ["roger.dev"],
        "resources": ["partitions/status", "schedules/status"],
        "verbs": ["get", "patch", "update"],
    },
    {
        "apiGroups": ["roger.dev"],
        "resources": ["partitions/finalizers", "schedules/finalizers"],
        "verbs": ["update"],
    },
    # spec.autoscaling: the scale subresource.
    {
        "apiGroups": ["roger.dev"],
        "resources": ["partitions/scale"],
        "verbs": ["get", "patch", "update"],
    },
    # The children of each Partition (server-side apply = patch; create for the first one).
    {
        "apiGroups": [""],
        "resources": ["configmaps", "services", "serviceaccounts"],
        "verbs": _CRUD,
    },
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": _CRUD},
    # Which old config ConfigMaps a ReplicaSet with replicas still names (handlers.configs).
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list"]},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": _CRUD},
    # spec.autoscaling.engine keda: the ScaledObject (and TriggerAuthentication) it renders.
    {
        "apiGroups": ["keda.sh"],
        "resources": ["scaledobjects", "triggerauthentications"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": _CRUD,
    },
    # Worker pods: deleting a Partition waits until they are gone, their status says why a
    # rollout cannot finish, and autoscaling keeps their pod-deletion-cost current.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "patch"]},
    # The AMQP URL, read by name when reconciling (never listed or watched, never copied).
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # Its own Events (kept queues, conflicts); list: a worker's CallbackRejected Event about
    # its Partition (field selector on the Partition, never a watch).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch", "list"]},
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

# In the operator's own namespace only (a Role): its leader-election Lease
# (``roger_operator.kube.lease``: read, create once, replace to renew or release).
LEADER_ELECTION_RULES: Final[tuple[dict[str, Any], ...]] = (
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "create", "update"],
    },
)
