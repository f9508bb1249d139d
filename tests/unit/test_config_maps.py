"""One ConfigMap per config content (``builders.config_maps``): an old pod restarted during
a rollout reads its own config, and an old config goes only once nothing can start from it."""

from __future__ import annotations

from typing import Any

import pytest

from roger_operator.builders.config_maps import (
    config_map_name,
    in_use,
    referenced_config_map,
    stale_config_maps,
)
from roger_operator.builders.manifests import build_children
from roger_operator.builders.model import CONFIG_HASH_LABEL, parse_partition
from tests.unit.test_operator_builders import partition

pytestmark = pytest.mark.unit
UID = "u-1"


def kinds(obj: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], str]:
    manifests, digest = build_children(parse_partition(obj), [])
    return {m["kind"]: m for m in manifests}, digest


def test_the_config_map_is_named_after_its_content_and_the_template_names_it() -> None:
    kids, digest = kinds(partition())
    cm = kids["ConfigMap"]
    assert cm["metadata"]["name"] == config_map_name("tenant-a", digest)
    assert cm["metadata"]["name"] == f"roger-tenant-a-{digest}"
    assert cm["metadata"]["labels"][CONFIG_HASH_LABEL] == digest
    assert cm["metadata"]["labels"]["roger.dev/partition"] == "tenant-a"
    assert cm["immutable"] is True  # a pod always reads what its ReplicaSet was made with
    assert cm["metadata"]["ownerReferences"][0]["uid"] == UID
    template = kids["Deployment"]["spec"]["template"]
    assert referenced_config_map(template) == cm["metadata"]["name"]


def test_a_changed_config_is_a_new_config_map_and_the_same_config_the_same_name() -> None:
    before, _ = kinds(partition())
    again, _ = kinds(partition())
    edited, _ = kinds(partition(queues=[{"name": "default", "maxWorkers": 3}]))
    assert before["ConfigMap"] == again["ConfigMap"]
    assert edited["ConfigMap"]["metadata"]["name"] != before["ConfigMap"]["metadata"]["name"]
    assert (
        referenced_config_map(edited["Deployment"]["spec"]["template"])
        == (edited["ConfigMap"]["metadata"]["name"])
    )


def test_scaling_keeps_the_config_map() -> None:
    one, _ = kinds(partition())
    many, _ = kinds(partition(worker={"image": "example/jobs-worker:1.0", "replicas": 9}))
    assert one["ConfigMap"] == many["ConfigMap"]


def cm(name: str, uid: str = UID) -> dict[str, Any]:
    return {"metadata": {"name": name, "ownerReferences": [{"uid": uid, "controller": True}]}}


def rs(config: str, replicas: int, status: int | None = None) -> dict[str, Any]:
    template = {"spec": {"volumes": [{"name": "config", "configMap": {"name": config}}]}}
    return {
        "spec": {"replicas": replicas, "template": template},
        "status": {"replicas": replicas if status is None else status},
    }


def pod(config: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p"}
    if extra.get("terminating"):
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"volumes": [{"name": "config", "configMap": {"name": config}}]},
        "status": {"phase": extra.get("phase", "Running")},
    }


def test_an_old_config_stays_while_its_replica_set_has_replicas() -> None:
    """A bad rollout: the old ReplicaSet keeps running, its pods may restart."""
    maps = [cm("roger-a-old"), cm("roger-a-new")]
    sets = [rs("roger-a-old", 2), rs("roger-a-new", 1)]
    assert stale_config_maps(maps, sets, [], "roger-a-new", UID) == []


def test_an_old_config_stays_while_its_replica_set_still_has_pods() -> None:
    """Scaled down to 0 but its pods not yet gone (status.replicas)."""
    maps = [cm("roger-a-old"), cm("roger-a-new")]
    sets = [rs("roger-a-old", 0, status=1), rs("roger-a-new", 2)]
    assert stale_config_maps(maps, sets, [], "roger-a-new", UID) == []


def test_an_old_config_goes_once_its_replica_set_is_at_zero() -> None:
    maps = [cm("roger-a-old"), cm("roger-a-older"), cm("roger-a-new")]
    sets = [rs("roger-a-old", 0), rs("roger-a-older", 0), rs("roger-a-new", 2)]
    assert stale_config_maps(maps, sets, [], "roger-a-new", UID) == [
        "roger-a-old",
        "roger-a-older",
    ]


def test_a_live_pod_keeps_its_config_and_a_terminating_or_finished_one_does_not() -> None:
    maps = [cm("roger-a-x"), cm("roger-a-y"), cm("roger-a-z"), cm("roger-a-new")]
    pods = [pod("roger-a-x"), pod("roger-a-y", terminating=True), pod("roger-a-z", phase="Failed")]
    assert stale_config_maps(maps, [], pods, "roger-a-new", UID) == ["roger-a-y", "roger-a-z"]


def test_the_current_config_is_always_kept_even_before_its_replica_set_exists() -> None:
    assert stale_config_maps([cm("roger-a-new")], [], [], "roger-a-new", UID) == []


def test_the_single_config_map_of_earlier_versions_is_migrated_like_an_old_config() -> None:
    """``roger-<partition>``, shared by all pods before: kept while its pods run."""
    maps = [cm("roger-a"), cm("roger-a-new")]
    assert stale_config_maps(maps, [rs("roger-a", 2)], [], "roger-a-new", UID) == []
    assert stale_config_maps(maps, [rs("roger-a", 0)], [], "roger-a-new", UID) == ["roger-a"]


def test_config_maps_of_another_owner_are_never_touched() -> None:
    """A Partition of the same name deleted and created again: the old one's are not ours
    (garbage collection removes them)."""
    maps = [cm("roger-a-old", uid="someone-else"), cm("roger-a-new")]
    assert stale_config_maps(maps, [], [], "roger-a-new", UID) == []


def test_in_use_ignores_templates_without_a_config_volume() -> None:
    bare = {"spec": {"replicas": 1, "template": {"spec": {"volumes": []}}}}
    assert in_use([bare, rs("roger-a-1", 1)], []) == {"roger-a-1"}
    assert referenced_config_map(None) is None
