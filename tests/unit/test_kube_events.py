"""The pure Events builder: reasons, messages, truncation, aggregation key, budget, table;
and the pure parts of the worker's Events settings (namespace, name, instance, hooks).

The observer's threads and I/O are tested against a real kube-apiserver in
tests/e2e/test_kube_events_{observer,outage,rbac,worker}.py."""

from __future__ import annotations

import pytest

from roger.core.config import KubeSettings, parse_config
from roger.core.event_aggregation import (
    NORMAL_BURST,
    NORMAL_RATE,
    WARNING_BURST,
    Aggregator,
    Budget,
    TokenBucket,
)
from roger.core.hooks import HOOKS, HookName
from roger.core.kube_events import (
    HOOK_EVENTS,
    MESSAGE_LIMIT,
    Regarding,
    aggregation_key,
    count_patch,
    event_message,
    event_name,
    instance_name,
    job_message,
    new_event,
    timestamp,
    truncate,
)
from roger.core.lifecycle import LifecycleEvent
from roger.core.rbac import WORKER_RULES
from roger.kube import instance, kube_namespace

pytestmark = pytest.mark.unit

REG = Regarding(namespace="ns", name="tenant-a", uid="u-1")


def ev(
    hook: HookName = "before_run",
    job: str = "app.jobs.Send",
    job_id: str = "id-1",
    retry: int = 0,
    error: tuple[str, str] | None = None,
    at: float = 1_700_000_000.0,
) -> LifecycleEvent:
    return LifecycleEvent(
        hook=hook,
        partition="tenant-a",
        queue="default",
        job_id=job_id,
        job_name=job,
        retry_count=retry,
        at=at,
        error=error,
        duration=0.5 if hook in ("after_run", "on_error", "on_buried") else None,
    )


def test_each_hook_has_its_reason_and_type() -> None:
    assert set(HOOK_EVENTS) == {*HOOKS, "buried_dropped"}
    assert HOOK_EVENTS == {
        "before_run": ("JobStarted", "Normal"),
        "after_run": ("JobSucceeded", "Normal"),
        "on_error": ("JobFailed", "Warning"),
        "on_cancel": ("JobCancelled", "Normal"),
        "on_buried": ("JobBuried", "Warning"),
        "buried_dropped": ("BuriedJobDropped", "Warning"),
    }


def test_a_buried_job_dropped_at_the_bound_names_the_job_and_the_queue() -> None:
    from roger.core import buried as bu
    from roger.core import message

    body = message.encode(message.JobMessage("j9", "app.jobs:x", None, "default", retry_count=2))
    props = type("P", (), {"headers": {bu.ERROR_KIND: "KeyError", bu.ERROR_MESSAGE: "no"}})()
    event = bu.buried_dropped_event("tenant-a", "default", props, body, 5.0)
    assert (event.job_id, event.retry_count, event.error) == ("j9", 2, ("KeyError", "no"))
    text = job_message(event)
    assert "j9" in text and "dropped from tenant-a-default.buried" in text


@pytest.mark.parametrize("hook", HOOKS)
def test_message_names_job_id_retry_and_error(hook: HookName) -> None:
    error = ("ValueError", "boom") if hook in ("on_error", "on_buried") else None
    text = job_message(ev(hook, job_id="abc123", retry=3, error=error))
    assert "app.jobs.Send" in text and "abc123" in text and "retry 3" in text
    if error:
        assert "ValueError: boom" in text


def test_aggregated_message_says_n_similar_and_keeps_latest_id() -> None:
    text = event_message(ev(job_id="latest-7"), 42)
    assert text.startswith("42 similar, latest: ")
    assert "latest-7" in text
    assert "similar" not in event_message(ev(), 1)


def test_truncation_counts_utf8_bytes_and_marks_the_cut() -> None:
    assert truncate("short") == "short"
    cut = truncate("é" * 2000)
    assert len(cut.encode()) <= MESSAGE_LIMIT and cut.endswith("…")
    long_error = ev("on_error", error=("RuntimeError", "x" * 5000))
    msg = event_message(long_error, 10_000)
    assert len(msg.encode()) <= MESSAGE_LIMIT
    assert msg.startswith("10000 similar") and "RuntimeError" in msg
    exact = "a" * MESSAGE_LIMIT
    assert truncate(exact) == exact


def test_aggregation_key_ignores_job_id_but_not_job_name_reason_or_object() -> None:
    a = aggregation_key(ev(job_id="1"), REG)
    assert a == aggregation_key(ev(job_id="2", retry=5), REG)
    assert a != aggregation_key(ev(job="app.jobs.Other"), REG)
    assert a != aggregation_key(ev("after_run"), REG)
    assert a != aggregation_key(ev(), Regarding("ns", "tenant-b"))
    assert aggregation_key(ev("on_error"), REG).type == "Warning"


def test_event_body_is_a_valid_core_v1_event_about_the_partition() -> None:
    latest = ev("on_buried", job_id="j9", retry=12, error=("timeout", ""), at=1_700_000_010.7)
    body = new_event(
        name="tenant-a.abc",
        regarding=REG,
        latest=latest,
        count=3,
        first_at=1_700_000_000.2,
        instance="pod-1",
    )
    assert body["involvedObject"] == {
        "apiVersion": "roger.dev/v1alpha1",
        "kind": "Partition",
        "name": "tenant-a",
        "namespace": "ns",
        "uid": "u-1",
    }
    assert body["metadata"] == {"name": "tenant-a.abc", "namespace": "ns"}
    assert (body["reason"], body["type"], body["count"]) == ("JobBuried", "Warning", 3)
    assert body["reportingComponent"] == "roger.dev/worker"
    assert body["reportingInstance"] == "pod-1" == body["source"]["host"]
    assert body["firstTimestamp"] == "2023-11-14T22:13:20Z"
    assert body["lastTimestamp"] == timestamp(1_700_000_010.7) == "2023-11-14T22:13:30Z"
    assert "3 similar" in body["message"] and "j9" in body["message"]
    patch = count_patch(latest, 4)
    assert patch["count"] == 4 and patch["message"].startswith("4 similar")


def test_names_and_instance_respect_api_limits() -> None:
    assert event_name("tenant-a", 0x1234, 7) == "tenant-a.12340007"
    assert len(instance_name("p" * 300)) == 128
    assert instance_name("") == "unknown"


def test_token_bucket_with_injected_clock() -> None:
    b = TokenBucket(burst=3, rate=0.5)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait_time(0.0) == pytest.approx(2.0)
    assert not b.take(1.9)
    assert b.take(2.0)
    assert b.available(100.0) == 3  # never above the burst


def test_warnings_have_a_reserve_normal_noise_cannot_use() -> None:
    budget = Budget()
    normal = [budget.take("Normal", 0.0) for _ in range(100)]
    assert sum(normal) == NORMAL_BURST
    warnings = [budget.take("Warning", 0.0) for _ in range(100)]
    assert sum(warnings) == WARNING_BURST
    # Warnings may borrow Normal tokens when their own are gone.
    budget = Budget()
    assert sum(budget.take("Warning", 0.0) for _ in range(100)) == NORMAL_BURST + WARNING_BURST
    assert not budget.take("Normal", 0.0)
    assert budget.take("Normal", 1 / NORMAL_RATE)


def test_similar_events_aggregate_into_one_series_with_bounded_writes() -> None:
    agg = Aggregator(REG, "pod", patch_interval=10.0)
    for i in range(10_000):
        assert agg.add(ev(job_id=f"id-{i}", at=1e9 + i / 1000), now=0.0)
    assert len(agg.series) == 1
    w = agg.next_write(0.0, 1)
    assert w is not None and w.verb == "create" and w.count == 10_000
    assert "id-9999" in w.body["message"] and w.body["message"].startswith("10000 similar")
    assert agg.succeeded(w) == 10_000
    assert agg.next_write(1.0, 2) is None  # nothing pending
    agg.add(ev(job_id="x"), now=1.0)
    assert agg.next_write(5.0, 3) is None  # patched at most every 10 s
    w2 = agg.next_write(10.0, 4)
    assert w2 is not None and w2.verb == "patch" and w2.body["count"] == 10_001
    assert agg.succeeded(w2) == 1


def test_new_warnings_are_written_before_normal_updates_and_creates() -> None:
    agg = Aggregator(REG, "pod", patch_interval=0.0)
    agg.add(ev("before_run"), 0.0)
    agg.add(ev("on_error", error=("E", "m")), 0.0)
    first = agg.next_write(0.0, 1)
    assert first is not None and first.series.key.reason == "JobFailed"


def test_normal_flood_cannot_starve_a_warning() -> None:
    agg = Aggregator(REG, "pod", patch_interval=0.0)
    now = 0.0
    writes = []
    for i in range(200):  # 200 distinct Normal series, far beyond the budget
        agg.add(ev(job=f"app.jobs.J{i}"), now)
    while (w := agg.next_write(now, 1)) is not None:
        writes.append(w)
        agg.succeeded(w)
    assert len(writes) == NORMAL_BURST
    agg.add(ev("on_buried", error=("E", "m")), now)
    w = agg.next_write(now, 2)
    assert w is not None and w.series.key.reason == "JobBuried"


def test_not_found_restarts_the_series_and_drop_pending_counts() -> None:
    agg = Aggregator(REG, "pod", patch_interval=0.0)
    agg.add(ev(), 0.0)
    w = agg.next_write(0.0, 1)
    assert w is not None
    agg.succeeded(w)
    agg.add(ev(), 0.0)
    agg.add(ev(), 0.0)
    p = agg.next_write(0.0, 2)
    assert p is not None and p.verb == "patch"
    agg.not_found(p)  # the Event expired: recreate with what was never written
    c = agg.next_write(0.0, 3)
    assert c is not None and c.verb == "create" and c.count == 2
    agg.failed(c)
    assert agg.drop_pending() == {"JobStarted": 2}
    assert agg.pending() == 0


def test_table_is_bounded_and_evicts_only_written_series() -> None:
    agg = Aggregator(REG, "pod", max_series=2, patch_interval=0.0)
    assert agg.add(ev(job="a.A"), 0.0) and agg.add(ev(job="a.B"), 0.0)
    assert not agg.add(ev(job="a.C"), 0.0)  # both unwritten: overflow
    w = agg.next_write(0.0, 1)
    assert w is not None
    agg.succeeded(w)
    assert agg.add(ev(job="a.C"), 1.0)
    assert len(agg.series) == 2


def test_worker_rules_are_least_privilege() -> None:
    verbs = {
        (g, r): set(rule["verbs"])
        for rule in WORKER_RULES
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert verbs == {("", "events"): {"create", "patch"}, ("roger.dev", "partitions"): {"get"}}


def test_kube_settings_from_config() -> None:
    base = {"partition": "tenant-a", "queues": {"default": 1}, "jobs": ["m"]}
    assert parse_config(base).kube == KubeSettings(None, None, HOOKS)
    config = parse_config(
        {**base, "kube": {"namespace": "ns1", "name": "obj", "events": ["on_error", "on_buried"]}}
    )
    assert config.kube == KubeSettings("ns1", "obj", ("on_error", "on_buried"))


def test_namespace_flag_or_config_first_then_the_pods_env() -> None:
    base = {"partition": "tenant-a", "queues": {"default": 1}, "jobs": ["m"]}
    none = parse_config(base)
    assert kube_namespace(none, {}) is None
    assert kube_namespace(none, {"POD_NAMESPACE": "p"}) == "p"
    assert kube_namespace(none, {"ROGER_KUBE_NAMESPACE": "r", "POD_NAMESPACE": "p"}) == "r"
    configured = parse_config({**base, "kube": {"namespace": "c"}})
    assert kube_namespace(configured, {"ROGER_KUBE_NAMESPACE": "r", "POD_NAMESPACE": "p"}) == "c"


def test_reporting_instance_is_the_pod_then_the_host() -> None:
    assert instance({"POD_NAME": "pod-7", "HOSTNAME": "h"}) == "pod-7"
    assert instance({"HOSTNAME": "h"}) == "h"
    assert instance({})  # the host name


def test_each_registry_gets_counters_of_its_own_even_at_a_reused_address() -> None:
    """A registry collected and a new one made at the same address: the new one shows its
    own counts (keyed by id(), it got the old one's counters and showed nothing)."""
    import gc

    from prometheus_client import CollectorRegistry

    from roger.kube.metrics import kube_event_metrics

    addresses = set()
    for _ in range(50):
        registry = CollectorRegistry()
        addresses.add(id(registry))
        kube_event_metrics(registry).dropped.labels("p", "forbidden").inc()
        labels = {"partition": "p", "cause": "forbidden"}
        assert registry.get_sample_value("roger_kube_events_dropped_total", labels) == 1
        del registry
        gc.collect()
    assert len(addresses) < 50  # an address was reused: the case that went wrong
