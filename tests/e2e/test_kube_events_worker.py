"""A real ``roger worker`` with ``--kube-namespace``: hooks become Events, counters exact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import roger
from roger_devtools.polling import eventually
from roger_devtools.ports import free_port
from tests.e2e.kube_events_support import create_partition, list_events
from tests.e2e.observe_support import http_ok
from tests.helpers import Kubectl

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
JOBS = 10_000


def _metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def worker(
    request: pytest.FixtureRequest,
    amqp_url: str,
    kubeconfig: str,
    kubectl: Kubectl,
    namespace: str,
    unique_name: str,
) -> Iterator[tuple[str, int, Kubectl]]:
    """A worker emitting Events about a Partition; ``request.param``: extra worker flags."""
    partition = unique_name[:40].rstrip("-")
    create_partition(kubectl, namespace, partition)
    port = free_port()
    env = {
        **os.environ,
        "ROGER_AMQP_URL": amqp_url,
        "KUBECONFIG": kubeconfig,
        "POD_NAME": "worker-pod-0",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "roger"),
            "worker",
            "--partition",
            partition,
            "--queue",
            "default=4",
            "--jobs",
            "tests.jobs.basic",
            "--retry-levels",
            "1",
            "--metrics-port",
            str(port),
            "--kube-namespace",
            namespace,
            *getattr(request, "param", ()),
        ],
        env=env,
        cwd=ROOT,
    )
    try:
        # /readyz: its queues are declared and consumed (enqueueing before that is refused:
        # seen on a loaded machine, where the worker takes seconds to get there).
        ready = f"http://127.0.0.1:{port}/readyz"
        eventually(lambda: http_ok(ready), timeout=60, message="worker /readyz")
        yield partition, port, kubectl
    finally:
        proc.terminate()
        proc.wait(30)


def test_worker_hooks_become_events_and_counts_stay_exact(
    worker: tuple[str, int, Kubectl], amqp_url: str, namespace: str
) -> None:
    partition, port, kubectl = worker
    start = time.monotonic()
    with roger.Client(amqp_url) as client:
        client.enqueue(partition, "tests.jobs.basic:flaky", {"n": 1})  # fails, retried, buried
        for i in range(JOBS):
            client.enqueue(partition, "tests.jobs.basic:ok", {"n": i})
    eventually(
        lambda: (
            _metric(port, "roger_lifecycle_events_total", hook="after_run") >= JOBS
            and _metric(port, "roger_lifecycle_events_total", hook="on_buried") >= 1
        ),
        timeout=280,
        message=f"{JOBS} jobs done and the flaky one buried",
    )
    elapsed = time.monotonic() - start
    lifecycle = _metric(port, "roger_lifecycle_events_total")
    # before_run: JOBS + 2 tries; after_run: JOBS; on_error: 1 (the retried try); buried: 1.
    assert lifecycle == 2 * JOBS + 2 + 1 + 1
    emitted = eventually(
        lambda: (n := _metric(port, "roger_kube_events_emitted_total")) >= lifecycle and n,
        timeout=30,
        message="all lifecycle events on Events",
    )
    assert emitted == lifecycle
    assert _metric(port, "roger_kube_events_dropped_total") == 0
    writes = _metric(port, "roger_kube_event_writes_total")
    events = {(e["reason"], e["type"]): e for e in list_events(kubectl, namespace, partition)}
    assert set(events) >= {
        ("JobStarted", "Normal"),
        ("JobSucceeded", "Normal"),
        ("JobFailed", "Warning"),
        ("JobBuried", "Warning"),
    }
    for e in events.values():
        assert e["reportingInstance"] == "worker-pod-0"
        assert e["involvedObject"]["kind"] == "Partition"
        assert e["involvedObject"]["name"] == partition
    assert "ValueError: boom 1" in events[("JobBuried", "Warning")]["message"]
    print(
        f"\n{JOBS} worker jobs in {elapsed:.0f}s: {len(events)} Event objects, "
        f"{writes:.0f} API writes"
    )
    # One Event per (reason, job) series; per series one create, a patch per 10 s at most,
    # and the budget's ceiling: 25 + 1/s.
    assert len(events) == 4
    assert writes <= len(events) * (2 + elapsed / 10) and writes <= 25 + elapsed


def test_cancelled_running_job_becomes_a_job_cancelled_event(
    worker: tuple[str, int, Kubectl], amqp_url: str, namespace: str
) -> None:
    """roger.Client.cancel on a running job: the worker kills it, runs on_cancel once, and
    that hook is a Normal JobCancelled Event about the Partition."""
    partition, port, kubectl = worker
    with roger.Client(amqp_url) as client:
        job_id = client.enqueue(partition, "tests.jobs.basic:slow", {"sleep": 600})
        eventually(
            lambda: _metric(port, "roger_lifecycle_events_total", hook="before_run") >= 1,
            timeout=60,
            message="the job running",
        )
        client.cancel(partition, job_id)
    eventually(
        lambda: _metric(port, "roger_lifecycle_events_total", hook="on_cancel") >= 1,
        timeout=30,
        message="on_cancel",
    )
    cancelled = eventually(
        lambda: [
            e for e in list_events(kubectl, namespace, partition) if e["reason"] == "JobCancelled"
        ],
        timeout=30,
        message="a JobCancelled Event",
    )
    (event,) = cancelled
    assert event["type"] == "Normal" and event["count"] == 1
    assert event["involvedObject"]["kind"] == "Partition"
    assert event["involvedObject"]["name"] == partition
    assert event["reportingInstance"] == "worker-pod-0"
    assert f"id {job_id}" in event["message"] and "tests.jobs.basic" in event["message"]
    eventually(
        lambda: _metric(port, "roger_kube_events_emitted_total") >= 2,
        timeout=30,
        message="both hooks on Events",
    )
    reasons = sorted(e["reason"] for e in list_events(kubectl, namespace, partition))
    assert reasons == ["JobCancelled", "JobStarted"]  # not succeeded, failed nor buried
    assert _metric(port, "roger_lifecycle_events_total") == 2  # before_run, on_cancel
    assert _metric(port, "roger_kube_events_emitted_total") == 2
    assert _metric(port, "roger_kube_events_dropped_total") == 0


@pytest.mark.parametrize("worker", [("--buried-max-length", "1")], indirect=True)
def test_a_buried_job_dropped_at_the_bound_is_a_buried_job_dropped_event(
    worker: tuple[str, int, Kubectl], amqp_url: str, namespace: str
) -> None:
    """buriedMaxLength 1 and two burials: the worker drops the first, and the cluster gets
    a BuriedJobDropped Warning about the Partition naming it."""
    partition, port, kubectl = worker
    with roger.Client(amqp_url) as client:
        first = client.enqueue(partition, "tests.jobs.basic:fails_once_not_retryable", {"n": 1})
        eventually(
            lambda: _metric(port, "roger_job_outcomes_total", outcome="buried") >= 1,
            timeout=60,
            message="the first job buried",
        )
        client.enqueue(partition, "tests.jobs.basic:fails_once_not_retryable", {"n": 2})
    eventually(
        lambda: _metric(port, "roger_buried_dropped_total", queue="default") == 1,
        timeout=60,
        message="the drop counted",
    )
    (event,) = eventually(
        lambda: [
            e
            for e in list_events(kubectl, namespace, partition)
            if e["reason"] == "BuriedJobDropped"
        ],
        timeout=30,
        message="a BuriedJobDropped Event",
    )
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "Partition"
    assert event["involvedObject"]["name"] == partition
    assert first in event["message"] and "fails_once_not_retryable" in event["message"]
