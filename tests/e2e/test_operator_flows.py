"""The operator (a local ``roger-operator`` process) against the local cluster and broker.

Every test here is named ``test_operator_*`` so its namespace matches the operator's
``--namespace`` glob (see ``operator_support.NAMESPACE_GLOB``).
(Over 400 lines: its flows share one module-scoped operator process and CRD set-up.)
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import yaml

import roger
from roger.core import naming
from roger.core.config import parse_config
from roger_devtools.podspec import local_process
from roger_devtools.polling import eventually
from roger_devtools.processes import stop
from tests.e2e.operator_support import (
    BIN,
    NAMESPACE_GLOB,
    ROOT,
    OperatorProcess,
    callback_manifest,
    condition,
    config_map,
    config_map_name,
    get_or_none,
    partition_manifest,
    replace_in_spec,
    secret_data,
    secret_manifest,
    short_id,
    template_hash,
    wait_condition,
    wait_gone,
)
from tests.helpers import Kubectl

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def operator(
    kubectl: Kubectl, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(kubeconfig, log)
    op.start()
    yield op

    def mine() -> list[dict[str, Any]]:
        items = kubectl.get_json("partitions", "-A")["items"]
        return [p for p in items if fnmatch.fnmatch(p["metadata"]["namespace"], NAMESPACE_GLOB)]

    try:  # test namespaces are deleted without waiting: let their finalizers run first
        eventually(lambda: not mine(), timeout=60, message="test Partitions gone")
    except AssertionError:
        for p in mine():
            kubectl.drop_finalizers(p["metadata"]["namespace"], "partition", p["metadata"]["name"])
    code = op.stop()
    assert code == 0, f"operator exit code {code} on SIGTERM\n{op.tail()}"


@pytest.fixture
def ns(namespace: str, kubectl: Kubectl, amqp_url: str) -> str:
    """A namespace enforcing Pod Security "restricted", holding the AMQP Secret."""
    kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    kubectl.apply(secret_manifest(namespace, amqp_url))
    return namespace


def channel(amqp_url: str) -> Any:
    return pika.BlockingConnection(pika.URLParameters(amqp_url)).channel()


def queue_count(amqp_url: str, name: str) -> int | None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return int(conn.channel().queue_declare(name, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if conn.is_open:
            conn.close()


def run_pod_locally(
    k: Kubectl, ns: str, name: str, workdir: Path, extra_env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """The Deployment's pod (command, env with the Secret resolved, ConfigMap file)."""
    dep = k.get_json("-n", ns, "deployment", f"roger-{name}")
    template = dep["spec"]["template"]
    pod = {"metadata": {"name": f"{name}-local", "namespace": ns}, "spec": template["spec"]}
    secrets = {"rabbitmq": secret_data(k, ns, "rabbitmq")}
    cms = {config_map_name(k, ns, name): config_map(k, ns, name)["data"]}
    proc = local_process(pod, "worker", secrets, cms, str(workdir))
    for rel, text in proc.files.items():
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {
        **proc.env,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        **extra_env,
    }
    log = (workdir / "worker.log").open("wb")
    return subprocess.Popen(proc.argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def test_operator_apply_to_ready_and_jobs_run(
    operator: OperatorProcess,
    kubectl: Kubectl,
    ns: str,
    amqp_url: str,
    kubeconfig: str,
    tmp_path: Path,
) -> None:
    k = kubectl
    name = short_id()
    hooks = tmp_path / "hooks.jsonl"
    k.apply(callback_manifest("audit", ns, path=str(hooks)))
    k.apply(partition_manifest(name, ns, callbacks=["audit"]))
    obj = wait_condition(k, ns, name, "Ready", "True")

    # Children, as expected.
    child = f"roger-{name}"
    cm = config_map(k, ns, name)
    cfg = parse_config(yaml.safe_load(cm["data"]["worker.yaml"]))
    assert (cfg.partition, dict(cfg.queues)) == (name, {"default": 2, "email": 1})
    assert cfg.callbacks[0].config == {"path": str(hooks)}
    assert "amqp://" not in json.dumps(cm) and "amqp://" not in json.dumps(obj)
    dep = k.get_json("-n", ns, "deployment", child, "--show-managed-fields")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["roger", "worker", "--config", "/etc/roger/worker.yaml"]
    env = {e["name"]: e for e in c["env"]}
    assert env["ROGER_AMQP_URL"]["valueFrom"]["secretKeyRef"] == {"name": "rabbitmq", "key": "url"}
    refs = dep["metadata"]["ownerReferences"]
    assert refs[0]["kind"] == "Partition" and refs[0]["uid"] == obj["metadata"]["uid"]
    managers = {m["manager"] for m in dep["metadata"]["managedFields"]}
    assert "roger-operator" in managers
    for kind in ("service", "serviceaccount", "role", "rolebinding"):
        assert get_or_none(k, "-n", ns, kind, child) is not None, kind
    role = k.get_json("-n", ns, "role", child)
    assert {
        "apiGroups": ["roger.dev"],
        "resources": ["partitions"],
        "verbs": ["get"],
        "resourceNames": [name],
    } in role["rules"]
    # kwok Pods Running (admitted by the namespace's "restricted" Pod Security).
    pods = eventually(
        lambda: [
            p
            for p in k.get_json("-n", ns, "pods", "-l", f"app.kubernetes.io/instance={name}")[
                "items"
            ]
            if p["status"].get("phase") == "Running"
        ],
        message="worker pod Running",
    )
    assert len(pods) == 1
    status = obj["status"]
    assert status["partitionId"] == name and status["readyReplicas"] == 1
    assert (
        status["selector"]
        == f"app.kubernetes.io/instance={name},app.kubernetes.io/name=roger-worker"
    )
    assert {q["name"] for q in status["queues"]} == {"default", "email"}
    # Queues exist before any worker ran: producers may enqueue.
    for q in ("default", "email"):
        for queue in naming.all_queue_names(name, q, (1, 2)):
            assert queue_count(amqp_url, queue) == 0, queue
    # Printer columns.
    row = k.run("-n", ns, "get", "rp", name).stdout
    assert "READY" in row and "BACKLOG" in row and name in row

    # The pod's command and env, run locally, really process a job; Events reach the Partition.
    out = tmp_path / "out.txt"
    import roger

    with roger.Client(amqp_url) as client:
        job_id = client.enqueue(name, "tests.jobs.basic:ok", {"out": str(out), "n": 1})
    eventually(
        lambda: k.get_json("-n", ns, "partition", name)["status"]["backlog"] == 1,
        message="backlog 1 in status",
    )
    worker = run_pod_locally(k, ns, name, tmp_path / "pod", {"KUBECONFIG": kubeconfig})
    try:
        eventually(
            lambda: out.exists() and "ok 1" in out.read_text(), timeout=60, message="job ran"
        )
        eventually(lambda: '"after_run"' in hooks.read_text(), message="callback ran")

        def events() -> set[str]:
            items = k.get_json("-n", ns, "events.events.k8s.io")["items"]
            return {
                e["reason"]
                for e in items
                if e.get("regarding", {}).get("kind") == "Partition"
                and e["regarding"]["name"] == name
            }

        assert eventually(
            lambda: {"JobStarted", "JobSucceeded"} <= events(),
            timeout=60,
            message="JobSucceeded Event on the Partition",
        )
        eventually(
            lambda: (
                next(
                    q
                    for q in k.get_json("-n", ns, "partition", name)["status"]["queues"]
                    if q["name"] == "default"
                )["consumers"]
                >= 1
            ),
            message="consumer counted in status",
        )
    finally:
        stop(worker)
    assert job_id


def test_operator_edit_scale_and_pause(
    operator: OperatorProcess, kubectl: Kubectl, ns: str, amqp_url: str
) -> None:
    k = kubectl
    name = short_id()
    k.apply(partition_manifest(name, ns))
    wait_condition(k, ns, name, "Ready", "True")
    before = template_hash(k, ns, name)
    first_cm = config_map_name(k, ns, name)

    # Scale through the scale subresource.
    k.run("-n", ns, "scale", f"partition/{name}", "--replicas", "3")
    obj = wait_condition(k, ns, name, "Ready", "True")
    assert obj["status"]["replicas"] == 3 and obj["status"]["readyReplicas"] == 3
    scale = k.get_json("-n", ns, "partition", name, "--subresource", "scale")
    assert scale["status"]["replicas"] == 3 and "roger-worker" in scale["status"]["selector"]
    assert template_hash(k, ns, name) == before  # scaling is not a rollout

    # Edit a queue: the ConfigMap and the pod template hash follow.
    replace_in_spec(k, ns, name, "queues/0/maxWorkers", 7)
    wait_condition(k, ns, name, "Ready", "True")
    cm = config_map(k, ns, name)
    assert yaml.safe_load(cm["data"]["worker.yaml"])["queues"]["default"] == 7
    edited = template_hash(k, ns, name)
    assert edited != before
    # One ConfigMap per config: the old one goes once no ReplicaSet with replicas uses it.
    assert cm["metadata"]["name"] != first_cm
    eventually(
        lambda: get_or_none(k, "-n", ns, "configmap", first_cm) is None,
        message="the old config's ConfigMap collected after the rollout",
    )

    # Pause: no restart (the template is unchanged); the broker state follows.
    replace_in_spec(k, ns, name, "queues/1/paused", True)
    obj = wait_condition(k, ns, name, "Ready", "True")
    assert template_hash(k, ns, name) == edited

    def paused() -> list[str]:
        with roger.Client(amqp_url) as client:
            return list(client.info(name, queues=("default", "email"), retry_levels=()).paused)

    eventually(lambda: paused() == ["email"], message="email paused in the broker")
    eventually(
        lambda: (
            [q["paused"] for q in k.get_json("-n", ns, "partition", name)["status"]["queues"]]
            == [False, True]
        ),
        message="paused in status",
    )
    replace_in_spec(k, ns, name, "queues/1/paused", False)
    eventually(lambda: paused() == [], message="email resumed in the broker")
    assert template_hash(k, ns, name) == edited  # no restart


def test_operator_callback_change_rolls_and_missing_callback_blocks(
    operator: OperatorProcess, kubectl: Kubectl, ns: str
) -> None:
    k = kubectl
    name = short_id()
    k.apply(callback_manifest("audit", ns, level="a"))
    k.apply(partition_manifest(name, ns, callbacks=["audit"]))
    wait_condition(k, ns, name, "Ready", "True")
    before = template_hash(k, ns, name)

    k.apply(callback_manifest("audit", ns, level="b"))
    eventually(lambda: template_hash(k, ns, name) != before, message="rollout on Callback change")
    cm = config_map(k, ns, name)
    assert yaml.safe_load(cm["data"]["worker.yaml"])["callbacks"][0]["config"] == {"level": "b"}

    rolled = k.get_json("-n", ns, "deployment", f"roger-{name}")
    k.run("-n", ns, "delete", "callback", "audit")
    obj = wait_condition(k, ns, name, "CallbacksResolved", "False", "CallbackNotFound")
    assert condition(obj, "Ready")["status"] == "False"
    assert "audit" in condition(obj, "Degraded")["message"]
    now = k.get_json("-n", ns, "deployment", f"roger-{name}")
    assert now["metadata"]["generation"] == rolled["metadata"]["generation"]

    k.apply(callback_manifest("audit", ns, level="b"))
    wait_condition(k, ns, name, "Ready", "True")


def test_operator_secret_missing_leaves_deployment_untouched(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str, amqp_url: str
) -> None:
    k = kubectl
    ns = namespace
    name = short_id()
    k.apply(partition_manifest(name, ns))
    obj = wait_condition(k, ns, name, "Degraded", "True", "SecretNotFound")
    assert "rabbitmq" in condition(obj, "Degraded")["message"]
    assert condition(obj, "Ready")["reason"] == "SecretNotFound"
    assert get_or_none(k, "-n", ns, "deployment", f"roger-{name}") is None

    k.apply(secret_manifest(ns, amqp_url))  # the periodic refresh picks it up
    wait_condition(k, ns, name, "Ready", "True")
    dep = k.get_json("-n", ns, "deployment", f"roger-{name}")

    k.run("-n", ns, "delete", "secret", "rabbitmq")
    k.run(
        "-n",
        ns,
        "patch",
        "partition",
        name,
        "--type=merge",
        "-p",
        '{"spec":{"worker":{"image":"example/jobs-worker:2.0"}}}',
    )
    wait_condition(k, ns, name, "Ready", "False", "SecretNotFound")
    after = k.get_json("-n", ns, "deployment", f"roger-{name}")
    assert after["metadata"]["generation"] == dep["metadata"]["generation"]
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == "example/jobs-worker:1.0"


def test_operator_repairs_deleted_and_drifted_children(
    operator: OperatorProcess, kubectl: Kubectl, ns: str
) -> None:
    k = kubectl
    name = short_id()
    child = f"roger-{name}"
    k.apply(partition_manifest(name, ns, worker={"replicas": 2}))
    wait_condition(k, ns, name, "Ready", "True")
    old = k.get_json("-n", ns, "deployment", child)["metadata"]["uid"]
    k.run("-n", ns, "delete", "deployment", child, "--wait=false")
    eventually(
        lambda: (
            (get_or_none(k, "-n", ns, "deployment", child) or {"metadata": {"uid": old}})[
                "metadata"
            ]["uid"]
            != old
        ),
        message="Deployment recreated",
    )
    cm_name = config_map_name(k, ns, name)
    for kind, obj_name in (("configmap", cm_name), ("service", child), ("role", child)):
        uid = k.get_json("-n", ns, kind, obj_name)["metadata"]["uid"]
        k.run("-n", ns, "delete", kind, obj_name)
        eventually(
            lambda kind=kind, obj_name=obj_name, uid=uid: (
                (get_or_none(k, "-n", ns, kind, obj_name) or {"metadata": {"uid": uid}})[
                    "metadata"
                ]["uid"]
                != uid
            ),
            message=f"{kind} recreated",
        )
    # Drift: someone scales the Deployment or edits the ConfigMap; the operator takes it back.
    k.run("-n", ns, "scale", "deployment", child, "--replicas", "5")
    eventually(
        lambda: k.get_json("-n", ns, "deployment", child)["spec"]["replicas"] == 2,
        message="replicas restored",
    )
    # A config's ConfigMap is immutable: what a pod reads cannot drift.
    edit = k.run(
        "-n",
        ns,
        "patch",
        "configmap",
        cm_name,
        "--type=merge",
        "-p",
        '{"data":{"worker.yaml":"partition: hacked"}}',
        check=False,
    )
    assert edit.returncode != 0 and "immutable" in edit.stderr, edit.stderr
    assert "hacked" not in k.get_json("-n", ns, "configmap", cm_name)["data"]["worker.yaml"]
    wait_condition(k, ns, name, "Ready", "True")


def test_operator_restart_mid_flow_converges_without_duplicates(
    operator: OperatorProcess, kubectl: Kubectl, ns: str
) -> None:
    k = kubectl
    names = [short_id() for _ in range(3)]
    for n in names:
        k.apply(partition_manifest(n, ns, worker={"replicas": 2}))
    # Kill it hard while it is working, then restart.
    time.sleep(0.3)
    assert operator.proc is not None
    operator.proc.send_signal(signal.SIGKILL)
    operator.proc.wait()
    operator.start()
    for n in names:
        wait_condition(k, ns, n, "Ready", "True")
    deps = k.get_json("-n", ns, "deployments")["items"]
    assert sorted(d["metadata"]["name"] for d in deps) == sorted(f"roger-{n}" for n in names)
    rs = k.get_json("-n", ns, "replicasets")["items"]
    assert len(rs) == len(names), [r["metadata"]["name"] for r in rs]
    pods = k.get_json("-n", ns, "pods")["items"]
    assert len(pods) == 2 * len(names)
    # A clean SIGTERM stop and start again: still nothing new.
    assert operator.stop() == 0
    operator.start()
    for n in names:
        wait_condition(k, ns, n, "Ready", "True")
    assert len(k.get_json("-n", ns, "replicasets")["items"]) == len(names)


def test_operator_delete_collects_children_and_keeps_queues_with_jobs(
    operator: OperatorProcess, kubectl: Kubectl, ns: str, amqp_url: str
) -> None:
    k = kubectl
    name = short_id()
    child = f"roger-{name}"
    k.apply(partition_manifest(name, ns))
    wait_condition(k, ns, name, "Ready", "True")
    cm_name = config_map_name(k, ns, name)
    import roger

    with roger.Client(amqp_url) as client:
        client.enqueue(name, "tests.jobs.basic:noop", None, queue="default")
    k.run("-n", ns, "delete", "partition", name, "--timeout=60s")
    for kind in ("deployment", "service", "serviceaccount", "role", "rolebinding"):
        wait_gone(k, "-n", ns, kind, child)
    wait_gone(k, "-n", ns, "configmap", cm_name)
    assert queue_count(amqp_url, naming.queue_name(name, "default")) == 1
    assert queue_count(amqp_url, naming.queue_name(name, "email")) is None
    # A kept queue keeps its group (retry, buried, invalid): its jobs can still retry.
    assert queue_count(amqp_url, naming.retry_queue_name(name, "default", 1)) == 0
    assert queue_count(amqp_url, naming.retry_queue_name(name, "email", 1)) is None
    events = k.get_json("-n", ns, "events.events.k8s.io")["items"]
    kept = [e for e in events if e["reason"] == "QueuesKept" and e["regarding"]["name"] == name]
    assert kept and naming.queue_name(name, "default") in kept[0]["note"]
    # The claim stays: another namespace cannot silently inherit these jobs.
    other = f"{ns}-b"
    k.run("create", "namespace", other)
    try:
        k.apply(secret_manifest(other, amqp_url))
        k.apply(partition_manifest("thief", other, partitionId=name))
        obj = wait_condition(k, other, "thief", "Degraded", "True", "PartitionIdConflict")
        assert f"{ns}/{name}" in condition(obj, "Degraded")["message"]
        assert get_or_none(k, "-n", other, "deployment", "roger-thief") is None
        k.run("-n", other, "delete", "partition", "thief", "--timeout=60s")
    finally:
        k.run("delete", "namespace", other, "--wait=false", check=False)
    ch = channel(amqp_url)
    ch.queue_delete(naming.queue_name(name, "default"))
    ch.exchange_delete(naming.claim_exchange_name(name))
    ch.connection.close()


def test_operator_partitions_in_two_namespaces_never_share_queues(
    operator: OperatorProcess, kubectl: Kubectl, ns: str, amqp_url: str
) -> None:
    k = kubectl
    pid = short_id()
    other = f"{ns}-b"
    k.apply(partition_manifest("first", ns, partitionId=pid))
    wait_condition(k, ns, "first", "Ready", "True")
    k.run("create", "namespace", other)
    try:
        k.apply(secret_manifest(other, amqp_url))
        k.apply(partition_manifest("second", other, partitionId=pid))
        obj = wait_condition(k, other, "second", "Ready", "False", "PartitionIdConflict")
        message = condition(obj, "Degraded")["message"]
        assert f"{ns}/first" in message and "spec.partitionId" in message
        assert get_or_none(k, "-n", other, "deployment", "roger-second") is None
        # Freed when the owner goes (its queues are empty): the other one may take it.
        k.run("-n", ns, "delete", "partition", "first", "--timeout=60s")
        wait_condition(k, other, "second", "Ready", "True", timeout=60)
        k.run("-n", other, "delete", "partition", "second", "--timeout=60s")
    finally:
        k.run("delete", "namespace", other, "--wait=false", check=False)


def test_operator_metrics_and_health(operator: OperatorProcess, kubectl: Kubectl, ns: str) -> None:
    # A reconcile of its own: the operator may have been restarted by an earlier test and
    # have seen none (a histogram has no buckets before its first observation).
    name = short_id()
    kubectl.apply(partition_manifest(name, ns))
    wait_condition(kubectl, ns, name, "Ready", "True")
    text = operator.metrics()
    assert "roger_operator_reconciles_total" in text
    assert "roger_operator_reconcile_duration_seconds_bucket" in text
    assert operator.healthy()

    def ready_partitions() -> float:
        series = f'roger_operator_partitions{{partition_namespace="{ns}",phase="Ready"}} '
        lines = [ln for ln in operator.metrics().splitlines() if ln.startswith(series)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    ready = ready_partitions()
    assert ready >= 1
    kubectl.run("-n", ns, "delete", "partition", name, "--timeout=60s")
    eventually(lambda: ready_partitions() == ready - 1, 30, message="one Ready fewer")
