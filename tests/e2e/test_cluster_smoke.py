"""The local cluster is real: CRDs, controllers, scheduling, GC, RBAC, loopback only."""

from __future__ import annotations

import json
import subprocess
import textwrap
from typing import Any

import pytest

from roger_devtools.polling import eventually
from tests import kube_api
from tests.helpers import Kubectl

pytestmark = pytest.mark.e2e


CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: widgets.smoke.roger.dev}
    spec:
      group: smoke.roger.dev
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
      - name: v1
        served: true
        storage: true
        schema:
          openAPIV3Schema:
            type: object
            properties:
              spec:
                type: object
                required: [size]
                properties:
                  size: {type: integer, minimum: 1}
    """
)


def test_crd_and_custom_object(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(CRD)
    kubectl.run(
        "wait", "--for=condition=Established", "crd/widgets.smoke.roger.dev", "--timeout=30s"
    )
    widget = "apiVersion: smoke.roger.dev/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 3}\n"
    eventually(
        lambda: (
            kubectl.run("apply", "-n", namespace, "-f", "-", stdin=widget, check=False).returncode
            == 0
        ),
        message="Widget accepted",
    )
    assert kubectl.get_json("widget", "w", "-n", namespace)["spec"]["size"] == 3
    bad = widget.replace("size: 3", "size: 0")
    refused = kubectl.run("apply", "-n", namespace, "-f", "-", stdin=bad, check=False)
    assert refused.returncode != 0 and "should be greater than or equal to 1" in refused.stderr


def _running_pods(kubectl: Kubectl, namespace: str, selector: str) -> int:
    pods = kubectl.get_json("pods", "-n", namespace, "-l", selector)["items"]
    return sum(
        p["status"].get("phase") == "Running"
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
        for p in pods
    )


def test_deployment_reaches_two_running_pods_then_gc(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run(
        "create", "deployment", "web", "-n", namespace, "--image=example/web:1", "--replicas=2"
    )
    eventually(
        lambda: _running_pods(kubectl, namespace, "app=web") == 2,
        timeout=60,
        message="2 Running and Ready pods",
    )
    nodes = {p["spec"]["nodeName"] for p in kubectl.get_json("pods", "-n", namespace)["items"]}
    assert nodes and all(n.startswith("kwok-node-") for n in nodes)
    # Deleting the owner lets kube-controller-manager's garbage collector remove dependents.
    kubectl.run("delete", "deployment", "web", "-n", namespace, "--cascade=background")
    eventually(
        lambda: (
            not kubectl.get_json("replicasets", "-n", namespace)["items"]
            and not kubectl.get_json("pods", "-n", namespace)["items"]
        ),
        timeout=60,
        message="ReplicaSet and Pods garbage-collected",
    )


def test_rbac_denies_what_a_service_account_lacks(
    kubectl_bin: str, kubeconfig: str, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.run("create", "serviceaccount", "reader", "-n", namespace)
    kubectl.run(
        "create", "role", "read-pods", "-n", namespace, "--verb=get,list", "--resource=pods"
    )
    kubectl.run(
        "create",
        "rolebinding",
        "reader",
        "-n",
        namespace,
        "--role=read-pods",
        f"--serviceaccount={namespace}:reader",
    )
    sa = Kubectl(kubectl_bin, kubeconfig, as_user=f"system:serviceaccount:{namespace}:reader")
    assert sa.run("auth", "can-i", "list", "pods", "-n", namespace).stdout.strip() == "yes"
    denied = sa.run("create", "configmap", "x", "-n", namespace, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr
    assert (
        sa.run("auth", "can-i", "delete", "pods", "-n", namespace, check=False).stdout.strip()
        == "no"
    )


def test_service_account_tokens_are_signed(
    kubectl_bin: str, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.run("create", "serviceaccount", "tok", "-n", namespace)
    token = kubectl.run("create", "token", "tok", "-n", namespace).stdout.strip()
    assert token.count(".") == 2  # a signed JWT
    server = kubectl.run(
        "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"
    ).stdout
    whoami = subprocess.run(
        [
            kubectl_bin,
            "--kubeconfig",
            "/dev/null",
            "--server",
            server,
            "--token",
            token,
            "--certificate-authority",
            ".cluster/pki/ca.crt",
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert whoami.stdout == f"system:serviceaccount:{namespace}:tok"


def test_control_plane_listens_on_loopback_only(kubeconfig: str) -> None:
    pids = subprocess.run(
        ["bash", "-c", "cat .cluster/pids/*.pid"], capture_output=True, text=True, check=True
    ).stdout.split()
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]
    assert ours, "expected the control plane's listening sockets"
    for line in ours:
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::1]:")), f"not loopback: {line}"


def test_the_tests_api_gets_answer_as_kubectl_does(kubectl: Kubectl, namespace: str) -> None:
    """tests/kube_api.py answers the tests' ``kubectl get -o json`` polls without a kubectl
    process: for the kinds it knows, what it returns is what kubectl prints (objects, lists,
    a missing object's exit code and message), checked here against kubectl itself."""
    kubectl.run("-n", namespace, "create", "configmap", "smoke", "--from-literal=a=1")
    kubectl.run("-n", namespace, "create", "deployment", "smoke", "--image=example/x:1")
    asks = [
        ("-n", namespace, "configmap", "smoke"),
        ("-n", namespace, "configmaps"),
        ("-n", namespace, "deployment", "smoke"),
        ("-n", namespace, "deployments", "-l", "app=smoke"),
        ("-n", namespace, "partition", "missing"),
        ("-n", namespace, "deployment", "missing"),
        ("crd", "partitions.roger.dev"),
        ("namespace", namespace),
    ]
    for ask in asks:
        args = ("get", *ask, "-o", "json")
        get = kube_api.parse(args)
        assert get is not None, ask
        fast = kube_api.run(kubectl.kubeconfig, args, get)
        slow = subprocess.run([*kubectl.base, *args], text=True, capture_output=True)
        assert (fast.returncode, fast.stderr.strip()) == (slow.returncode, slow.stderr.strip())
        if slow.returncode == 0:
            got, want = json.loads(fast.stdout), json.loads(slow.stdout)
            if "items" in want or ask[-2] == "deployment":  # changing between the two reads
                assert _identity(got) == _identity(want), ask
            else:
                assert got == want, ask


def _identity(obj: dict[str, Any]) -> Any:
    """What stays put while the controllers work on an object (or each of a list's)."""
    if "items" in obj:
        return (obj["apiVersion"], obj["kind"], [_identity(i) for i in obj["items"]])
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["uid"], obj.get("spec"))
