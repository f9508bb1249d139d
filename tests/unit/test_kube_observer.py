"""The Events observer against a fake API: never blocks, outages, one log line, resume."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from roger.core.config import KubeSettings, parse_config
from roger.core.lifecycle import LifecycleEvent
from roger.kube import kube_namespace, observer_from_config
from roger.kube.client import ApiFailure
from roger.kube.metrics import kube_event_metrics
from roger.kube.observer import KubeEventsObserver

pytestmark = pytest.mark.unit


class FakeApi:
    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.failure: ApiFailure | None = None
        self.block = threading.Event()
        self.block.set()

    def get_partition(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append("get")
        self.block.wait()
        if self.failure:
            raise self.failure
        return {"metadata": {"uid": "uid-1", "name": name}}

    def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        self.block.wait()
        if self.failure:
            raise self.failure
        self.events[body["metadata"]["name"]] = dict(body)
        return body

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("patch")
        self.block.wait()
        if self.failure:
            raise self.failure
        if name not in self.events:
            raise ApiFailure("not_found", "gone", 404)
        self.events[name].update(patch)
        return self.events[name]

    def close(self) -> None:
        pass


def ev(hook: Any = "after_run", i: int = 0, job: str = "app.jobs.Send") -> LifecycleEvent:
    err = ("ValueError", "boom") if hook in ("on_error", "on_buried") else None
    return LifecycleEvent(hook, "tenant-a", "default", f"id-{i}", job, 0, time.time(), err, None)


def make(api: FakeApi, **kw: Any) -> KubeEventsObserver:
    return KubeEventsObserver(
        api,
        namespace="ns",
        name="tenant-a",
        partition="tenant-a",
        instance="pod-0",
        metrics=kube_event_metrics(CollectorRegistry()),
        tick=0.005,
        probe_first=0.05,
        probe_max=0.2,
        **kw,
    )


def wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_many_similar_events_make_one_object_and_few_writes() -> None:
    api = FakeApi()
    obs = make(api)
    for i in range(10_000):
        obs.observe(ev(i=i))
    obs.close(5.0)
    assert len(api.events) == 1
    (event,) = api.events.values()
    assert event["count"] == 10_000 and "id-9999" in event["message"]
    assert obs.emitted == 10_000 and obs.dropped == {}
    assert sum(obs.writes.values()) <= 3


def test_observe_never_blocks_even_when_the_api_hangs() -> None:
    api = FakeApi()
    api.block.clear()  # every API call hangs
    obs = make(api, queue_limit=1000)
    start = time.perf_counter()
    for i in range(50_000):
        obs.observe(ev(i=i))
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"observe() took {elapsed / 50_000 * 1e6:.1f} µs per call"
    api.block.set()
    obs.close(2.0)
    assert obs.observed == 50_000


def test_queue_is_bounded_and_overflow_is_counted() -> None:
    api = FakeApi()
    obs = make(api, queue_limit=10, start=False)
    for i in range(25):
        obs.observe(ev(i=i))
    obs.start()
    obs.close(2.0)
    assert obs.dropped.get("queue_full") == 15
    assert obs.emitted == 10


def test_outage_drops_counts_logs_once_and_resumes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="roger.kube")
    api = FakeApi()
    obs = make(api)
    obs.observe(ev(i=0))
    wait_for(lambda: obs.emitted == 1)
    api.failure = ApiFailure("unreachable", "connection refused")
    for i in range(1, 200):
        obs.observe(ev("on_error" if i % 2 else "after_run", i=i))
        time.sleep(0.002)
    wait_for(lambda: sum(obs.dropped.values()) > 0)
    api.failure = None
    wait_for(lambda: obs.stats()["down"] is None)
    obs.observe(ev("on_buried", i=999))
    obs.close(5.0)
    s = obs.stats()
    assert s["dropped"].get("unreachable", 0) > 0
    assert obs.emitted + sum(obs.dropped.values()) == obs.observed == 201
    assert any(e["reason"] == "JobBuried" for e in api.events.values())
    suspended = [r for r in caplog.records if "suspended" in r.getMessage()]
    resumed = [r for r in caplog.records if "resumed" in r.getMessage()]
    assert len(suspended) == 1 and len(resumed) == 1


def test_forbidden_is_an_outage_with_its_own_cause() -> None:
    api = FakeApi()
    api.failure = ApiFailure("forbidden", "HTTP 403", 403)
    obs = make(api)
    for i in range(20):
        obs.observe(ev(i=i))
        time.sleep(0.005)
    obs.close(0.5)
    assert set(obs.dropped) <= {"forbidden", "shutdown"} and obs.dropped.get("forbidden")
    assert obs.emitted == 0 and api.events == {}


def test_missing_partition_is_retried() -> None:
    api = FakeApi()
    api.failure = ApiFailure("not_found", "no partition", 404)
    obs = make(api)
    obs.observe(ev(i=0))
    wait_for(lambda: obs.dropped.get("partition_missing", 0) >= 1)
    api.failure = None
    wait_for(lambda: obs.regarding.uid == "uid-1")
    obs.observe(ev(i=1))
    obs.close(5.0)
    (event,) = api.events.values()
    assert event["involvedObject"]["uid"] == "uid-1"


def test_expired_event_is_recreated() -> None:
    api = FakeApi()
    obs = make(api, patch_interval=0.0)
    obs.observe(ev(i=0))
    wait_for(lambda: obs.emitted == 1)
    api.events.clear()  # TTL expiry
    obs.observe(ev(i=1))
    obs.close(5.0)
    assert obs.emitted == 2 and len(api.events) == 1
    assert obs.writes == {"create": 2, "patch": 1}


def test_disabled_hooks_are_ignored() -> None:
    api = FakeApi()
    obs = make(api, hooks=("on_error",))
    obs.observe(ev("after_run"))
    obs.observe(ev("on_error"))
    obs.close(5.0)
    assert obs.observed == 1
    assert [e["reason"] for e in api.events.values()] == ["JobFailed"]


def test_factory_needs_a_namespace_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="roger.kube")
    config = parse_config({"partition": "tenant-a", "queues": {"default": 1}, "jobs": ["m"]})
    assert observer_from_config(config, env={}) is None
    assert "no namespace" in caplog.text
    assert kube_namespace(config, {"POD_NAMESPACE": "p"}) == "p"
    assert kube_namespace(config, {"ROGER_KUBE_NAMESPACE": "r", "POD_NAMESPACE": "p"}) == "r"


def test_factory_reads_config_and_env() -> None:
    config = parse_config(
        {
            "partition": "tenant-a",
            "queues": {"default": 1},
            "jobs": ["m"],
            "kube": {"namespace": "ns1", "events": ["on_error", "on_buried"]},
        }
    )
    assert config.kube == KubeSettings("ns1", None, ("on_error", "on_buried"))
    api = FakeApi()
    obs = observer_from_config(
        config, env={"POD_NAME": "pod-7"}, api=api, registry=CollectorRegistry()
    )
    assert obs is not None
    try:
        assert obs.regarding.name == "tenant-a" and obs.regarding.namespace == "ns1"
        assert obs.hooks == {"on_error", "on_buried"}
        obs.observe(ev("on_error"))
    finally:
        obs.close(5.0)
    (event,) = api.events.values()
    assert event["reportingInstance"] == "pod-7"
