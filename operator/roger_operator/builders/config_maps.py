"""One ConfigMap per config content, and which old ones can go.

A pod reads its config file when its container starts, so a pod must find the config of
its own ReplicaSet at every restart: an old pod restarted during a rollout (or a bad
rollout that leaves the old replicas running) must not read the new config. Each config
is therefore a ConfigMap of its own, ``roger-<partition>-<hash of the text>``, immutable,
owned by the Partition and named in the Deployment's pod template; a changed config is a
new ConfigMap and a new pod template.

An old ConfigMap is deleted once no ReplicaSet of the Deployment that still has (or wants)
replicas and no live pod names it. The ReplicaSets kept at 0 replicas for the rollout
history lose theirs: a ``kubectl rollout undo`` would be undone by the next reconcile
anyway (the Partition is the desired state), and reverting the Partition recreates the
same name from the same content.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from roger_operator.builders.model import child_name, owned_by

CONFIG_VOLUME: Final = "config"


def config_map_name(partition_name: str, digest: str) -> str:
    """``roger-<partition>-<digest>``: at most 63 + 1 + 16 characters (ConfigMap names may
    have 253)."""
    return f"{child_name(partition_name)}-{digest}"


def referenced_config_map(template: Mapping[str, Any] | None) -> str | None:
    """The ConfigMap of a pod template's (or pod's) config volume."""
    spec = (template or {}).get("spec") or {}
    for volume in spec.get("volumes") or ():
        if volume.get("name") == CONFIG_VOLUME and volume.get("configMap"):
            name = volume["configMap"].get("name")
            return str(name) if name else None
    return None


def _replicas(rs: Mapping[str, Any]) -> int:
    spec = int((rs.get("spec") or {}).get("replicas") or 0)
    status = int((rs.get("status") or {}).get("replicas") or 0)
    return max(spec, status)


def _alive(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False  # terminating: its containers are not started again
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def in_use(
    replica_sets: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
) -> set[str]:
    """ConfigMaps named by a ReplicaSet with replicas or by a live pod."""
    used = {
        referenced_config_map(rs.get("spec", {}).get("template"))
        for rs in replica_sets
        if _replicas(rs) > 0
    }
    used |= {referenced_config_map(pod) for pod in pods if _alive(pod)}
    return {name for name in used if name}


def stale_config_maps(
    config_maps: Sequence[Mapping[str, Any]],
    replica_sets: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    current: str,
    owner_uid: str,
) -> list[str]:
    """The Partition's ConfigMaps (owned by ``owner_uid``) that nothing needs any more:
    not ``current``, not named by a ReplicaSet with replicas, not by a live pod."""
    keep = in_use(replica_sets, pods) | {current}
    return sorted(
        str(cm["metadata"]["name"])
        for cm in config_maps
        if owned_by(cm, owner_uid) and cm["metadata"]["name"] not in keep
    )
