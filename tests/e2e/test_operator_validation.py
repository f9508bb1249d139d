"""The CRDs refuse invalid Partitions and Callbacks at ``kubectl apply``, saying what to fix."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from roger_devtools.polling import eventually
from tests.helpers import TEST_TAG, Kubectl, install_crds

pytestmark = pytest.mark.e2e

GOOD_PARTITION: dict[str, Any] = {
    "apiVersion": "roger.dev/v1alpha1",
    "kind": "Partition",
    "metadata": {"name": "valid"},
    "spec": {
        "amqp": {"secretRef": {"name": "rabbitmq", "key": "url"}},
        "worker": {"image": "example/jobs-worker:1.0", "replicas": 2},
        "jobs": ["myapp.jobs"],
        "queues": [{"name": "default", "maxWorkers": 10}, {"name": "email", "maxWorkers": 2}],
        "retry": {"levels": [1, 3, 5, 10], "buriedMaxLength": 100},
        "callbacks": ["audit"],
    },
}
GOOD_CALLBACK: dict[str, Any] = {
    "apiVersion": "roger.dev/v1alpha1",
    "kind": "Callback",
    "metadata": {"name": "audit"},
    "spec": {"module": "myapp.callbacks:Audit", "hooks": ["on_error"], "config": {"a": 1}},
}

Edit = Callable[[dict[str, Any]], None]


def spec(**changes: Any) -> Edit:
    def edit(obj: dict[str, Any]) -> None:
        obj["spec"].update(changes)

    return edit


def worker(**changes: Any) -> Edit:
    def edit(obj: dict[str, Any]) -> None:
        obj["spec"]["worker"].update(changes)

    return edit


def drop(*path: str) -> Edit:
    def edit(obj: dict[str, Any]) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return edit


def name(value: str) -> Edit:
    def edit(obj: dict[str, Any]) -> None:
        obj["metadata"]["name"] = value

    return edit


P, C = "partition", "callback"
CASES: list[tuple[str, str, Edit, str]] = [
    ("no-image", P, drop("spec", "worker", "image"), "spec.worker.image: Required value"),
    ("no-queues", P, drop("spec", "queues"), "spec.queues: Required value"),
    ("no-secret-name", P, drop("spec", "amqp", "secretRef", "name"), "secretRef.name: Required"),
    ("empty-queues", P, spec(queues=[]), "should have at least 1 items"),
    (
        "duplicate-queue",
        P,
        spec(queues=[{"name": "default"}, {"name": "default", "maxWorkers": 3}]),
        "Duplicate value",
    ),
    ("bad-queue-name", P, spec(queues=[{"name": "Bad.Queue"}]), "queue name must be 1-63"),
    (
        "negative-workers",
        P,
        spec(queues=[{"name": "q", "maxWorkers": -1}]),
        "greater than or equal to 0",
    ),
    (
        "too-many-workers",
        P,
        spec(queues=[{"name": "q", "maxWorkers": 10001}]),
        "less than or equal to 10000",
    ),
    ("negative-replicas", P, worker(replicas=-1), "greater than or equal to 0"),
    ("zero-job-processes", P, worker(jobProcesses=0), "greater than or equal to 1"),
    ("bad-job-module", P, spec(jobs=["my-app.jobs"]), "must be a Python import path"),
    ("no-jobs", P, spec(jobs=[]), "should have at least 1 items"),
    ("zero-retry-level", P, spec(retry={"levels": [0, 5]}), "greater than or equal to 1"),
    ("repeated-retry-level", P, spec(retry={"levels": [1, 1]}), "Duplicate value"),
    ("unknown-field", P, spec(replica=3), 'unknown field "spec.replica"'),
    ("name-too-long", P, name("a" * 58), "at most 57 characters"),
    ("name-with-dot", P, name("tenant.a"), "must be a DNS label"),
    ("bad-partition-id", P, spec(partitionId="Tenant A"), "spec.partitionId must be 1-63"),
    (
        "reserved-env",
        P,
        worker(env=[{"name": "ROGER_AMQP_URL", "value": "amqp://x"}]),
        "set by the operator",
    ),
    (
        "grace-too-short",
        P,
        worker(shutdownTimeout=30, terminationGracePeriodSeconds=5),
        "at least spec.worker.shutdownTimeout",
    ),
    ("bad-hook", P, spec(events={"hooks": ["on_start"]}), "Unsupported value"),
    ("bad-callback-ref", P, spec(callbacks=["Audit!"]), "name of a Callback object"),
    ("low-metrics-port", P, worker(metricsPort=80), "greater than or equal to 1024"),
    ("bad-quantity", P, worker(resources={"limits": {"cpu": "lots"}}), "should match"),
    (
        "callback-no-class",
        C,
        spec(module="myapp.callbacks"),
        "class path such as myapp.callbacks:Audit",
    ),
    ("callback-bad-hook", C, spec(hooks=["before_start"]), "Unsupported value"),
    ("callback-unknown-field", C, spec(klass="x"), 'unknown field "spec.klass"'),
    ("callback-no-module", C, drop("spec", "module"), "spec.module: Required value"),
]


@pytest.fixture(scope="module")
def vns(kubectl: Kubectl) -> Iterator[tuple[Kubectl, str]]:
    k = kubectl
    ns = f"{TEST_TAG}-validation-{uuid.uuid4().hex[:6]}"  # no operator watches it
    k.run("create", "namespace", ns)
    yield k, ns
    k.run("delete", "namespace", ns, "--wait=false", check=False)


def _apply(k: Kubectl, ns: str, obj: dict[str, Any]) -> Any:
    return k.run(
        "apply", "-n", ns, "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(obj), check=False
    )


def test_valid_manifests_are_accepted(vns: tuple[Kubectl, str]) -> None:
    k, ns = vns
    for obj in (GOOD_PARTITION, GOOD_CALLBACK):
        proc = _apply(k, ns, obj)
        assert proc.returncode == 0, proc.stderr
    longest = copy.deepcopy(GOOD_PARTITION)
    longest["metadata"]["name"] = "a" * 57
    assert _apply(k, ns, longest).returncode == 0


@pytest.mark.parametrize(
    ("kind", "edit", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_manifest_is_rejected(
    vns: tuple[Kubectl, str], kind: str, edit: Edit, expected: str
) -> None:
    k, ns = vns
    obj = copy.deepcopy(GOOD_PARTITION if kind == P else GOOD_CALLBACK)
    edit(obj)
    proc = _apply(k, ns, obj)
    assert proc.returncode != 0, f"accepted: {yaml.safe_dump(obj)}"
    assert expected in proc.stderr, proc.stderr


def test_partition_id_is_immutable(vns: tuple[Kubectl, str]) -> None:
    k, ns = vns
    obj = copy.deepcopy(GOOD_PARTITION)
    obj["metadata"]["name"] = "immutable"
    k.apply(yaml.safe_dump(obj), "-n", ns)
    obj["spec"]["partitionId"] = "another"
    proc = k.run("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(obj), check=False)
    assert proc.returncode != 0 and "spec.partitionId is immutable" in proc.stderr, proc.stderr
    obj["spec"]["partitionId"] = "immutable"  # spelling out the default is no change
    k.apply(yaml.safe_dump(obj), "-n", ns)
    k.run("delete", "-n", ns, "partition", "immutable")


WAITING_ROOM_CASES: list[tuple[str, Edit, str]] = [
    (
        "queue",
        spec(queues=[{"name": "execution-waiting-x"}]),
        "must not start with 'execution-waiting-'",
    ),
    (
        "straddle",
        spec(partitionId="a-execution", queues=[{"name": "waiting-x"}]),
        "no queue name may start with 'waiting-'",
    ),
    (
        "partition-id",
        spec(partitionId="a-execution-waiting"),
        "must not contain '-execution-waiting-' nor end with '-execution-waiting'",
    ),
]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [c[1:] for c in WAITING_ROOM_CASES],
    ids=[c[0] for c in WAITING_ROOM_CASES],
)
def test_queue_names_that_could_be_waiting_rooms_are_rejected(
    vns: tuple[Kubectl, str], edit: Edit, expected: str
) -> None:
    """<partitionId>-<queue> never contains '-execution-waiting-' (tenant isolation)."""
    k, ns = vns
    obj = copy.deepcopy(GOOD_PARTITION)
    edit(obj)

    def refused() -> str | None:
        # Other test runs on this shared cluster apply their own copies of the CRDs: ours now.
        install_crds(k)
        proc = _apply(k, ns, obj)
        return proc.stderr if proc.returncode != 0 else None

    stderr = eventually(refused, timeout=30, message=f"refused: {expected}")
    assert expected in stderr, stderr
