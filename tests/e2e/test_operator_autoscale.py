"""spec.autoscaling on the local cluster: the operator follows the backlog up to maxReplicas,
drains it, goes back to zero after the cooldown, and wakes on the first job.

Worker Pods are kwok Pods whose containers ``roger_devtools.localpods`` runs as local
processes (SIGTERM and the grace period when a Pod goes, as a kubelet would). Every test is
named ``test_operator_*`` so the operator's namespace glob matches it.
"""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import roger
from roger_devtools.polling import eventually
from tests.e2e import autoscale_support as support
from tests.e2e.autoscale_support import apply_partition, partition_events, records, replicas
from tests.e2e.operator_support import (
    LocalPodsProcess,
    OperatorProcess,
    partition_manifest,
    short_id,
)
from tests.helpers import TEST_TAG, Kubectl

pytestmark = pytest.mark.e2e
# The shared fixtures (autoscale_support), used by name.
kubectl, ns, localpods = support.kubectl, support.ns, support.localpods
autoscaling_fields = support.autoscaling_fields

JOBS = 400
JOB_SECONDS = 2
MAX_WORKERS = 4  # jobs at once per pod: 4 pods x 4 drain 400 jobs of 2 s in ~50 s


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


@pytest.mark.timeout(600)
def test_operator_autoscale_up_to_max_drain_and_back_to_zero(
    operator: OperatorProcess,
    kubectl: Kubectl,
    ns: str,
    amqp_url: str,
    localpods: LocalPodsProcess,
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
    localpods: LocalPodsProcess,
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
