"""Deleting a Partition loses nothing: a job running in its worker completes, or goes back
to its queue and runs later, and is in exactly one place afterwards.

The worker Pods really run (``roger_devtools.localpods`` runs their containers as local
processes); kwok removes a deleted Pod at once, so the operator must not take "no Pods"
for "no running jobs". Tests here are named ``test_delete_*`` and get an operator of their
own watching only ``t-test-delete*``: no other operator (another test session's) acts on
their Partitions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import roger
from roger.core import naming
from roger_devtools.polling import eventually
from tests.e2e.observe_support import delete_rabbitmq_objects
from tests.e2e.operator_support import (
    LocalPodsProcess,
    OperatorProcess,
    get_or_none,
    partition_manifest,
    short_id,
    wait_condition,
    wait_gone,
)

# The operator e2e fixtures (one definition, in test_operator_flows):
from tests.e2e.test_operator_flows import ns, queue_count  # noqa: F401 - ns: fixture
from tests.helpers import TEST_TAG, Kubectl

pytestmark = pytest.mark.e2e
JOB_SECONDS = 20
NAMESPACES = f"{TEST_TAG}-test-delete*"


@pytest.fixture(scope="module")
def operator(
    kubectl: Kubectl,
    kubeconfig: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", namespace=NAMESPACES
    )
    op.start(timeout=120)
    yield op
    assert op.stop() == 0, op.tail()


@pytest.fixture
def local_pods(ns: str, kubeconfig: str, tmp_path: Path) -> Iterator[None]:  # noqa: F811
    """A local "kubelet" for the test namespace: Pods the operator creates really run."""
    pods = LocalPodsProcess(kubeconfig, ns, tmp_path / "pods").start()
    yield
    pods.stop(grace=90)


def records(path: Path, what: str) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.split()[0] == what)


def queued(amqp_url: str, name: str) -> int:
    """Messages in every job queue of the partition's ``default`` queue."""
    names = naming.all_queue_names(name, "default", (1, 2))
    return sum(queue_count(amqp_url, q) or 0 for q in names)


def events(k: Kubectl, namespace: str, name: str, reason: str) -> list[str]:
    items = k.get_json("-n", namespace, "events.events.k8s.io")["items"]
    return [e["note"] for e in items if e["reason"] == reason and e["regarding"]["name"] == name]


@pytest.mark.timeout(900)  # up to grace + 60 s per deletion, twice, on a busy machine
@pytest.mark.parametrize(
    ("shutdown", "fate"), [(JOB_SECONDS + 15, "completes"), (2, "runs again later")]
)
def test_delete_with_a_running_job_loses_nothing(
    operator: OperatorProcess,
    kubectl: Kubectl,
    ns: str,  # noqa: F811
    local_pods: None,
    amqp_url: str,
    tmp_path: Path,
    shutdown: int,
    fate: str,
) -> None:
    k = kubectl
    name = short_id()  # a partition id no earlier run has claimed
    out = tmp_path / "job.log"
    manifest = partition_manifest(
        name, ns, worker={"shutdownTimeout": shutdown}, queues=[{"name": "default"}]
    )
    k.apply(manifest)
    wait_condition(k, ns, name, "Ready", "True", timeout=120)
    with roger.Client(amqp_url) as client:
        client.enqueue(
            name, "tests.jobs.basic:slow", {"sleep": JOB_SECONDS, "out": str(out), "n": 1}
        )
    eventually(lambda: records(out, "start") == 1, timeout=60, message="job started")

    k.run("-n", ns, "delete", "partition", name, "--wait=false")
    wait_gone(k, "-n", ns, "partition", name, timeout=shutdown + 20 + 60 + 60)

    ended, waiting = records(out, "end"), queued(amqp_url, name)
    assert ended + waiting == 1, (fate, ended, waiting)
    if fate == "completes":
        assert (ended, waiting) == (1, 0)
        assert events(k, ns, name, "QueuesDeleted"), "an empty partition is deleted"
        assert queue_count(amqp_url, naming.queue_name(name, "default")) is None
        assert queue_count(amqp_url, naming.control_stream_name(name)) is None
        return
    # Stopped before it finished: back in its queue, kept with its retry and buried
    # queues, and listed in a Warning Event.
    assert (ended, waiting) == (0, 1)
    assert queue_count(amqp_url, naming.queue_name(name, "default")) == 1
    assert queue_count(amqp_url, naming.retry_queue_name(name, "default", 1)) == 0
    kept = events(k, ns, name, "QueuesKept")
    assert len(kept) == 1, kept
    assert f"{naming.queue_name(name, 'default')} (1 ready" in kept[0]

    # The Partition comes back: the job runs again, once, and then nothing is left.
    k.apply(manifest)
    eventually(lambda: records(out, "end") == 1, timeout=90, message="job ran again")
    assert records(out, "start") == 2
    eventually(lambda: queued(amqp_url, name) == 0, message="queues drained")
    k.run("-n", ns, "delete", "partition", name, "--wait=false")
    wait_gone(k, "-n", ns, "partition", name, timeout=shutdown + 20 + 60 + 60)
    assert records(out, "end") == 1
    assert queue_count(amqp_url, naming.queue_name(name, "default")) is None


def test_delete_the_namespace_finalizes_its_partition_and_deletes_its_queues(
    operator: OperatorProcess,
    kubectl: Kubectl,
    ns: str,  # noqa: F811
    amqp_url: str,
) -> None:
    """The namespace controller marks the namespace (all conditions False) before the
    Partition, and deletes the AMQP Secret at once: the operator still sees the Partition
    (``handlers/namespaces.py``) and still has the URL (``remembered_amqp_url``)."""
    k, name = kubectl, short_id()
    k.apply(partition_manifest(name, ns))
    wait_condition(k, ns, name, "Ready", "True", timeout=120)
    assert queue_count(amqp_url, naming.queue_name(name, "default")) == 0
    k.run("delete", "namespace", ns, "--wait=false")
    wait_gone(k, "namespace", ns, timeout=120)
    for queue in ("default", "email"):
        assert queue_count(amqp_url, naming.queue_name(name, queue)) is None, queue


def test_namespace_deleted_while_the_operator_was_down_is_finalized_when_it_starts(
    kubectl: Kubectl,
    kubeconfig: str,
    ns: str,  # noqa: F811
    amqp_url: str,
    tmp_path: Path,
) -> None:
    """kopf alone never watches a namespace already terminating when it starts: the
    Partition's finalizer would hold the namespace forever. (Not ``test_delete_*``: the
    module's operator must not see this namespace; this test runs its own.)"""
    k, name = kubectl, short_id()
    own = OperatorProcess(kubeconfig, tmp_path / "operator.log", namespace=ns)
    own.start(timeout=120)
    try:
        k.apply(partition_manifest(name, ns))
        wait_condition(k, ns, name, "Ready", "True", timeout=120)
    finally:
        assert own.stop() == 0, own.tail()
    k.run("delete", "namespace", ns, "--wait=false")
    eventually(
        lambda: get_or_none(k, "namespace", ns)["status"]["phase"] == "Terminating",
        message="namespace terminating, held by the finalizer",
    )
    time.sleep(3)  # the namespace controller has written its conditions by now
    assert get_or_none(k, "namespace", ns) is not None
    own.start(timeout=120)
    try:
        wait_gone(k, "namespace", ns, timeout=120)
    finally:
        assert own.stop() == 0, own.tail()
        # A new operator never read the Secret, gone with the namespace: the queues stay
        # (operator/README.md, "Deleting the namespace"); this test removes them itself.
        delete_rabbitmq_objects(name)
