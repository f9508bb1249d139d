"""Operator builders: Partition (+ Callbacks) -> worker config, child manifests, status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from roger.core.config import CLASS_PATH_PATTERN, MODULE_PATTERN, parse_config
from roger.core.hooks import HOOKS
from roger.core.naming import DEFAULT_RETRY_LEVELS, NAME_PATTERN
from roger.core.rbac import WORKER_RULES
from roger_operator.builders import status as st
from roger_operator.builders.config import config_hash, config_text, render_config
from roger_operator.builders.manifests import build_children
from roger_operator.builders.model import (
    CONFIG_HASH_ANNOTATION,
    MAX_PARTITION_NAME,
    CallbackResource,
    parse_callback,
    parse_partition,
)
from roger_operator.builders.rbac import OPERATOR_RULES
from roger_operator.rabbit.broker import redact

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
URL = "amqp://user:s3cr3t-pw@rabbit.example:5672/%2F"


def partition(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "amqp": {"secretRef": {"name": "rabbitmq", "key": "url"}},
        "worker": {"image": "example/jobs-worker:1.0", "replicas": 2},
        "jobs": ["myapp.jobs"],
        "queues": [
            {"name": "default", "maxWorkers": 10},
            {"name": "email", "maxWorkers": 2, "paused": True},
        ],
        "retry": {"levels": [1, 3, 5, 10], "buriedMaxLength": 100},
        "callbacks": ["audit"],
    }
    base.update(spec)
    return {
        "apiVersion": "roger.dev/v1alpha1",
        "kind": "Partition",
        "metadata": {"name": "tenant-a", "namespace": "team", "uid": "u-1", "generation": 3},
        "spec": base,
    }


AUDIT = parse_callback(
    {
        "metadata": {"name": "audit", "namespace": "team"},
        "spec": {
            "module": "myapp.callbacks:Audit",
            "hooks": ["on_error", "on_buried"],
            "config": {"channel": "#alerts"},
        },
    }
)


def children(obj: dict[str, Any], callbacks: list[CallbackResource] | None = None) -> Any:
    manifests, digest = build_children(
        parse_partition(obj), [AUDIT] if callbacks is None else callbacks
    )
    return {m["kind"]: m for m in manifests}, digest


def test_rendered_config_is_what_the_worker_accepts() -> None:
    spec = parse_partition(partition())
    text = config_text(render_config(spec, [AUDIT]))
    cfg = parse_config(yaml.safe_load(text))
    assert cfg.partition == "tenant-a"
    assert dict(cfg.queues) == {"default": 10, "email": 2}
    assert cfg.jobs == ("myapp.jobs",)
    assert cfg.retry_levels == (1, 3, 5, 10)
    assert cfg.buried_max_length == 100
    assert cfg.callbacks[0].path == "myapp.callbacks:Audit"
    assert cfg.callbacks[0].hooks == ("on_error", "on_buried")
    assert dict(cfg.callbacks[0].config) == {"channel": "#alerts"}
    assert (cfg.kube.namespace, cfg.kube.name, cfg.kube.events) == ("team", "tenant-a", HOOKS)


def test_defaults_match_roger() -> None:
    obj = partition(retry={}, callbacks=[])
    obj["spec"]["worker"] = {"image": "img"}
    spec = parse_partition(obj)
    cfg = parse_config(yaml.safe_load(config_text(render_config(spec, []))))
    assert spec.replicas == 1
    assert cfg.retry_levels == DEFAULT_RETRY_LEVELS
    assert cfg.buried_max_length == 100
    assert cfg.shutdown_timeout == 10.0
    assert spec.grace_period == 30


def test_job_processes_reach_the_worker_config_only_when_set() -> None:
    spec = parse_partition(partition(worker={"image": "img", "jobProcesses": 4}))
    text = config_text(render_config(spec, []))
    assert parse_config(yaml.safe_load(text)).job_processes == 4
    unset = config_text(render_config(parse_partition(partition()), []))
    assert "job_processes" not in unset  # existing Partitions keep their config hash
    assert parse_config(yaml.safe_load(unset)).job_processes is None


def test_broker_consumer_timeout_reaches_the_worker_config_only_when_set() -> None:
    spec = parse_partition(partition(worker={"image": "img", "brokerConsumerTimeout": 7200}))
    text = config_text(render_config(spec, []))
    assert parse_config(yaml.safe_load(text)).broker_consumer_timeout == 7200.0
    unset = config_text(render_config(parse_partition(partition()), []))
    assert "broker_consumer_timeout" not in unset  # existing Partitions keep their config hash
    assert parse_config(yaml.safe_load(unset)).broker_consumer_timeout == 1800.0


def test_partition_id_and_event_hooks() -> None:
    spec = parse_partition(partition(partitionId="acme_a", events={"hooks": ["on_buried"]}))
    cfg = parse_config(yaml.safe_load(config_text(render_config(spec, []))))
    assert cfg.partition == "acme_a"
    assert cfg.kube.name == "tenant-a"
    assert cfg.kube.events == ("on_buried",)
    none = parse_partition(partition(events={"hooks": []}))
    assert parse_config(render_config(none, [])).kube.events == ()


def test_every_child_is_owned_labelled_and_named() -> None:
    kids, _ = children(partition())
    assert set(kids) == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "Deployment",
    }
    for m in kids.values():
        meta = m["metadata"]
        assert meta["namespace"] == "team"
        if m["kind"] != "ConfigMap":  # named after its content (test_config_maps.py)
            assert meta["name"] == "roger-tenant-a"
        (ref,) = meta["ownerReferences"]
        assert ref == {
            "apiVersion": "roger.dev/v1alpha1",
            "kind": "Partition",
            "name": "tenant-a",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "roger-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == "tenant-a"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "roger"


def test_deployment_runs_the_worker_with_the_secret_by_reference() -> None:
    kids, digest = children(partition())
    dep = kids["Deployment"]
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["command"] == ["roger", "worker", "--config", "/etc/roger/worker.yaml"]
    env = {e["name"]: e for e in c["env"]}
    assert env["ROGER_AMQP_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "rabbitmq", "key": "url"}
    }
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    config = {"name": "config", "configMap": {"name": f"roger-tenant-a-{digest}"}}
    assert config in pod["spec"]["volumes"]
    assert pod["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == digest
    assert dep["spec"]["replicas"] == 2
    sel = dep["spec"]["selector"]["matchLabels"]
    assert all(pod["metadata"]["labels"][k] == v for k, v in sel.items())
    assert kids["Service"]["spec"]["selector"] == sel
    assert pod["spec"]["serviceAccountName"] == "roger-tenant-a"


def test_pod_meets_restricted_pod_security() -> None:
    kids, _ = children(partition())
    spec = kids["Deployment"]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
    assert all("hostPath" not in v for v in spec["volumes"])


def test_secret_value_never_reaches_a_manifest() -> None:
    kids, _ = children(partition())
    assert "amqp://" not in json.dumps(kids)


def test_callback_change_rolls_pause_does_not() -> None:
    _, before = children(partition())
    changed = CallbackResource("audit", "myapp.callbacks:Audit", ("on_error",), {"channel": "#x"})
    _, after = children(partition(), [changed])
    assert before != after
    paused = partition()
    paused["spec"]["queues"][0]["paused"] = True
    assert children(paused)[1] == before
    more = partition()
    more["spec"]["queues"][0]["maxWorkers"] = 11
    assert children(more)[1] != before


def test_user_env_and_pod_overrides() -> None:
    obj = partition()
    obj["spec"]["worker"].update(
        env=[{"name": "FOO", "value": "1"}],
        resources={"limits": {"cpu": "1"}},
        podTemplate={
            "labels": {"team": "a", "app.kubernetes.io/instance": "evil"},
            "nodeSelector": {"disk": "ssd"},
            "runAsUser": 1000,
        },
        terminationGracePeriodSeconds=99,
    )
    pod = children(obj)[0]["Deployment"]["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert {"name": "FOO", "value": "1"} in c["env"]
    assert c["resources"] == {"limits": {"cpu": "1"}}
    assert pod["metadata"]["labels"]["team"] == "a"
    assert pod["metadata"]["labels"]["app.kubernetes.io/instance"] == "tenant-a"
    assert pod["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    assert pod["spec"]["terminationGracePeriodSeconds"] == 99


def test_worker_role_is_worker_rules_narrowed_to_the_partition() -> None:
    role = children(partition())[0]["Role"]
    assert len(role["rules"]) == len(WORKER_RULES)
    for rule, base in zip(role["rules"], WORKER_RULES, strict=True):
        assert {k: v for k, v in rule.items() if k != "resourceNames"} == base
    assert role["rules"][-1]["resourceNames"] == ["tenant-a"]
    binding = children(partition())[0]["RoleBinding"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "roger-tenant-a", "namespace": "team"}
    ]


def _covers(rules: Any, group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


def test_operator_rules_cover_children_and_worker_rules() -> None:
    for rule in WORKER_RULES:
        for g in rule["apiGroups"]:
            for res in rule["resources"]:
                for v in rule["verbs"]:
                    assert _covers(OPERATOR_RULES, g, res, v)
    for g, res in [
        ("", "configmaps"),
        ("", "services"),
        ("", "serviceaccounts"),
        ("apps", "deployments"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
    ]:
        for v in ("get", "list", "watch", "create", "patch", "delete"):
            assert _covers(OPERATOR_RULES, g, res, v)
    assert _covers(OPERATOR_RULES, "", "secrets", "get")
    assert not _covers(OPERATOR_RULES, "", "secrets", "list")
    assert _covers(OPERATOR_RULES, "roger.dev", "partitions/status", "patch")


def test_longest_partition_name_gives_valid_child_names() -> None:
    name = "a" * MAX_PARTITION_NAME
    obj = partition()
    obj["metadata"]["name"] = name
    for m in children(obj)[0].values():
        # ConfigMap names are DNS subdomains (253); the others are used as labels too (63).
        assert len(m["metadata"]["name"]) <= (253 if m["kind"] == "ConfigMap" else 63)
        assert all(len(v) <= 63 for v in m["metadata"]["labels"].values())


# -- status ----------------------------------------------------------------------------


def dep(replicas: int, ready: int, updated: int | None = None, gen: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": gen},
        "status": {
            "observedGeneration": gen,
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
        },
    }


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_status_ready_and_rolling_out() -> None:
    spec = parse_partition(partition())
    rolling = st.compute_status(None, st.Observation(spec, deployment=dep(2, 1)), "T1")
    assert conds(rolling) == {
        "Ready": ("False", "RollingOut"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("False", "AsExpected"),
        "CallbacksResolved": ("True", "Resolved"),
    }
    assert rolling["observedGeneration"] == 3
    assert (
        rolling["selector"]
        == "app.kubernetes.io/instance=tenant-a,app.kubernetes.io/name=roger-worker"
    )
    ready = st.compute_status(rolling, st.Observation(spec, deployment=dep(2, 2)), "T2")
    assert conds(ready)["Ready"] == ("True", "Ready")
    assert (ready["replicas"], ready["readyReplicas"]) == (2, 2)
    times = {c["type"]: c["lastTransitionTime"] for c in ready["conditions"]}
    assert times == {
        "Ready": "T2",
        "Progressing": "T2",
        "Degraded": "T1",
        "CallbacksResolved": "T1",
    }
    again = st.compute_status(ready, st.Observation(spec, deployment=dep(2, 2)), "T3")
    assert again == ready
    assert not st.status_changed(ready, again)


def test_status_blocking_problems() -> None:
    spec = parse_partition(partition())
    missing = st.Observation(
        spec,
        missing_callbacks=("audit",),
        problems=(st.callbacks_problem(spec, ["audit"]),),
        deployment=dep(2, 2),
    )
    s = st.compute_status(None, missing, "T")
    assert conds(s)["CallbacksResolved"] == ("False", "CallbackNotFound")
    assert conds(s)["Ready"] == ("False", "CallbackNotFound")
    assert conds(s)["Degraded"] == ("True", "CallbackNotFound")
    assert "audit" in st.condition(s, "Degraded")["message"]  # type: ignore[index]
    assert s["readyReplicas"] == 2  # the running Deployment is still reported
    conflict = st.Observation(spec, problems=(st.Problem(st.R_ID_CONFLICT, "taken"),))
    s = st.compute_status(None, conflict, "T")
    assert conds(s)["Ready"] == ("False", "PartitionIdConflict")


def test_status_queue_stats_and_backlog() -> None:
    spec = parse_partition(partition())
    stats = [
        {"name": "default", "ready": 5, "unacked": 1, "consumers": 2, "paused": False},
        {"name": "email", "ready": 7, "unacked": 0, "consumers": 0, "paused": True},
    ]
    s = st.compute_status(None, st.Observation(spec, deployment=dep(2, 2), queue_stats=stats), "T")
    assert s["backlog"] == 12 and s["queueCount"] == 2
    kept = st.compute_status(s, st.Observation(spec, deployment=dep(2, 2)), "T")
    assert kept["queues"] == s["queues"]


def test_redact_hides_the_password() -> None:
    text = redact(f"cannot connect to {URL} (user:s3cr3t-pw)", URL)
    assert "s3cr3t-pw" not in text and "<amqp-url>" in text


# -- the CRDs agree with roger.core ----------------------------------------------------


def _crd(name: str) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((ROOT / "crds" / f"{name}.roger.dev.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _cel_regex(rule: str) -> str:
    inner = rule.split("matches('", 1)[1].rsplit("')", 1)[0]
    return inner.replace("\\\\", "\\")


def test_crd_patterns_are_roger_core_patterns() -> None:
    p = _crd("partitions")["properties"]["spec"]["properties"]
    job_rule = p["jobs"]["items"]["x-kubernetes-validations"][0]["rule"]
    assert _cel_regex(job_rule) == MODULE_PATTERN
    queue_rule = p["queues"]["items"]["properties"]["name"]["x-kubernetes-validations"][0]
    assert _cel_regex(queue_rule["rule"]) == NAME_PATTERN
    assert _cel_regex(p["partitionId"]["x-kubernetes-validations"][0]["rule"]) == NAME_PATTERN
    assert p["retry"]["properties"]["levels"]["default"] == list(DEFAULT_RETRY_LEVELS)
    assert p["events"]["properties"]["hooks"]["items"]["enum"] == list(HOOKS)
    c = _crd("callbacks")["properties"]["spec"]["properties"]
    assert _cel_regex(c["module"]["x-kubernetes-validations"][0]["rule"]) == CLASS_PATH_PATTERN
    assert c["hooks"]["items"]["enum"] == list(HOOKS)
    root_rules = [r["rule"] for r in _crd("partitions")["x-kubernetes-validations"]]
    assert f"self.metadata.name.size() <= {MAX_PARTITION_NAME}" in root_rules


def test_config_hash_is_stable() -> None:
    assert config_hash("a") == config_hash("a") != config_hash("b")
