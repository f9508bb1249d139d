"""spec.autoscaling on the local cluster: the operator follows the backlog up to maxReplicas,
drains it, goes back to zero after the cooldown, and wakes on the first job.

Worker Pods are kwok Pods whose containers ``roger_devtools.localpods`` runs as local
processes (SIGTERM and the grace period when a Pod goes, as a kubelet would). Every test is
named ``test_operator_*`` so the operator's namespace glob matches it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import roger
from roger_devtools.polling import eventually
from roger_devtools.processes import stop
from tests.e2e.operator_support import (
    BIN,
    ROOT,
    OperatorProcess,
    partition_manifest,
    secret_manifest,
    short_id,
)
from tests.helpers import TEST_TAG, Kubectl

pytestmark = pytest.mark.e2e

JOBS = 400
JOB_SECONDS = 2
MAX_WORKERS = 4  # jobs at once per pod: 4 pods x 4 drain 400 jobs of 2 s in ~50 s


def apply_crds(k: Kubectl) -> None:
    k.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    for crd in ("partitions.roger.dev", "callbacks.roger.dev"):
        k.run("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")


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
    apply_crds(k)
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


@pytest.fixture(scope="module")
def operator(
    kubectl: Kubectl, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    # Only this module's namespaces: Partitions other tests left behind (some on brokers that
    # are gone) would take this operator's threads.
    op = OperatorProcess(
        kubeconfig,
        log,
        extra_args=("--autoscale-interval", "1"),
        namespace=f"{TEST_TAG}-test-operator-autoscale*",
    )
    op.start()
    yield op
    op.stop()


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
def localpods(ns: str, kubeconfig: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run the namespace's worker Pods as local processes."""
    log = (tmp_path / "localpods.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roger_devtools.localpods",
            "--namespace",
            ns,
            "--selector",
            "app.kubernetes.io/name=roger-worker",
            "--state-dir",
            str(tmp_path / "pods"),
            "--interval",
            "0.5",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "PYTHONPATH": str(ROOT),
            "PATH": f"{BIN}:{os.environ['PATH']}",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    yield proc
    stop(proc, grace=60)


def autoscaled(name: str, ns: str, **autoscaling: Any) -> str:
    return partition_manifest(
        name,
        ns,
        # one job process per pod (jobs sleep in threads): the shared 2-core machine runs
        # four of these pods beside the API server, RabbitMQ and other sessions' tests
        worker={"replicas": 0, "shutdownTimeout": 10, "jobProcesses": 1},
        queues=[{"name": "default", "maxWorkers": MAX_WORKERS}],
        autoscaling={"minReplicas": 0, "maxReplicas": 4, **autoscaling},
    )


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


@pytest.mark.timeout(600)
def test_operator_autoscale_up_to_max_drain_and_back_to_zero(
    operator: OperatorProcess,
    kubectl: Kubectl,
    ns: str,
    amqp_url: str,
    localpods: subprocess.Popen[bytes],
    tmp_path: Path,
) -> None:
    k, name = kubectl, short_id()
    apply_partition(
        k,
        autoscaled(
            name,
            ns,
            scaleToZeroCooldownSeconds=10,
            behavior={"scaleDown": {"stabilizationWindowSeconds": 5}},
        ),
    )
    eventually(
        lambda: replicas(k, ns, name)[2].get("reason"), timeout=90, message="first evaluation"
    )
    assert replicas(k, ns, name)[0] == 0

    out = tmp_path / "out.txt"
    started = time.monotonic()
    with roger.Client(amqp_url) as client:
        for n in range(JOBS):
            client.enqueue(
                name, "tests.jobs.basic:slow", {"out": str(out), "n": n, "sleep": JOB_SECONDS}
            )
    most_spec = most_pods = 0
    costs_seen: set[str] = set()
    while sum(1 for r in records(out) if r[0] == "end") < JOBS:
        assert time.monotonic() - started < 300, f"not drained: {len(records(out))} records"
        spec_n, pods_n, _ = replicas(k, ns, name)
        most_spec, most_pods = max(most_spec, spec_n), max(most_pods, pods_n)
        for pod in k.get_json("-n", ns, "pods", "-l", f"app.kubernetes.io/instance={name}")[
            "items"
        ]:
            cost = (pod["metadata"].get("annotations") or {}).get(
                "controller.kubernetes.io/pod-deletion-cost"
            )
            if cost is not None:
                costs_seen.add(cost)
        time.sleep(1)
    drained = time.monotonic() - started
    assert most_spec == 4 and most_pods == 4, (most_spec, most_pods)
    assert any(c != "0" for c in costs_seen), costs_seen  # busy pods carried their cost

    # Back to zero after the cooldown: no Pod left.
    eventually(
        lambda: replicas(k, ns, name)[:2] == (0, 0), timeout=90, message="scaled back to zero"
    )
    to_zero = time.monotonic() - started - drained

    # (the scale and status.autoscaling are separate writes: the status may trail by a pass)
    def at_zero() -> bool:
        status = replicas(k, ns, name)[2]
        return bool(status["desired"] == 0 and status["backlog"] == 0)

    eventually(at_zero, timeout=30, message="status.autoscaling at zero")

    # No job lost, none run twice (a scale-down never cut one short).
    rows = records(out)
    starts = collections.Counter(n for what, n, _ in rows if what == "start")
    ends = collections.Counter(n for what, n, _ in rows if what == "end")
    assert set(starts) == set(range(JOBS)) and set(ends) == set(range(JOBS))
    assert max(starts.values()) == 1, [n for n, c in starts.items() if c > 1]
    assert max(ends.values()) == 1

    events = partition_events(k, ns, name)
    assert events.get("ScaledUp", 0) >= 1 and events.get("ScaledToZero", 0) >= 1, events
    print(
        f"\nautoscale e2e: {JOBS} jobs of {JOB_SECONDS}s drained in {drained:.1f}s, "
        f"zero pods {to_zero:.1f}s later; events {events}; deletion costs seen {costs_seen}"
    )


def test_operator_autoscale_wakes_from_zero_on_the_first_job(
    operator: OperatorProcess,
    kubectl: Kubectl,
    ns: str,
    amqp_url: str,
    localpods: subprocess.Popen[bytes],
    tmp_path: Path,
) -> None:
    k, name = kubectl, short_id()
    apply_partition(
        k,
        autoscaled(
            name,
            ns,
            maxReplicas=1,
            scaleToZeroCooldownSeconds=1,
            behavior={"scaleDown": {"stabilizationWindowSeconds": 0}},
        ),
    )
    out = tmp_path / "out.txt"
    waits = []
    for n in range(5):
        eventually(lambda: replicas(k, ns, name)[:2] == (0, 0), timeout=60, message="idle at zero")
        time.sleep(1)  # the worker process of the last Pod is gone too
        enqueued = time.time()
        with roger.Client(amqp_url) as client:
            client.enqueue(name, "tests.jobs.basic:slow", {"out": str(out), "n": n, "sleep": 0})

        def started(n: int = n) -> tuple[str, int, float] | None:
            return next((r for r in records(out) if r[:2] == ("start", n)), None)

        row = eventually(started, timeout=60, message=f"wake {n}")
        assert row is not None
        waits.append(row[2] - enqueued)
    waits.sort()
    p50 = statistics.median(waits)
    p99 = waits[-1]  # 5 wakes: the worst is the 99th percentile
    print(f"\nwake from zero: enqueue -> start p50 {p50:.2f}s p99 {p99:.2f}s ({waits})")
    assert p99 < 60

    # Who wins: kubectl scale lasts until the next evaluation (here: above maxReplicas and
    # idle, so straight back within bounds, then to zero after the cooldown).
    k.run("-n", ns, "scale", "partition", name, "--replicas=3")
    eventually(
        lambda: replicas(k, ns, name)[0] <= 1, timeout=30, message="kubectl scale overridden"
    )
    eventually(lambda: replicas(k, ns, name)[0] == 0, timeout=60, message="back to zero")
