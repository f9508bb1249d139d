"""Worker Pods with real probes (localpods probes them like a kubelet), and rollouts that
cannot take a Partition down: a bad edit leaves the old pods serving, Degraded says why,
reverting it returns to Ready.

Every test here is named ``test_rollout_*``: its namespace (``t-test-rollout-...``) is
watched by this module's operator only (``ROLLOUT_GLOB``), not by an operator running other
code elsewhere, which would apply its own Deployment template to the same Partition.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import urllib.error
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

import roger
from roger.broker import buried_store
from roger.core import naming
from roger.core.buried import fallback_burial_id
from roger_devtools.polling import eventually
from roger_devtools.tcpproxy import TcpProxy
from tests.e2e.operator_support import (
    LocalPodsProcess,
    OperatorProcess,
    condition,
    delete_partition_sync,
    partition_manifest,
    secret_manifest,
    short_id,
    wait_condition,
)
from tests.e2e.test_operator_flows import ns  # noqa: F401 - fixture
from tests.helpers import TEST_TAG, Kubectl
from tests.integration.support import management
from tests.jobs import basic

# Rollouts take minutes on a loaded machine (surge pods, minReadySeconds, reverts).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
ROLLOUT_GLOB = f"{TEST_TAG}-test-rollout*"
USED: set[str] = set()  # namespaces of this run's tests
# What a rollout step may take on the 2-core machine under load (load average ~15 seen):
# pod creation, a worker's start, minReadySeconds, the operator's status refresh.
SLOW = 240


@pytest.fixture(scope="module")
def operator(
    kubectl: Kubectl,
    kubeconfig: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(kubeconfig, log, namespace=ROLLOUT_GLOB)
    op.start()
    try:
        yield op

        def left() -> list[str]:  # this run's Partitions (namespaces deleted without waiting)
            items = kubectl.get_json("partitions", "-A")["items"]
            return [p["metadata"]["name"] for p in items if p["metadata"]["namespace"] in USED]

        with contextlib.suppress(AssertionError):  # their finalizers run before we stop
            eventually(lambda: not left(), timeout=60, message="test Partitions gone")
    finally:
        with contextlib.suppress(AssertionError):  # slow to stop: it is killed then
            op.stop()


@pytest.fixture
def localpods(kubeconfig: str, ns: str, tmp_path: Path) -> Iterator[LocalPodsProcess]:  # noqa: F811
    USED.add(ns)
    lp = LocalPodsProcess(kubeconfig, ns, tmp_path / "pods").start()
    try:
        eventually(lambda: "running pods" in lp.tail(), timeout=90, message="localpods started")
        yield lp
    finally:
        lp.stop()


def pods(k: Kubectl, space: str, name: str) -> list[dict[str, Any]]:
    items = k.get_json("-n", space, "pods", "-l", f"app.kubernetes.io/instance={name}")["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def pod_ready(pod: dict[str, Any]) -> bool:
    """Ready as localpods reports it (kwok's instant Ready has no ``started`` field)."""
    started = container(pod).get("started") is True
    return started and condition(pod, "Ready").get("status") == "True"


def container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod["status"].get("containerStatuses") or [{}]
    return dict(statuses[0])


def ready_pods(k: Kubectl, space: str, name: str) -> set[str]:
    return {p["metadata"]["name"] for p in pods(k, space, name) if pod_ready(p)}


def wait_serving(k: Kubectl, space: str, name: str, count: int) -> set[str]:
    """The Partition is Ready and ``count`` pods run a worker that passes its probes."""
    wait_condition(k, space, name, "Ready", "True", timeout=SLOW)
    found: set[str] = eventually(
        lambda: len(ready := ready_pods(k, space, name)) == count and ready,
        timeout=SLOW,
        message=f"{count} probed-ready pods",
    )
    return found


def the_pod(k: Kubectl, space: str, name: str) -> dict[str, Any]:
    found = pods(k, space, name)
    assert len(found) == 1, [(p["metadata"]["name"], p["status"]) for p in found]
    return found[0]


def patch(k: Kubectl, space: str, name: str, spec: dict[str, Any]) -> None:
    k.run("-n", space, "patch", "partition", name, "--type=merge", "-p", json.dumps({"spec": spec}))


def job_runs(amqp_url: str, partition: str, out: Path, n: int) -> None:
    """A job enqueued now is run by the partition's workers."""
    with roger.Client(amqp_url) as client:
        client.enqueue(partition, basic.ok, {"out": str(out), "n": n})
    eventually(
        lambda: out.exists() and f"ok {n} " in out.read_text(),
        timeout=120,
        message=f"job {n} run",
    )


def test_rollout_readiness_follows_readyz(
    operator: OperatorProcess,
    kubectl: Kubectl,
    ns: str,  # noqa: F811
    amqp_url: str,
    localpods: LocalPodsProcess,
) -> None:
    k, name = kubectl, short_id()
    broker_port = urllib.parse.urlparse(amqp_url).port or 5672
    proxy = TcpProxy(broker_port).start()  # the worker's (and operator's) way to the broker
    try:
        url = urllib.parse.urlparse(amqp_url)._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}")
        k.apply(secret_manifest(ns, url.geturl()))
        k.apply(partition_manifest(name, ns))
        wait_serving(k, ns, name, 1)
        pod = the_pod(k, ns, name)
        assert pod_ready(pod) and container(pod)["started"] is True, pod["status"]
        assert "running" in container(pod)["state"], localpods.tail()

        proxy.cut()  # the broker connection is down: /readyz fails, the pod is not ready
        eventually(lambda: not pod_ready(the_pod(k, ns, name)), timeout=90, message="pod not ready")
        eventually(
            lambda: k.get_json("-n", ns, "partition", name)["status"]["readyReplicas"] == 0,
            timeout=90,
            message="readyReplicas 0",
        )
        assert container(the_pod(k, ns, name))["restartCount"] == 0  # alive, only not ready

        proxy.restore()
        eventually(lambda: pod_ready(the_pod(k, ns, name)), timeout=SLOW, message="ready again")
        wait_condition(k, ns, name, "Ready", "True", timeout=SLOW)
        assert container(the_pod(k, ns, name))["restartCount"] == 0
        delete_partition_sync(k, ns, name)  # while its broker is reachable
    finally:
        proxy.cut()


def test_rollout_liveness_restarts_a_wedged_worker(
    operator: OperatorProcess,
    kubectl: Kubectl,
    ns: str,  # noqa: F811
    localpods: LocalPodsProcess,
) -> None:
    k, name = kubectl, short_id()
    k.apply(
        partition_manifest(
            name, ns, worker={"shutdownTimeout": 2, "terminationGracePeriodSeconds": 3}
        )
    )
    (pod,) = wait_serving(k, ns, name, 1)
    wedged = localpods.worker_pid(pod)
    os.kill(wedged, signal.SIGSTOP)  # the loop stops turning: /healthz stops answering
    try:
        restarted = eventually(
            lambda: (c := container(the_pod(k, ns, name)))["restartCount"] >= 1 and c,
            timeout=SLOW,
            message="the wedged worker restarted",
        )
        assert restarted["lastState"]["terminated"]["exitCode"] == 128 + signal.SIGKILL
        eventually(lambda: pod_ready(the_pod(k, ns, name)), timeout=SLOW, message="ready again")
        assert localpods.worker_pid(pod) != wedged
        assert the_pod(k, ns, name)["metadata"]["name"] == pod  # restarted, not replaced
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(wedged, signal.SIGCONT)


def test_rollout_bad_edits_keep_old_pods_serving(
    operator: OperatorProcess,
    kubectl: Kubectl,
    ns: str,  # noqa: F811
    amqp_url: str,
    localpods: LocalPodsProcess,
    tmp_path: Path,
) -> None:
    k, name = kubectl, short_id()
    out = tmp_path / "jobs.txt"
    k.apply(partition_manifest(name, ns, worker={"replicas": 2}))
    serving = wait_serving(k, ns, name, 2)
    job_runs(amqp_url, name, out, 0)
    good = k.get_json("-n", ns, "partition", name)["spec"]
    edits: list[tuple[dict[str, Any], str, str]] = [
        ({"jobs": ["tests.jobs.basic", "tests.jobs.no_such_module"]}, "JobsImportFailed",
         "tests.jobs.no_such_module"),
        ({"worker": {"image": "registry.invalid/no-such-image:1"}}, "ImagePullFailed",
         "registry.invalid/no-such-image:1"),
        # Spec changes of queue arguments are migrated (test_rollout_bound_and_levels_...);
        # what stays refused is a queue of the partition's names Roger did not make.
        ({"queues": [*good["queues"], {"name": "extra", "maxWorkers": 1}]},
         "QueueArgumentsRefused", "'x-queue-type'"),
    ]  # fmt: skip
    foreign = f"{name}-extra"  # someone's classic queue, where the edit wants a quorum one
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        conn.channel().queue_declare(foreign, durable=True, arguments={"x-queue-type": "classic"})
    for n, (edit, reason, named) in enumerate(edits, 1):
        generation = k.get_json("-n", ns, "deployment", f"roger-{name}")["metadata"]["generation"]
        patch(k, ns, name, edit)
        obj = wait_condition(k, ns, name, "Degraded", "True", reason, timeout=SLOW)
        assert named in condition(obj, "Degraded")["message"], condition(obj, "Degraded")
        assert condition(obj, "Ready")["status"] == "False"
        # The old pods serve on: still ready, still the same, still running jobs.
        assert ready_pods(k, ns, name) == serving, localpods.tail()
        job_runs(amqp_url, name, out, n)
        if reason == "QueueArgumentsRefused":  # the operator did not roll it out at all
            dep = k.get_json("-n", ns, "deployment", f"roger-{name}")
            assert dep["metadata"]["generation"] == generation

        patch(k, ns, name, {key: good[key] for key in edit})  # revert
        wait_condition(k, ns, name, "Ready", "True", timeout=SLOW)
        obj = wait_condition(k, ns, name, "Degraded", "False", timeout=60)
        assert ready_pods(k, ns, name) == serving
        eventually(
            lambda: {p["metadata"]["name"] for p in pods(k, ns, name)} == serving,
            timeout=120,
            message="the bad pods gone",
        )
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        conn.channel().queue_delete(foreign)


def _management_or_none(kind: str, name: str) -> Any:
    """A policy or queue of vhost / through the management API (None: there is none)."""
    try:
        return management(f"/{kind}/%2F/{urllib.parse.quote(name, safe='')}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def policy(name: str) -> Any:
    return _management_or_none("policies", name)


def queue_info(name: str) -> Any:
    return _management_or_none("queues", name)


def test_rollout_bound_and_levels_migrate_without_degrading(
    operator: OperatorProcess,
    kubectl: Kubectl,
    ns: str,  # noqa: F811
    amqp_url: str,
    localpods: LocalPodsProcess,
    tmp_path: Path,
) -> None:
    """retry {levels [1, 2], buriedMaxLength 10} -> {[1, 3], 20} on a running Partition: no
    Degraded, the new bound is the broker's (policy), .retry.3 is declared and the retired
    .retry.2 deleted once empty; a .buried left by an earlier version with x-max-length 10
    (queue ``legacy``) is replaced without losing its buried job; jobs run throughout."""
    k, name = kubectl, short_id()
    out = tmp_path / "jobs.txt"
    buried, legacy = (
        naming.buried_queue_name(name, "default"),
        naming.buried_queue_name(name, "legacy"),
    )
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()  # in the queue before the connection closes
        ch.queue_declare(
            legacy, durable=True, arguments={"x-queue-type": "quorum", "x-max-length": 10}
        )
        ch.basic_publish("", legacy, b'{"id": "old-burial"}')
    queues = [{"name": "default", "maxWorkers": 2}, {"name": "legacy", "maxWorkers": 1}]
    k.apply(partition_manifest(name, ns, queues=queues))
    wait_serving(k, ns, name, 1)
    assert policy(f"roger-bound:{buried}")["definition"] == {
        "max-length": 10,
        "overflow": "drop-head",
    }
    assert "x-max-length" not in queue_info(buried)["arguments"]
    assert queue_info(legacy)["arguments"]["x-max-length"] == 10  # 10 = 10: kept as it is
    job_runs(amqp_url, name, out, 0)

    patch(k, ns, name, {"retry": {"levels": [1, 3], "buriedMaxLength": 20}})
    generation = k.get_json("-n", ns, "partition", name)["metadata"]["generation"]

    def migrated() -> bool:
        obj = k.get_json("-n", ns, "partition", name)
        degraded = condition(obj, "Degraded")
        assert degraded.get("status") != "True", degraded  # never, at any point
        return (
            obj["status"].get("observedGeneration") == generation
            and condition(obj, "Ready").get("status") == "True"
        )

    eventually(migrated, timeout=SLOW, message="Ready at the new generation, never Degraded")
    assert policy(f"roger-bound:{buried}")["definition"]["max-length"] == 20
    eventually(
        lambda: (
            (queue_info(buried).get("effective_policy_definition") or {}).get("max-length") == 20
        ),
        timeout=60,
        message="the new bound effective on .buried",
    )
    fresh = queue_info(legacy)
    assert "x-max-length" not in fresh["arguments"], fresh  # replaced: the policy bounds it
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        filed = buried_store.jobs(conn, name, "legacy")
    # The one burial the old queue held: filed into .buried.log, not lost.
    assert [j.burial_id for j in filed] == [fallback_burial_id(b'{"id": "old-burial"}')]
    assert queue_info(naming.retry_queue_name(name, "default", 3)) is not None
    eventually(
        lambda: queue_info(naming.retry_queue_name(name, "default", 2)) is None,
        timeout=SLOW,
        message="the retired .retry.2 deleted once the rollout finished",
    )
    job_runs(amqp_url, name, out, 1)
    delete_partition_sync(k, ns, name)
    eventually(
        lambda: policy(f"roger-bound:{buried}") is None,
        timeout=60,
        message="the bound's policy deleted with its queue",
    )
