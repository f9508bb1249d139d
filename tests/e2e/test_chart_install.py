"""The Helm chart on the local cluster: installs, passes Pod Security "restricted", and its
RBAC is exactly enough for the operator (proven with the ServiceAccount's own token)."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from roger_devtools.polling import eventually
from roger_devtools.ports import free_port
from roger_devtools.processes import stop
from roger_operator.builders.rbac import OPERATOR_RULES
from tests.chart import CHART, HELM, helm
from tests.e2e.observe_support import (
    delete_rabbitmq_objects,
    http_ok,
    partition_manifest,
    secret_manifest,
    start_operator,
    tail,
)
from tests.e2e.operator_support import config_map_name
from tests.helpers import Kubectl

pytestmark = pytest.mark.e2e

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}
UNRESTRICTED_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "unrestricted-probe"},
    "spec": {"containers": [{"name": "c", "image": "x"}]},  # fine for "baseline" only
}


@pytest.fixture
def release(kubeconfig: str, kubectl: Kubectl, namespace: str) -> Iterator[str]:
    """A release name of the test's own (ClusterRoles are cluster-wide), uninstalled after.
    ``kubectl``: the shared CRDs are installed, as the release (crds.install=false) needs."""
    if not HELM.exists():
        pytest.skip("helm not built: run `make tools`")
    name = f"r{uuid.uuid4().hex[:6]}"
    yield name
    subprocess.run(
        [str(HELM), "--kubeconfig", kubeconfig, "uninstall", name, "-n", namespace, "--wait"],
        capture_output=True,
    )


def _label_restricted(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run("label", "namespace", namespace, *(f"{k}={v}" for k, v in RESTRICTED.items()))
    # Enforced here: a pod without the restricted settings is refused (the proof is not vacuous).
    denied = kubectl.run(
        "-n", namespace, "apply", "-f", "-", stdin=json.dumps(UNRESTRICTED_POD), check=False
    )
    assert denied.returncode != 0 and "violates PodSecurity" in denied.stderr, denied.stderr


def _service_account_kubeconfig(
    kubectl: Kubectl, kubeconfig: str, namespace: str, sa: str, path: Path
) -> str:
    """A kubeconfig holding only a token of the ServiceAccount: the pod's identity, exactly."""
    token = kubectl.run("-n", namespace, "create", "token", sa, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority-data")
    if ca is None:
        ca = base64.b64encode(Path(cluster["certificate-authority"]).read_bytes()).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {"server": cluster["server"], "certificate-authority-data": ca},
                    }
                ],
                "users": [{"name": sa, "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "local", "user": sa}}],
                "current-context": "sa",
            }
        )
    )
    return str(path)


def _can_i(kubectl: Kubectl, user: str, verb: str, resource: str, namespace: str | None) -> bool:
    """A SubjectAccessReview with the API group spelled out: `kubectl auth can-i` needs the
    resource served to find its group (KEDA's CRDs may not be installed here)."""
    name, _, group = resource.partition(".")
    name, _, subresource = name.partition("/")
    sa_namespace = user.split(":")[2]
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{sa_namespace}",
                "system:authenticated",
            ],
            "resourceAttributes": {
                "verb": verb,
                "group": group,
                "resource": name,
                **({"subresource": subresource} if subresource else {}),
                **({"namespace": namespace} if namespace else {}),
            },
        },
    }
    proc = kubectl.run("create", "-f", "-", "-o", "json", stdin=json.dumps(review))
    return bool(json.loads(proc.stdout)["status"].get("allowed"))


def _resource(group: str, resource: str) -> str:
    return f"{resource}.{group}" if group else resource


def test_chart_installs_in_a_restricted_namespace_and_its_rbac_runs_the_operator(
    kubeconfig: str,
    kubectl: Kubectl,
    namespace: str,
    release: str,
    amqp_url: str,
    tmp_path: Path,
) -> None:
    _label_restricted(kubectl, namespace)
    install = helm(
        kubeconfig, "install", release, str(CHART), "-n", namespace, "--wait", "--timeout", "90s",
        "--set", "crds.install=false",  # shared with the other tests (the kubectl fixture)
    )  # fmt: skip
    assert "STATUS: deployed" in install.stdout, install.stdout
    assert "roger-operator" in install.stdout  # NOTES.txt

    # The operator pods (2 replicas: leader and standby) are admitted and run (kwok fakes),
    # nothing refused.
    operator = f"{release}-roger-operator"
    pods = kubectl.get_json("-n", namespace, "pods", "-l", f"app.kubernetes.io/instance={release}")
    assert [p["status"]["phase"] for p in pods["items"]] == ["Running", "Running"]
    events = kubectl.get_json("-n", namespace, "events")["items"]
    refused = [e["message"] for e in events if e.get("reason") == "FailedCreate"]
    assert not refused, refused

    # Every rule the operator needs, as its ServiceAccount, here and cluster-wide.
    user = f"system:serviceaccount:{namespace}:{operator}"
    missing = []
    for rule in OPERATOR_RULES:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for ns in (namespace, None):
                        if not _can_i(kubectl, user, verb, _resource(group, resource), ns):
                            missing.append((verb, _resource(group, resource), ns))
    assert not missing, f"the chart's RBAC lacks: {missing}"
    # ... and no more than it needs.
    for verb, resource in [
        ("list", "secrets"),
        ("watch", "secrets"),
        ("create", "pods"),
        ("delete", "namespaces"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("delete", "partitions.roger.dev"),
        ("*", "*"),
    ]:
        assert not _can_i(kubectl, user, verb, resource, namespace), (verb, resource)

    # The operator as a local process with the ServiceAccount's token (exactly the chart's
    # RBAC): a Partition becomes its Deployment, pods admitted as "restricted", Ready.
    sa_config = _service_account_kubeconfig(
        kubectl, kubeconfig, namespace, operator, tmp_path / "sa.kubeconfig"
    )
    whoami = subprocess.run(
        [kubectl.base[0], "--kubeconfig", sa_config, "auth", "whoami", "-o", "json"],
        capture_output=True,
        text=True,
    )
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == user
    kubectl.apply(secret_manifest(namespace, amqp_url))
    partition = f"p-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "operator.log"
    metrics_port, health_port = free_port(), free_port()
    proc = start_operator(sa_config, [namespace], log, metrics_port, health_port)
    try:
        eventually(
            lambda: http_ok(f"http://127.0.0.1:{health_port}/healthz"),
            timeout=60,
            message=f"operator healthy; log: {tail(log)}",
        )
        kubectl.apply(partition_manifest(partition, namespace))
        child = f"roger-{partition}"
        eventually(
            lambda: (
                kubectl.run("-n", namespace, "get", "deployment", child, check=False).returncode
                == 0
            ),
            timeout=60,
            message=f"Deployment {child}; operator log: {tail(log)}",
        )
        for kind in ("service", "serviceaccount", "role", "rolebinding"):
            kubectl.run("-n", namespace, "get", kind, child)
        kubectl.run(
            "-n", namespace, "get", "configmap", config_map_name(kubectl, namespace, partition)
        )

        def ready() -> bool:
            obj = kubectl.get_json("-n", namespace, "partition", partition)
            conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
            return conditions.get("Ready", {}).get("status") == "True"

        eventually(ready, timeout=90, interval=1, message=f"Partition Ready; log: {tail(log)}")
        worker_pods = kubectl.get_json(
            "-n", namespace, "pods", "-l", f"app.kubernetes.io/instance={partition}"
        )["items"]
        assert [p["status"]["phase"] for p in worker_pods] == ["Running"]
        assert "Forbidden" not in log.read_text() and "forbidden" not in log.read_text()

        kubectl.run("-n", namespace, "delete", "partition", partition, "--timeout=60s")
        eventually(
            lambda: (
                kubectl.run("-n", namespace, "get", "deployment", child, check=False).returncode
                != 0
            ),
            timeout=60,
            message="children collected",
        )
    finally:
        kubectl.run("-n", namespace, "delete", "partition", "--all", "--timeout=30s", check=False)
        assert stop(proc) == 0, tail(log)
        delete_rabbitmq_objects(partition)


def test_chart_watching_namespaces_grants_only_those(
    kubeconfig: str, kubectl: Kubectl, namespace: str, release: str
) -> None:
    watched = f"{namespace}-w"[:63]
    kubectl.run("create", "namespace", watched)
    try:
        helm(
            kubeconfig, "install", release, str(CHART), "-n", namespace,
            "--set", f"watchNamespaces={{{watched}}}", "--set", "crds.install=false",
        )  # fmt: skip
        user = f"system:serviceaccount:{namespace}:{release}-roger-operator"
        dep = kubectl.get_json("-n", namespace, "deployment", f"{release}-roger-operator")
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--namespace={watched}" in args and "--all-namespaces" not in args
        for rule in OPERATOR_RULES:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    res = _resource(group, resource)
                    cluster_scoped = resource in ("namespaces", "customresourcedefinitions")
                    for verb in rule["verbs"]:
                        assert _can_i(kubectl, user, verb, res, watched), (verb, res)
                        if not cluster_scoped:
                            assert not _can_i(kubectl, user, verb, res, "default"), (verb, res)
    finally:
        kubectl.run("delete", "namespace", watched, "--wait=false", check=False)
