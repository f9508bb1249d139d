"""A Partition on the real node (hack/node.sh: kubelet + containerd + runc): its worker Pods
run as real containers of the example image, admitted by Pod Security "restricted", made
Ready by the kubelet's own probes, their memory limit enforced by the kernel.

The operator runs as a local process (its image is proved in tests/images). Pods reach the
broker through the node's bridge address (hack/node.sh forwards it to 127.0.0.1).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

import roger
from roger_devtools.polling import eventually
from tests.e2e.observe_support import apply_crds, delete_rabbitmq_objects
from tests.e2e.operator_support import OperatorProcess, wait_condition
from tests.helpers import Kubectl

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NODE = "10.213.0.1"  # hack/node.sh: the node's name and its bridge address
IMAGE = "localhost/roger-example-worker:0.1.0"
MEMORY_LIMIT = 256 * 2**20
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture(scope="session")
def real_node(kubeconfig: str) -> str:
    """The real node, up and Ready (a machine where it cannot run fails here, loudly)."""
    subprocess.run(["bash", "hack/node.sh", "up"], cwd=ROOT, check=True, timeout=1200)
    return NODE


@pytest.fixture
def kubectl(kubectl_bin: str, kubeconfig: str) -> Kubectl:
    return Kubectl(kubectl_bin, kubeconfig)


@pytest.fixture
def operator(kubeconfig: str, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kubeconfig, tmp_path / "operator.log", namespace=namespace)
    op.start()
    yield op
    op.stop()


def _partition(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "roger.dev/v1alpha1",
        "kind": "Partition",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "amqp": {"secretRef": {"name": "rabbitmq", "key": "url"}},
            "worker": {
                "image": IMAGE,
                "replicas": 1,
                "jobProcesses": 1,
                "resources": {"limits": {"memory": "256Mi"}, "requests": {"memory": "64Mi"}},
                "podTemplate": {
                    "nodeSelector": {"roger.dev/real-node": "true"},
                    "tolerations": [
                        {"key": "roger.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
            },
            "jobs": ["myapp.jobs"],
            "callbacks": ["audit"],
            "queues": [
                {"name": "default", "maxWorkers": 2},
                {"name": "email", "maxWorkers": 1},
                {"name": "reports", "maxWorkers": 1},
            ],
            "retry": {"levels": [1, 2]},
            "events": {"hooks": []},  # the Pods' network reaches no API server
        },
    }


def _pods(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={name}"
    items: list[dict[str, Any]] = kubectl.get_json("-n", namespace, "pods", "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _running_ready(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return pod["status"].get("phase") == "Running" and all(s.get("ready") for s in statuses)


def _audit(kubectl: Kubectl, namespace: str, pod: str) -> list[dict[str, Any]]:
    out = kubectl.run("-n", namespace, "logs", pod, check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"channel"')]


def test_partition_on_the_real_node(
    real_node: str,
    kubectl: Kubectl,
    namespace: str,
    amqp_url: str,
    operator: OperatorProcess,
) -> None:
    apply_crds(kubectl)
    kubectl.run("label", "namespace", namespace, *(f"{k}={v}" for k, v in RESTRICTED.items()))
    broker = urlparse(amqp_url)
    pod_url = amqp_url.replace(f"@{broker.hostname}:", f"@{real_node}:")  # the bridge address
    kubectl.apply(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "rabbitmq", "namespace": namespace},
                "stringData": {"url": pod_url},
            }
        )
    )
    kubectl.apply(
        yaml.safe_dump(
            {
                "apiVersion": "roger.dev/v1alpha1",
                "kind": "Callback",
                "metadata": {"name": "audit", "namespace": namespace},
                "spec": {"module": "myapp.callbacks:Audit"},
            }
        )
    )
    name = f"p-{uuid.uuid4().hex[:8]}"
    try:
        kubectl.apply(json.dumps(_partition(name, namespace)))
        wait_condition(kubectl, namespace, name, "Ready", "True", timeout=180)
        [pod] = _pods(kubectl, namespace, name)
        assert pod["spec"]["nodeName"] == real_node
        assert _running_ready(pod), pod["status"]
        status = pod["status"]["containerStatuses"][0]
        assert status["containerID"].startswith("containerd://"), status
        assert pod["status"]["podIP"].startswith("10.213.0."), pod["status"]
        pod_name = pod["metadata"]["name"]

        # kubectl exec: the container's user and memory limit, from inside.
        inside = kubectl.run(
            "-n", namespace, "exec", pod_name, "--", "sh", "-c",
            "id -u; cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
            " || cat /sys/fs/cgroup/memory.max; touch /x 2>/dev/null || echo read-only",
        ).stdout.split()  # fmt: skip
        assert inside == ["65532", str(MEMORY_LIMIT), "read-only"], inside

        with roger.Client(amqp_url) as client:
            ids = {
                "welcome": client.enqueue(name, "myapp.jobs:send_welcome", {"user": 7}),
                "charge": client.enqueue(name, "myapp.jobs:charge_card", {"card": "4242"}),
                "cancel": client.enqueue(name, "myapp.jobs:build_report", {"seconds": 1.5}),
                # 400 MB in a 256 MiB container for ~4 s: OOM-killed, then retried
                "crunch": client.enqueue(
                    name, "myapp.jobs:crunch_numbers", {"mb": 400, "until": time.time() + 4}
                ),
            }
            client.cancel(name, ids["cancel"])
        expected = {
            ("welcome", "after_run"),
            ("charge", "on_buried"),
            ("cancel", "on_cancel"),
            ("crunch", "on_error"),
            ("crunch", "after_run"),
        }
        by_id = {v: k for k, v in ids.items()}

        def outcomes() -> set[tuple[str, str]]:  # kubectl logs: the Audit callback's lines
            return {
                (by_id.get(r["id"], "?"), r["hook"]) for r in _audit(kubectl, namespace, pod_name)
            }

        eventually(lambda: expected <= outcomes(), timeout=90, interval=1, message="outcomes")
        crunch = [r for r in _audit(kubectl, namespace, pod_name) if r["id"] == ids["crunch"]]
        assert crunch[0]["hook"] == "on_error" and crunch[0].get("error") == "worker_crash", crunch
        oom = kubectl.run(
            "-n", namespace, "exec", pod_name, "--", "cat",
            "/sys/fs/cgroup/memory/memory.oom_control",
        ).stdout  # fmt: skip
        kills = dict(line.split() for line in oom.splitlines())
        assert int(kills["oom_kill"]) >= 1, oom  # the kernel did it, in this container's cgroup
        [pod] = _pods(kubectl, namespace, name)
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0  # only the job died

        # Scale: a second real container, Ready by its probes.
        kubectl.run("-n", namespace, "scale", "partition", name, "--replicas=2")
        eventually(
            lambda: (
                len(pods := _pods(kubectl, namespace, name)) == 2
                and all(_running_ready(p) and p["spec"]["nodeName"] == real_node for p in pods)
            ),
            timeout=120,
            interval=1,
            message="two Ready pods on the real node",
        )
        wait_condition(kubectl, namespace, name, "Ready", "True", timeout=60)

        # Delete: the operator's finalizer, then the Pods stop for real.
        # (The finalizer waits until the broker's management API has sampled the queues'
        # unacked counts, which can take its whole cleanup timeout.)
        kubectl.run("-n", namespace, "delete", "partition", name, "--wait=false")
        eventually(
            lambda: (
                not kubectl.get_json("-n", namespace, "partitions")["items"]
                and not kubectl.get_json("-n", namespace, "pods")["items"]
            ),
            timeout=180,
            interval=1,
            message=f"partition and pods gone; operator log: {operator.tail()}",
        )
    finally:
        kubectl.run("-n", namespace, "delete", "partition", "--all", "--timeout=60s", check=False)
        delete_rabbitmq_objects(name)
