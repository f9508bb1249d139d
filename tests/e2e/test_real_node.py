"""The chart's operator and a Partition's workers on the real node (hack/node.sh: kubelet +
containerd + runc): real containers of the project's images, admitted by Pod Security
"restricted", made Ready by the kubelet's own probes, with their ServiceAccount tokens as
their only credentials, their memory limits enforced by the kernel.

Pods reach the broker through the node's bridge address and the API server through the
`kubernetes` Service's address (hack/node.sh forwards both to 127.0.0.1).
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
from roger_devtools.real_node import MEMORY_LIMIT, NODE, ON_THE_NODE, bridge_url, worker_partition
from tests.chart import CHART, helm
from tests.e2e.kube_events_support import list_events
from tests.e2e.observe_support import delete_rabbitmq_objects
from tests.e2e.operator_support import wait_condition
from tests.helpers import Kubectl

# The node (and its image imports) may come up inside this test; then a whole flow.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/roger-example-worker:0.1.0"
OPERATOR_IMAGE = "localhost/roger-operator"  # :0.1.0, the chart's appVersion
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
def operator(
    real_node: str, kubeconfig: str, kubectl: Kubectl, namespace: str
) -> Iterator[dict[str, Any]]:
    """The chart, installed with its operator Pod on the real node; uninstalled after."""
    kubectl.run("label", "namespace", namespace, *(f"{k}={v}" for k, v in RESTRICTED.items()))
    release = f"r{uuid.uuid4().hex[:6]}"
    helm(
        kubeconfig, "install", release, str(CHART), "-n", namespace,
        "--set", "crds.install=false", "--set", f"watchNamespaces={{{namespace}}}",
        "--set", "replicas=1", "--set", f"image.repository={OPERATOR_IMAGE}",
        "--set", "image.pullPolicy=Never",
        "--set-json", f"nodeSelector={json.dumps(ON_THE_NODE['nodeSelector'])}",
        "--set-json", f"tolerations={json.dumps(ON_THE_NODE['tolerations'])}",
    )  # fmt: skip
    selector = f"app.kubernetes.io/instance={release}"

    def ready() -> dict[str, Any] | None:
        pods = kubectl.get_json("-n", namespace, "pods", "-l", selector)["items"]
        return pods[0] if len(pods) == 1 and _running_ready(pods[0]) else None

    pod = eventually(ready, timeout=120, interval=1, message="operator Pod Ready")
    try:
        yield pod
    finally:
        kubectl.run("-n", namespace, "delete", "partition", "--all", "--timeout=120s", check=False)
        helm(kubeconfig, "uninstall", release, "-n", namespace, "--wait")


def _pods(
    kubectl: Kubectl, namespace: str, name: str, terminating: bool = False
) -> list[dict[str, Any]]:
    """The Partition's worker Pods (with those being deleted when ``terminating``)."""
    selector = f"app.kubernetes.io/instance={name}"
    items: list[dict[str, Any]] = kubectl.get_json("-n", namespace, "pods", "-l", selector)["items"]
    return [p for p in items if terminating or not p["metadata"].get("deletionTimestamp")]


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
    operator: dict[str, Any],
) -> None:
    # The chart's operator: a real container on the real node, in-cluster config only.
    assert operator["spec"]["nodeName"] == real_node
    assert operator["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    pod_url = bridge_url(amqp_url, str(urlparse(amqp_url).hostname))
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
        kubectl.apply(json.dumps(worker_partition(name, namespace, IMAGE)))
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
                # 400 MB in a 256 MiB container for 2 s: OOM-killed, then retried
                "crunch": client.enqueue(
                    name, "myapp.jobs:crunch_numbers", {"mb": 400, "until": time.time() + 2}
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

        def worker_log() -> str:
            out = kubectl.run("-n", namespace, "logs", pod_name, check=False).stdout
            return "\n".join(out.splitlines()[-30:])

        try:
            eventually(lambda: expected <= outcomes(), timeout=90, interval=1)
        except AssertionError:
            raise AssertionError(
                f"outcomes: missing {expected - outcomes()}; worker log:\n{worker_log()}"
            ) from None
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
        # The workers' hooks as Kubernetes Events: their in-cluster config works too.
        eventually(
            lambda: "JobBuried" in {e["reason"] for e in list_events(kubectl, namespace, name)},
            timeout=30,
            message="a JobBuried Event from a worker Pod",
        )

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

        def operator_log() -> str:
            pod = operator["metadata"]["name"]
            out = kubectl.run("-n", namespace, "logs", pod, "--tail=15", check=False).stdout
            return out[-3000:]

        # Delete: the operator's finalizer, then the Pods stop for real.
        # (The finalizer waits until the broker's management API has sampled the queues'
        # unacked counts, which can take its whole cleanup timeout.)
        kubectl.run("-n", namespace, "delete", "partition", name, "--wait=false")
        eventually(
            lambda: (
                not kubectl.get_json("-n", namespace, "partitions")["items"]
                and not _pods(kubectl, namespace, name, terminating=True)
            ),
            timeout=180,
            interval=1,
            message=f"partition and pods gone; operator log: {operator_log()}",
        )
    finally:
        delete_rabbitmq_objects(name)
