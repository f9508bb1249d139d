"""Lifecycle hooks as Events on the local cluster, driving the observer directly:
each hook's Event, aggregation at 10,000 jobs, a Partition that appears late, an Event
that expires, and ``observer_from_config`` (namespace, name, hooks, instance, kubeconfig)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from roger.core.hooks import HOOKS
from roger.kube import observer_from_config
from roger.kube.client import KubeEventsApi
from roger.kube.metrics import kube_event_metrics
from roger.kube.observer import KubeEventsObserver
from roger.metrics.worker import WorkerMetrics
from roger_devtools.polling import eventually
from tests.e2e.kube_events_support import (
    create_partition,
    lifecycle,
    list_events,
    make_observer,
    wait_events,
    worker_config,
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
    assert obs.observed == 2 and obs.emitted == 2  # the other hooks are not even counted
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


def _observer(kubeconfig: str, namespace: str, name: str, **kw: float) -> KubeEventsObserver:
    return KubeEventsObserver(
        KubeEventsApi.from_environment(kubeconfig),
        namespace=namespace,
        name=name,
        partition=name,
        instance="e2e-pod-0",
        metrics=kube_event_metrics(CollectorRegistry()),
        **kw,  # type: ignore[arg-type]
    )


def test_partition_created_later_is_found_and_regarded(
    kubectl: Kubectl, namespace: str, kubeconfig: str
) -> None:
    """Until the Partition exists its events are dropped (partition_missing) and the
    lookup is retried; once it exists Events regard it, with its uid."""
    obs = _observer(kubeconfig, namespace, "tenant-late", probe_first=0.1, probe_max=0.5)
    try:
        obs.observe(lifecycle("after_run", "tenant-late", 0))
        eventually(
            lambda: obs.dropped.get("partition_missing", 0) >= 1,
            timeout=15,
            message="partition_missing counted",
        )
        assert obs.regarding.uid is None and obs.writes == {"create": 0, "patch": 0}
        uid = create_partition(kubectl, namespace, "tenant-late")
        eventually(lambda: obs.regarding.uid == uid, timeout=15, message="uid resolved")
        obs.observe(lifecycle("on_error", "tenant-late", 1))
    finally:
        obs.close(10.0)
    (event,) = list_events(kubectl, namespace, "tenant-late")
    assert event["involvedObject"]["uid"] == uid and event["reason"] == "JobFailed"
    assert obs.emitted == 1 and set(obs.dropped) == {"partition_missing"}
    assert obs.emitted + sum(obs.dropped.values()) == obs.observed == 2


def test_expired_event_is_created_again(kubectl: Kubectl, namespace: str, kubeconfig: str) -> None:
    """An Event gone from the API (TTL, or deleted) makes the patch 404: the series starts
    over with a create, and the new object counts what was not yet written."""
    create_partition(kubectl, namespace, "tenant-ttl")
    obs = _observer(kubeconfig, namespace, "tenant-ttl", patch_interval=0.0)
    try:
        obs.observe(lifecycle("after_run", "tenant-ttl", 0))
        eventually(lambda: obs.emitted == 1, timeout=15, message="first Event written")
        (first,) = list_events(kubectl, namespace, "tenant-ttl")
        kubectl.run("delete", "event", first["metadata"]["name"], "-n", namespace)
        obs.observe(lifecycle("after_run", "tenant-ttl", 1))
    finally:
        obs.close(10.0)
    (second,) = list_events(kubectl, namespace, "tenant-ttl")
    assert second["metadata"]["name"] != first["metadata"]["name"]
    assert second["count"] == 1 and "job-000001" in second["message"]
    assert obs.emitted == 2 and obs.dropped == {}
    assert obs.writes == {"create": 2, "patch": 1}  # the patch that found nothing


def test_factory_without_namespace_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="roger.kube")
    config = worker_config("tenant-a", "")
    assert observer_from_config(config, env={}) is None
    assert observer_from_config(worker_config("tenant-a", "ns", events=[]), env={}) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "roger.kube"]
    assert len(lines) == 2
    assert "Kubernetes Events off: no namespace" in lines[0]
    assert "kube.events is empty" in lines[1]


def test_factory_reads_config_env_and_kubeconfig(
    kubectl: Kubectl, namespace: str, kubeconfig: str
) -> None:
    """Namespace from the pod's env, object name from ROGER_KUBE_NAME, reporting instance
    from POD_NAME, hooks from the config, credentials from the given kubeconfig."""
    uid = create_partition(kubectl, namespace, "obj-from-env")
    config = worker_config("tenant-env", "", events=["on_error", "on_buried"])
    env = {"POD_NAMESPACE": namespace, "ROGER_KUBE_NAME": "obj-from-env", "POD_NAME": "pod-7"}
    obs = observer_from_config(config, env=env, registry=CollectorRegistry(), kubeconfig=kubeconfig)
    assert obs is not None
    try:
        assert obs.hooks == {"on_error", "on_buried"}
        for i, hook in enumerate(HOOKS):
            obs.observe(lifecycle(hook, "tenant-env", i))
    finally:
        obs.close(10.0)
    events = list_events(kubectl, namespace, "obj-from-env")
    assert sorted(e["reason"] for e in events) == ["JobBuried", "JobFailed"]
    for e in events:
        assert e["involvedObject"]["uid"] == uid
        assert e["reportingInstance"] == "pod-7"


def test_factory_uses_the_kubeconfig_it_is_given(
    kubectl: Kubectl,
    namespace: str,
    kubeconfig: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same config with a kubeconfig whose server does not listen: the observer is
    made, its events are dropped as unreachable (so that kubeconfig, not $KUBECONFIG, was
    used); with no readable kubeconfig there is no observer, and the log says why."""
    create_partition(kubectl, namespace, "tenant-kc")
    dead = yaml.safe_load(Path(kubeconfig).read_text())
    for cluster in dead["clusters"]:
        cluster["cluster"]["server"] = "https://127.0.0.1:1"
    (tmp_path / "dead").write_text(yaml.safe_dump(dead))
    config = worker_config("tenant-kc", namespace)
    obs = observer_from_config(
        config, env={}, registry=CollectorRegistry(), kubeconfig=str(tmp_path / "dead")
    )
    assert obs is not None
    try:
        obs.observe(lifecycle("after_run", "tenant-kc", 0))
        eventually(lambda: obs.dropped.get("unreachable"), timeout=15, message="unreachable")
    finally:
        obs.close(2.0)
    assert obs.emitted == 0 and list_events(kubectl, namespace, "tenant-kc") == []
    caplog.set_level(logging.INFO, logger="roger.kube")
    missing = str(tmp_path / "no-such-kubeconfig")
    assert observer_from_config(config, env={}, kubeconfig=missing) is None
    assert "Kubernetes Events off: no Kubernetes credentials" in caplog.text
