"""What the autoscaling e2e tests share (``test_operator_autoscale``, ``test_operator_keda``):
the module's own kubectl, keeping ``spec.autoscaling`` in the shared cluster's Partition CRD,
a namespace with the AMQP Secret, the namespace's worker Pods run as local processes, and
reading replicas, job records and Events.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from roger_devtools.polling import eventually
from tests.e2e.operator_support import ROOT, LocalPodsProcess, secret_manifest
from tests.helpers import Kubectl, install_crds


@pytest.fixture(scope="module")
def kubectl(kubectl_bin: str, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    """A copy of kubectl of this module's own: other sessions' ``hack/tools.sh`` may rebuild
    the shared one (and relink .cluster/bin) while these minutes-long tests run."""
    own = tmp_path_factory.mktemp("bin") / "kubectl"

    def copied() -> bool:
        shutil.copy2(kubectl_bin, own)
        return True

    eventually(copied, timeout=120, interval=2, message="a kubectl to copy")
    k = Kubectl(str(own), kubeconfig)
    install_crds(k)
    return k


SCHEMA = "/spec/versions/0/schema/openAPIV3Schema/properties"
OURS = (  # (JSON pointer under SCHEMA, the same path in crds/partitions.roger.dev.yaml)
    ("/spec/properties/autoscaling", ("spec", "autoscaling")),
    ("/status/properties/autoscaling", ("status", "autoscaling")),
)


def keep_autoscaling_fields(k: Kubectl) -> None:
    """Add spec/status.autoscaling to the live Partition CRD when they are missing.

    The local cluster is shared: other e2e modules (other branches' too) apply their own
    copy of the CRD, which would prune spec.autoscaling mid-test. Adding only our fields
    (a JSON patch, not a whole apply) keeps theirs.
    """
    crd = yaml.safe_load((ROOT / "crds" / "partitions.roger.dev.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    live = k.get_json("crd", "partitions.roger.dev")
    props = live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    ops = []
    for pointer, (top, name) in OURS:
        if name not in props[top]["properties"]:
            value = schema[top]["properties"][name]
            ops.append({"op": "add", "path": SCHEMA + pointer, "value": value})
    if ops:
        k.run("patch", "crd", "partitions.roger.dev", "--type=json", "-p", json.dumps(ops))
    # A write while the fields were missing dropped them from the stored object too.
    for (ns, name), autoscaling in list(AUTOSCALED.items()):
        found = k.run("-n", ns, "get", "partition", name, "-o", "json", check=False)
        if found.returncode != 0:
            continue  # not created yet, or gone
        if "autoscaling" not in json.loads(found.stdout)["spec"]:
            patch = json.dumps({"spec": {"autoscaling": autoscaling}})
            k.run("-n", ns, "patch", "partition", name, "--type=merge", "-p", patch)


AUTOSCALED: dict[tuple[str, str], dict[str, Any]] = {}  # what each test asked for


@pytest.fixture(autouse=True)
def autoscaling_fields(kubectl: Kubectl) -> Iterator[None]:
    stopping = threading.Event()

    def keep() -> None:
        while not stopping.wait(1.0):
            with contextlib.suppress(Exception):  # API hiccups: next round
                keep_autoscaling_fields(kubectl)

    keeper = threading.Thread(target=keep, daemon=True)
    keeper.start()
    yield
    stopping.set()
    keeper.join(timeout=30)
    AUTOSCALED.clear()


def apply_partition(k: Kubectl, manifest: str) -> None:
    """The shared local cluster's CRDs are applied by every e2e module (other branches'
    too): add our fields again until the API server knows spec.autoscaling; the keeper
    thread restores the Partition's spec.autoscaling if a write dropped it."""
    obj = yaml.safe_load(manifest)
    meta = obj["metadata"]
    AUTOSCALED[(meta["namespace"], meta["name"])] = obj["spec"]["autoscaling"]

    def applied() -> bool:
        keep_autoscaling_fields(k)
        return k.run("apply", "-f", "-", stdin=manifest, check=False).returncode == 0

    eventually(applied, timeout=30, interval=1, message="Partition with spec.autoscaling applied")

    def declared() -> bool:  # queues exist: producers may enqueue
        obj = k.get_json("-n", meta["namespace"], "partition", meta["name"])
        return bool((obj.get("status") or {}).get("queues"))

    eventually(declared, timeout=120, interval=1, message="the Partition's queues declared")


@pytest.fixture
def ns(unique_name: str, kubectl: Kubectl, amqp_url: str) -> Iterator[str]:
    """A namespace of the test's own (made with the module's kubectl) with the AMQP Secret."""
    kubectl.run("create", "namespace", unique_name)
    kubectl.apply(secret_manifest(unique_name, amqp_url))
    yield unique_name
    # Partitions first, while this module's operator runs their finalizer.
    kubectl.run("-n", unique_name, "delete", "partitions", "--all", "--timeout=60s", check=False)
    kubectl.run("delete", "namespace", unique_name, "--wait=false", check=False)


@pytest.fixture
def localpods(ns: str, kubeconfig: str, tmp_path: Path) -> Iterator[LocalPodsProcess]:
    """Run the namespace's worker Pods as local processes."""
    pods = LocalPodsProcess(
        kubeconfig, ns, tmp_path / "pods", "app.kubernetes.io/name=roger-worker"
    )
    yield pods.start()
    pods.stop(grace=60)


def replicas(k: Kubectl, ns: str, name: str) -> tuple[int, int, dict[str, Any]]:
    """(spec.worker.replicas, worker Pods that exist, status.autoscaling)."""
    obj = k.get_json("-n", ns, "partition", name)
    pods = k.get_json("-n", ns, "pods", "-l", f"app.kubernetes.io/instance={name}")["items"]
    return (
        int(obj["spec"]["worker"]["replicas"]),
        len(pods),
        dict((obj.get("status") or {}).get("autoscaling") or {}),
    )


def records(out: Path) -> list[tuple[str, int, float]]:
    if not out.exists():
        return []
    rows = []
    for line in out.read_text().splitlines():
        what, n, _pid, _tag, at = line.split()
        rows.append((what, int(n), float(at)))
    return rows


def partition_events(k: Kubectl, ns: str, name: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for e in k.get_json("-n", ns, "events.events.k8s.io")["items"]:
        if e.get("regarding", {}).get("name") == name and e["regarding"]["kind"] == "Partition":
            count = int((e.get("series") or {}).get("count") or 1)
            found[e["reason"]] = found.get(e["reason"], 0) + count
    return found
