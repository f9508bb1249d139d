"""The operator image runs as the chart runs it, with nothing but the chart's RBAC.

The chart is installed (its operator Pods are kwok's fakes); its operator Deployment's Pod
is then run for real from the roger-operator image, translated flag for flag into `podman
run` (roger_devtools.podman: uid 65532, read-only root filesystem, capabilities dropped, the
/tmp emptyDir, its memory limit), with what a kubelet gives it for in-cluster config: a
token of the chart's ServiceAccount (`kubectl create token`) and the cluster's CA in
/var/run/secrets/kubernetes.io/serviceaccount, KUBERNETES_SERVICE_HOST=127.0.0.1 and the
API server's port (host networking). It wins the chart's leader Lease and reconciles a
Partition: children created, Ready, deleted.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from roger_devtools.podman import ServiceAccount, podman_run
from roger_devtools.polling import eventually
from roger_devtools.ports import free_port
from tests.chart import CHART, helm
from tests.e2e.observe_support import (
    delete_rabbitmq_objects,
    http_ok,
    partition_manifest,
    secret_manifest,
)
from tests.e2e.operator_support import config_map_name
from tests.helpers import Kubectl
from tests.images.conftest import Images, podman, podman_env

pytestmark = pytest.mark.e2e


def _cluster(kubeconfig: str) -> tuple[str, int, str]:
    """The API server's host and port, and its CA (PEM), from the admin kubeconfig."""
    cluster = yaml.safe_load(Path(kubeconfig).read_text())["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority-data")
    pem = (
        base64.b64decode(ca).decode()
        if ca is not None
        else Path(cluster["certificate-authority"]).read_text()
    )
    server = urlparse(cluster["server"])
    assert server.hostname == "127.0.0.1" and server.port, server
    return server.hostname, server.port, pem


def test_operator_image_reconciles_with_the_charts_service_account_only(
    kubeconfig: str,
    kubectl: Kubectl,
    namespace: str,
    amqp_url: str,
    images: Images,
    container_name: str,
    tmp_path: Path,
) -> None:
    release = f"r{uuid.uuid4().hex[:6]}"
    metrics_port, health_port = free_port(), free_port()
    helm(
        kubeconfig, "install", release, str(CHART), "-n", namespace,
        "--set", "crds.install=false", "--set", f"watchNamespaces={{{namespace}}}",
        "--set", f"operator.metricsPort={metrics_port}",
        "--set", f"operator.healthPort={health_port}",
        "--set-json", 'operator.extraArgs=["--bind-address=127.0.0.1"]',
    )  # fmt: skip
    partition = f"p-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "operator.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        operator = f"{release}-roger-operator"
        template = kubectl.get_json("-n", namespace, "deployment", operator)["spec"]["template"]
        pod = {**template, "metadata": {"name": f"{operator}-0", "namespace": namespace}}
        token = kubectl.run("-n", namespace, "create", "token", operator).stdout.strip()
        host, port, ca = _cluster(kubeconfig)
        run = podman_run(
            pod,
            "operator",
            name=container_name,
            secrets={},
            config_maps={},
            pod_dir=str(tmp_path),
            image=images.operator,
            service_account=ServiceAccount(token, ca, namespace, host, port),
        )
        for rel, text in run.files.items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                run.argv, env=podman_env(), stdout=out, stderr=subprocess.STDOUT
            )

        def healthy() -> bool:
            assert proc is not None and proc.poll() is None, log.read_text()[-3000:]
            return http_ok(f"http://127.0.0.1:{health_port}/healthz")

        eventually(healthy, timeout=90, message=f"operator container /healthz; log: {log}")
        user = podman("exec", container_name, "id", "-u").stdout.strip()
        assert user == "65532"

        kubectl.apply(secret_manifest(namespace, amqp_url))
        kubectl.apply(partition_manifest(partition, namespace))
        child = f"roger-{partition}"

        def ready() -> bool:
            obj = kubectl.get_json("-n", namespace, "partition", partition)
            conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
            return conditions.get("Ready", {}).get("status") == "True"

        eventually(
            ready,
            timeout=120,
            interval=1,
            message=f"Partition Ready; log: {log.read_text()[-3000:]}",
        )
        for kind in ("deployment", "service", "serviceaccount", "role", "rolebinding"):
            kubectl.run("-n", namespace, "get", kind, child)
        config = config_map_name(kubectl, namespace, partition)  # named by its content's digest
        kubectl.run("-n", namespace, "get", "configmap", config)
        lease = kubectl.get_json("-n", namespace, "lease", operator)
        assert lease["spec"]["holderIdentity"].startswith(f"{operator}-0"), lease["spec"]

        # Deleting runs the operator's finalizer (broker objects), then the children go. The
        # bound is for a broker loaded by the other test streams (60 s was once too short).
        kubectl.run("-n", namespace, "delete", "partition", partition, "--timeout=180s")
        eventually(
            lambda: (
                kubectl.run("-n", namespace, "get", "deployment", child, check=False).returncode
                != 0
            ),
            timeout=60,
            message="children collected",
        )
        text = log.read_text()
        assert "Forbidden" not in text and "forbidden" not in text, text[-3000:]
        podman("stop", "--time", "30", container_name, timeout=60)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        kubectl.run("-n", namespace, "delete", "partition", "--all", "--timeout=30s", check=False)
        helm(kubeconfig, "uninstall", release, "-n", namespace, "--wait")
        delete_rabbitmq_objects(partition)


def test_operator_image_holds_no_kubernetes_package(images: Images) -> None:
    """The image installs only the [operator] extra: kopf would import the official client
    whenever it is there (12 MiB of RSS), and the operator has its own (kube.client)."""
    probe = "import importlib.util as u; print(u.find_spec('kubernetes'), u.find_spec('kopf'))"
    out = podman("run", "--rm", "--entrypoint", "python", images.operator, "-c", probe)
    absent, kopf = out.stdout.split(maxsplit=1)
    assert absent == "None" and "kopf" in kopf, out.stdout
