"""Lifecycle hooks as Events on the local cluster, driving the observer directly."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from roger.core.hooks import HOOKS
from roger.metrics.worker import WorkerMetrics
from tests.e2e.kube_events_support import (
    create_partition,
    ensure_partition_crd,
    lifecycle,
    list_events,
    make_observer,
    wait_events,
)
from tests.helpers import Kubectl

pytestmark = pytest.mark.e2e

EXPECTED = {
    "before_run": ("JobStarted", "Normal"),
    "after_run": ("JobSucceeded", "Normal"),
    "on_error": ("JobFailed", "Warning"),
    "on_cancel": ("JobCancelled", "Normal"),
    "on_buried": ("JobBuried", "Warning"),
}


@pytest.fixture
def kubectl(kubectl_bin: str, kubeconfig: str) -> Kubectl:
    k = Kubectl(kubectl_bin, kubeconfig)
    ensure_partition_crd(k)
    return k


def test_each_hook_yields_its_event(kubectl: Kubectl, namespace: str, kubeconfig: str) -> None:
    uid = create_partition(kubectl, namespace, "tenant-a")
    obs = make_observer("tenant-a", namespace, kubeconfig)
    for i, hook in enumerate(HOOKS):
        obs.observe(lifecycle(hook, "tenant-a", i))
    obs.close(10.0)
    assert obs.emitted == 5 and obs.dropped == {}
    events = {e["reason"]: e for e in list_events(kubectl, namespace, "tenant-a")}
    assert len(events) == 5
    for i, hook in enumerate(HOOKS):
        reason, type_ = EXPECTED[hook]
        e = events[reason]
        assert e["type"] == type_
        assert e["involvedObject"] == {
            "apiVersion": "roger.dev/v1alpha1",
            "kind": "Partition",
            "name": "tenant-a",
            "namespace": namespace,
            "uid": uid,
        }
        assert e["reportingComponent"] == "roger.dev/worker"
        assert e["reportingInstance"] == "e2e-pod-0"
        assert e["count"] == 1
        assert f"job-{i:06d}" in e["message"] and "tests.jobs.Send" in e["message"]
        assert f"retry {i % 3}" in e["message"]
        if hook in ("on_error", "on_buried"):
            assert f"ValueError: boom {i}" in e["message"]
    # What an operator sees.
    described = kubectl.run("describe", "partition", "tenant-a", "-n", namespace).stdout
    for reason, _ in EXPECTED.values():
        assert reason in described


def test_configured_hooks_only(kubectl: Kubectl, namespace: str, kubeconfig: str) -> None:
    create_partition(kubectl, namespace, "tenant-b")
    obs = make_observer("tenant-b", namespace, kubeconfig, events=["on_error", "on_buried"])
    for i, hook in enumerate(HOOKS):
        obs.observe(lifecycle(hook, "tenant-b", i))
    obs.close(10.0)
    reasons = sorted(e["reason"] for e in list_events(kubectl, namespace, "tenant-b"))
    assert reasons == ["JobBuried", "JobFailed"]


def test_kube_name_differs_from_partition(
    kubectl: Kubectl, namespace: str, kubeconfig: str
) -> None:
    create_partition(kubectl, namespace, "obj-name")
    obs = make_observer("tenant-c", namespace, kubeconfig, name="obj-name")
    obs.observe(lifecycle("on_cancel", "tenant-c", 1))
    obs.close(10.0)
    (e,) = wait_events(kubectl, namespace, "obj-name", 1)
    assert e["reason"] == "JobCancelled"


# 10,000 jobs: each job fires before_run then after_run, except 1 in 100 (both names) which fires
# on_error, for two job names -> 20,000 lifecycle events in 6 similar series. Driven at
# ~1,000 jobs/s for ~10 s, so the series are patched while running.
JOBS = 10_000
SERIES = 6  # {JobStarted, JobSucceeded, JobFailed} x {Send, Resize}
RATE = 1_000.0


def test_ten_thousand_jobs_make_few_events_and_writes(
    kubectl: Kubectl, namespace: str, kubeconfig: str
) -> None:
    create_partition(kubectl, namespace, "tenant-load")
    obs = make_observer("tenant-load", namespace, kubeconfig)
    metrics = WorkerMetrics("tenant-load", registry=CollectorRegistry())
    observers = [metrics, obs]
    start = time.monotonic()
    slowest = 0.0
    for i in range(JOBS):
        job = "tests.jobs.Send" if i % 2 else "tests.jobs.Resize"
        hooks = ("before_run", "on_error" if i % 200 in (0, 1) else "after_run")
        for hook in hooks:
            event = lifecycle(hook, "tenant-load", i, job=job)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            for o in observers:
                o.observe(event)
            slowest = max(slowest, time.perf_counter() - t0)
        ahead = start + (i + 1) / RATE - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    elapsed = time.monotonic() - start
    obs.close(15.0)

    lifecycle_total = sum(
        s.value
        for m in metrics.registry.collect()
        if m.name == "roger_lifecycle_events"
        for s in m.samples
        if s.name == "roger_lifecycle_events_total"
    )
    assert lifecycle_total == 2 * JOBS  # exact, whatever happens to Events
    assert obs.emitted == 2 * JOBS and obs.dropped == {}

    events = list_events(kubectl, namespace, "tenant-load")
    writes = sum(obs.writes.values())
    print(
        f"\n10k jobs in {elapsed:.1f}s: {len(events)} Event objects, writes {obs.writes}, "
        f"slowest observe() {slowest * 1e6:.0f} µs"
    )
    assert len(events) == SERIES
    assert sum(e["count"] for e in events) == 2 * JOBS
    # Bound: one create per series, then at most one patch per series per 10 s while
    # running, plus one final patch per series at close.
    bound = SERIES * (1 + int(elapsed // 10) + 1 + 1)
    assert obs.writes["create"] == SERIES
    assert writes <= bound
    by_reason: dict[str, int] = {}
    for e in events:
        by_reason[e["reason"]] = by_reason.get(e["reason"], 0) + e["count"]
        assert "similar, latest: Job tests.jobs." in e["message"]
    assert by_reason == {
        "JobStarted": JOBS,
        "JobSucceeded": JOBS - JOBS // 100,
        "JobFailed": JOBS // 100,
    }
