"""spec.autoscaling.engine keda renders a ScaledObject with the built-in loop's target.

The formula is checked by evaluating it (Python and KEDA's expr language agree on
``+ - /`` and parentheses) against the built-in ``weighted_load`` for the same counters.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from roger_operator.builders import autoscale as a
from roger_operator.builders.keda import (
    KedaSettings,
    keda_manifests,
    keda_settings,
    scaled_object,
    wants_keda,
)
from roger_operator.builders.model import parse_partition
from roger_operator.handlers.context import Context
from roger_operator.handlers.keda import drop_unwanted, wanted
from roger_operator.kube import KubeError, resource_path

pytestmark = pytest.mark.unit


def body(autoscaling: dict[str, Any] | None = None, queues: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "amqp": {"secretRef": {"name": "amqp", "key": "url"}},
        "worker": {"image": "i"},
        "queues": queues if queues is not None else [{"name": "default", "maxWorkers": 4}],
    }
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    meta = {"name": "p", "namespace": "n", "uid": "u-1", "generation": 1}
    return {"metadata": meta, "spec": spec}


def render(
    autoscaling: dict[str, Any], queues: Any = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    obj = body({"engine": "keda", **autoscaling}, queues)
    auto = a.parse_autoscaling(obj)
    assert auto is not None
    out = keda_manifests(parse_partition(obj), auto, keda_settings(obj))
    return out, out[-1]


def formula_value(so: dict[str, Any], metrics: dict[str, float]) -> float:
    formula = so["spec"]["advanced"]["scalingModifiers"]["formula"]
    return float(eval(formula, {"__builtins__": {}}, metrics))  # our own formula text


def test_only_engine_keda_asks_for_it() -> None:
    assert not wants_keda(body())
    assert not wants_keda(body({"maxReplicas": 3}))
    assert not wants_keda(body({"maxReplicas": 3, "engine": "builtin"}))
    assert not wants_keda(body({"maxReplicas": 3, "engine": "keda", "enabled": False}))
    assert wants_keda(body({"maxReplicas": 3, "engine": "keda"}))


def test_targets_the_partition_scale_subresource_with_the_settings() -> None:
    _, so = render(
        {
            "minReplicas": 0,
            "maxReplicas": 7,
            "targetBacklogPerReplica": 2.5,
            "scaleToZeroCooldownSeconds": 45,
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 3},
                "scaleDown": {"stabilizationWindowSeconds": 120},
            },
        }
    )
    assert (so["apiVersion"], so["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    meta = so["metadata"]
    assert (meta["name"], meta["namespace"]) == ("roger-p", "n")
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Partition",
        "p",
        "u-1",
        True,
    )
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "roger.dev/v1alpha1",
        "kind": "Partition",
        "name": "p",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 7)
    assert spec["cooldownPeriod"] == 45
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 3
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 120
    # no rate limit of the HPA's own: up to maxReplicas at once, down to any count
    assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 7, "periodSeconds": 15}]
    assert behavior["scaleDown"]["policies"] == [
        {"type": "Percent", "value": 100, "periodSeconds": 15}
    ]
    mods = spec["advanced"]["scalingModifiers"]
    assert (mods["target"], mods["metricType"], mods["activationTarget"]) == (
        "2.5",
        "AverageValue",
        "0",
    )


def test_defaults_match_the_builtin_defaults() -> None:
    _, so = render({"maxReplicas": 3})
    spec = so["spec"]
    assert (spec["minReplicaCount"], spec["cooldownPeriod"]) == (1, 300)
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert spec["advanced"]["scalingModifiers"]["target"] == "1"


QUEUES = [
    {"name": "fast", "maxWorkers": 4},
    {"name": "slow", "maxWorkers": 1},
    {"name": "off", "maxWorkers": 0},
    {"name": "held", "maxWorkers": 2, "paused": True},
]


def test_management_api_counts_ready_and_running_weighted_like_the_builtin() -> None:
    auth = {"keda": {"authenticationRef": {"name": "rabbit-mgmt"}}}
    out, so = render({"maxReplicas": 50, "targetBacklogPerReplica": 2, **auth}, QUEUES)
    assert [m["kind"] for m in out] == ["ScaledObject"]  # the user's authentication
    triggers = {t["name"]: t for t in so["spec"]["triggers"]}
    assert set(triggers) == {"q0", "q1", "q3", "q3ready"}  # "off" is not consumed
    for t in triggers.values():
        assert t["type"] == "rabbitmq"
        assert t["metadata"]["protocol"] == "http" and t["metadata"]["mode"] == "QueueLength"
        assert t["authenticationRef"] == {"name": "rabbit-mgmt", "kind": "TriggerAuthentication"}
    assert triggers["q0"]["metadata"]["queueName"] == "p-fast"
    assert "excludeUnacknowledged" not in triggers["q0"]["metadata"]  # ready + unacked
    assert triggers["q3ready"]["metadata"]["excludeUnacknowledged"] == "true"
    assert triggers["q0"]["metadata"]["value"] == "8"  # alone: target * maxWorkers

    counters = {"fast": (9, 3), "slow": (2, 1), "off": (50, 0), "held": (40, 3)}  # ready, running
    queues = [
        a.QueueCounters(q["name"], *counters[q["name"]], q["maxWorkers"], q.get("paused", False))
        for q in QUEUES
    ]
    _, load = a.weighted_load(queues)
    metrics = {"q0": 12.0, "q1": 3.0, "q3": 43.0, "q3ready": 40.0}  # messages; ready for q3ready
    assert formula_value(so, metrics) == pytest.approx(load)  # 3 + 3 + 1.5
    # The HPA's AverageValue target: replicas = ceil(metric / target), as the builtin's.
    assert math.ceil(formula_value(so, metrics) / 2) == math.ceil(load / 2)


def test_without_authentication_ref_it_reads_the_partition_secret_over_amqp() -> None:
    out, so = render({"maxReplicas": 5}, QUEUES)
    auth, _ = out
    assert (auth["kind"], auth["metadata"]["name"]) == ("TriggerAuthentication", "roger-p")
    assert auth["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "host", "name": "amqp", "key": "url"}]
    triggers = so["spec"]["triggers"]
    # AMQP sees ready jobs only: a paused queue would count nothing, so it has no trigger.
    assert [t["name"] for t in triggers] == ["q0", "q1"]
    for t in triggers:
        assert t["metadata"]["protocol"] == "amqp"
        assert t["authenticationRef"] == {"name": "roger-p", "kind": "TriggerAuthentication"}
    assert formula_value(so, {"q0": 8.0, "q1": 3.0}) == pytest.approx(5.0)


def test_nothing_to_count_still_renders_a_valid_object_that_asks_for_none() -> None:
    _, so = render({"maxReplicas": 2}, [{"name": "held", "maxWorkers": 2, "paused": True}])
    assert len(so["spec"]["triggers"]) == 1  # KEDA needs one
    assert so["spec"]["advanced"]["scalingModifiers"]["formula"] == "0"


def test_cluster_trigger_authentication_kind_is_kept() -> None:
    obj = body(
        {
            "engine": "keda",
            "maxReplicas": 2,
            "keda": {"authenticationRef": {"name": "m", "kind": "ClusterTriggerAuthentication"}},
        }
    )
    settings = keda_settings(obj)
    assert settings == KedaSettings("m", "ClusterTriggerAuthentication")
    auto = a.parse_autoscaling(obj)
    assert auto is not None
    so = scaled_object(parse_partition(obj), auto, settings)
    ref = so["spec"]["triggers"][0]["authenticationRef"]
    assert ref == {"name": "m", "kind": "ClusterTriggerAuthentication"}


def test_every_rendered_kind_has_an_api_path() -> None:
    out, _ = render({"maxReplicas": 2})
    for m in out:
        path = resource_path(m["apiVersion"], m["kind"], "n", m["metadata"]["name"])
        assert path.startswith("/apis/keda.sh/v1alpha1/namespaces/n/") and path.endswith("/roger-p")


class RecordingKube:
    """Records deletes; answers each with ``status`` (None: deleted, 404: not there)."""

    def __init__(self, status: int | None = 404) -> None:
        self.deleted: list[str] = []
        self.status = status

    def delete(self, path: str) -> bool:
        self.deleted.append(path)
        if self.status is None:
            return True
        if self.status == 404:
            return False
        raise KubeError(self.status, "Forbidden")


@pytest.mark.parametrize("status", [404, 403])
def test_a_partition_without_keda_is_looked_at_once_per_operator_start(status: int) -> None:
    """One DELETE per kind after a start (a switch made while the operator was down), then
    none on later reconciles: no cost for Partitions that never used KEDA (nor without
    KEDA's CRDs, nor without the rights)."""
    kube = RecordingKube(status)
    ctx = Context(kube=kube, broker=object())  # type: ignore[arg-type]
    spec = parse_partition(body())
    drop_unwanted(ctx, spec, [])
    drop_unwanted(ctx, spec, [])
    assert sorted(p.rsplit("/", 2)[1] for p in kube.deleted) == [
        "scaledobjects",
        "triggerauthentications",
    ]


def test_what_this_process_applied_is_deleted_when_no_longer_wanted() -> None:
    kube = RecordingKube(None)
    ctx = Context(kube=kube, broker=object())  # type: ignore[arg-type]
    obj = body({"engine": "keda", "maxReplicas": 2})
    spec = parse_partition(obj)
    drop_unwanted(ctx, spec, wanted(obj, spec))  # both wanted: nothing deleted
    assert kube.deleted == []
    ctx.applied[("ScaledObject", "n", "roger-p")] = ("1", 1)
    drop_unwanted(ctx, spec, [])  # switched back: the applied ScaledObject goes, each time
    drop_unwanted(ctx, spec, [])
    ctx.applied[("ScaledObject", "n", "roger-p")] = ("2", 1)
    drop_unwanted(ctx, spec, [])
    paths = [p for p in kube.deleted if "/scaledobjects/" in p]
    assert paths == ["/apis/keda.sh/v1alpha1/namespaces/n/scaledobjects/roger-p"] * 2
