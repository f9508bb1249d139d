"""Tenants on one broker and one cluster: colliding queue names never both become Ready, a
Callback that is not a callback class is refused (the Partition says ``CallbackRejected``),
and a callback's config value from a Secret reaches the hook without passing through a
ConfigMap.

The operator here watches ``t-tenancy-*`` only (its own namespaces, which no other test
operator's ``t-test-operator*`` glob matches); worker pods run as local processes through
``roger_devtools.localpods`` (kwok runs nothing).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import yaml
from kubernetes import client, config

from roger.core import naming
from roger_devtools.localpods import LocalPods
from roger_devtools.polling import eventually
from tests.e2e.operator_support import (
    BIN,
    ROOT,
    OperatorProcess,
    condition,
    config_map,
    get_or_none,
    partition_manifest,
    secret_manifest,
    short_id,
    wait_condition,
)
from tests.helpers import TEST_TAG, Kubectl, install_crds

pytestmark = pytest.mark.e2e
GLOB = f"{TEST_TAG}-tenancy-*"


@pytest.fixture(scope="module")
def operator(
    kubectl: Kubectl, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("op") / "operator.log", 1.0, GLOB)
    op.start()
    yield op
    assert op.stop(timeout=90) == 0, op.tail()


@pytest.fixture
def tenant(kubectl: Kubectl, amqp_url: str, unique_name: str) -> Iterator[str]:
    """A namespace of the test's own, matched by the operator's glob, with the AMQP Secret."""
    ns = f"{TEST_TAG}-tenancy-{unique_name[-6:]}"
    kubectl.run("create", "namespace", ns)
    kubectl.apply(secret_manifest(ns, amqp_url))
    yield ns
    for p in kubectl.get_json("-n", ns, "partitions")["items"]:
        kubectl.run("-n", ns, "delete", "partition", p["metadata"]["name"], "--timeout=60s",
                    check=False)  # fmt: skip
    kubectl.run("delete", "namespace", ns, "--wait=false", check=False)


def queue_exists(amqp_url: str, name: str) -> bool:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        conn.channel().queue_declare(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if conn.is_open:
            conn.close()


def test_operator_tenancy_colliding_queue_names_never_both_ready(
    operator: OperatorProcess, kubectl: Kubectl, tenant: str, amqp_url: str
) -> None:
    """Partition <id> with queue b-c and Partition <id>-b with queue c both resolve to
    <id>-b-c: the second is refused (QueueNameConflict), gets no workers, and deleting it
    leaves the first one's queues alone."""
    k, pid = kubectl, short_id()
    other = f"{tenant}-b"
    k.apply(partition_manifest("first", tenant, partitionId=pid, queues=[{"name": "b-c"}]))
    wait_condition(k, tenant, "first", "Ready", "True", timeout=120)
    k.run("create", "namespace", other)
    try:
        k.apply(secret_manifest(other, amqp_url))
        k.apply(partition_manifest("second", other, partitionId=f"{pid}-b", queues=[{"name": "c"}]))
        obj = wait_condition(k, other, "second", "Ready", "False", "QueueNameConflict", 120)
        degraded = condition(obj, "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "QueueNameConflict"
        assert f"{tenant}/first" in degraded["message"] and f"{pid}-b-c" in degraded["message"]
        assert get_or_none(k, "-n", other, "deployment", "roger-second") is None
        assert condition(k.get_json("-n", tenant, "partition", "first"), "Ready")["status"] == (
            "True"
        )
        # Deleting the refused one touches nothing of the owner's.
        k.run("-n", other, "delete", "partition", "second", "--timeout=60s")
        for name in naming.all_queue_names(pid, "b-c", (1, 2)):
            assert queue_exists(amqp_url, name), name
        # A queue name that would be a waiting room never gets in (the CRD refuses it). The
        # CRDs are shared with other test runs on this cluster: ours, right now.
        third = partition_manifest("third", other, queues=[{"name": "execution-waiting-x"}])

        def refused() -> bool:
            install_crds(k)
            proc = k.run("apply", "--dry-run=server", "-f", "-", stdin=third, check=False)
            return proc.returncode != 0 and "execution-waiting" in proc.stderr

        eventually(refused, timeout=30, message="the CRD refuses a waiting-room queue name")
    finally:
        k.run("delete", "namespace", other, "--wait=false", check=False)


def callback(name: str, namespace: str, module: str, config: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "roger.dev/v1alpha1",
            "kind": "Callback",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"module": module, "config": config},
        }
    )


@pytest.fixture
def pods(
    tenant: str, kubeconfig: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalPods]:
    """The tenant's worker pods as local processes (run by ``sync()``)."""
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    config.load_kube_config(kubeconfig)  # type: ignore[no-untyped-call]
    local = LocalPods(
        client.CoreV1Api(), "app.kubernetes.io/name=roger-worker", tenant, tmp_path / "pods", None
    )
    yield local
    local.stop_all()


def test_operator_tenancy_callback_rejected_then_secret_value_reaches_the_hook(
    operator: OperatorProcess,
    kubectl: Kubectl,
    tenant: str,
    amqp_url: str,
    pods: LocalPods,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    k, name = kubectl, short_id()
    marker = tmp_path / "popen-ran"
    k.apply(callback("audit", tenant, "subprocess:Popen", {"args": ["touch", str(marker)]}))
    k.apply(partition_manifest(name, tenant, callbacks=["audit"]))

    def rejected() -> dict[str, Any] | None:
        pods.sync()  # the worker starts, refuses the callback, exits; restarted like a kubelet
        obj = k.get_json("-n", tenant, "partition", name)
        return obj if condition(obj, "Degraded").get("reason") == "CallbackRejected" else None

    obj = eventually(rejected, timeout=240, message="Degraded CallbackRejected")
    degraded = condition(obj, "Degraded")
    assert "subprocess:Popen" in degraded["message"]
    assert "implements none of the hooks" in degraded["message"]
    assert condition(obj, "Ready")["status"] == "False"
    # What the worker said as it exited: the container's termination message (its log tail;
    # the log itself starts afresh on each restart, as a kubelet's does).
    said = [
        ((cs.get("lastState") or {}).get("terminated") or {}).get("message", "")
        for pod in k.get_json("-n", tenant, "pods")["items"]
        for cs in (pod.get("status") or {}).get("containerStatuses") or ()
    ]
    said += [p.read_text() for p in (tmp_path / "pods").rglob("process.log")]
    assert any("roger: callback subprocess:Popen rejected" in m for m in said), said
    assert not marker.exists(), "Popen was called"

    # Fixed: a real callback class whose config value comes from a Secret. (Not under /tmp:
    # the pod mounts an emptyDir there, which localpods maps to a directory of the pod's.)
    hooks = Path("/var/tmp") / f"roger-tenancy-{uuid.uuid4().hex}.jsonl"
    request.addfinalizer(lambda: hooks.unlink(missing_ok=True))
    k.apply(secret_manifest(tenant, str(hooks), name="hook-target"))  # key "url"
    ref = {"valueFrom": {"secretKeyRef": {"name": "hook-target", "key": "url"}}}
    k.apply(callback("audit", tenant, "tests.jobs.callbacks:Recorder", {"path": ref}))

    def ready() -> bool:
        pods.sync()
        obj = k.get_json("-n", tenant, "partition", name)
        return condition(obj, "Ready").get("status") == "True" and bool(
            [r for r in pods.running.values() if r.proc.poll() is None]
        )

    eventually(ready, timeout=240, message="Ready with the fixed callback")
    cm = config_map(k, tenant, name)
    assert str(hooks) not in json.dumps(cm)
    assert str(hooks) not in json.dumps(k.get_json("-n", tenant, "partition", name))
    import roger

    out = tmp_path / "out.txt"
    with roger.Client(amqp_url) as c:
        c.enqueue(name, "tests.jobs.basic:ok", {"out": str(out), "n": 7})

    def hook_ran() -> bool:
        pods.sync()
        return hooks.exists() and '"after_run"' in hooks.read_text()

    eventually(hook_ran, timeout=120, message="the hook wrote to the path from the Secret")
    assert "ok 7" in out.read_text()
