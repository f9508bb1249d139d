"""localpods decides like a kubelet: probe thresholds, restarts with back-off, images it
cannot run, and a Pod status that replaces kwok's instant Ready."""

from __future__ import annotations

import pytest

from roger_devtools import kubelet
from roger_devtools.kubelet import Probe, ProbeState

pytestmark = pytest.mark.unit

CONTAINER = {
    "name": "worker",
    "ports": [{"name": "metrics", "containerPort": 9100}],
    "readinessProbe": {
        "httpGet": {"path": "/readyz", "port": "metrics"},
        "initialDelaySeconds": 3,
        "periodSeconds": 5,
        "failureThreshold": 2,
        "successThreshold": 2,
    },
    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 9100}, "periodSeconds": 10},
    "startupProbe": {"exec": {"command": ["true"]}},  # not HTTP: not run locally
}


def test_probes_of_a_container_spec() -> None:
    probes = kubelet.probes_of(CONTAINER)
    assert set(probes) == {"readiness", "liveness"}
    r = probes["readiness"]
    assert (r.path, r.initial_delay, r.period, r.failure_threshold) == ("/readyz", 3, 5, 2)
    assert probes["liveness"].failure_threshold == 3  # the API default
    assert kubelet.local_port("metrics", CONTAINER, {9100: 31000}) == 31000
    assert kubelet.local_port(9100, CONTAINER, {}) == 9100
    with pytest.raises(ValueError):
        kubelet.local_port("http", CONTAINER, {})


def test_readiness_needs_success_threshold_and_falls_after_failure_threshold() -> None:
    state = ProbeState.start(Probe("readiness", "/readyz", 1, 3, 5, 1, 2, 2), started_at=100)
    assert not state.due(102) and state.due(103)  # initialDelaySeconds
    assert state.result is None  # not ready until it succeeds
    state.record(True, 103)
    assert state.result is None and not state.due(107) and state.due(108)
    state.record(True, 108)
    assert state.result is True
    state.record(False, 113)
    assert state.result is True  # one failure is below failureThreshold
    state.record(True, 118)
    state.record(False, 123)
    state.record(False, 128)
    assert state.result is False  # consecutive failures only
    state.record(True, 133)
    assert state.result is False  # back only after successThreshold successes
    state.record(True, 138)
    assert state.result is True


def test_restart_back_off() -> None:
    assert kubelet.restart_delay(1, ran_for=1) == 0
    assert [kubelet.restart_delay(n, 1) for n in (2, 3, 4)] == [10, 20, 40]
    assert kubelet.restart_delay(20, 1) == kubelet.BACKOFF_MAX
    assert kubelet.restart_delay(20, ran_for=kubelet.BACKOFF_RESET) == 0


def test_runnable_images_are_the_projects() -> None:
    assert kubelet.runnable("example/jobs-worker:1.0")
    assert kubelet.runnable("roger-example-worker:0.1.0")
    assert kubelet.runnable("ghcr.io/roger-k8s/roger-worker:1")
    assert not kubelet.runnable("registry.invalid/no-such-image:1")


def test_termination_message_is_the_logs_tail() -> None:
    log = b"".join(f"line {i}\n".encode() for i in range(500))
    message = kubelet.termination_message(log)
    assert message.endswith("line 499") and len(message.splitlines()) == 80


KWOK_STATUS = {
    "phase": "Running",
    "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "T0"},
        {"type": "Ready", "status": "True", "lastTransitionTime": "T0"},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": "T0"},
    ],
    "containerStatuses": [{"name": "worker", "ready": True, "state": {"running": {}}}],
}


def test_status_patch_replaces_kwoks_instant_ready() -> None:
    waiting = {"name": "worker", "ready": False, "state": {"waiting": {"reason": "X"}}}
    patch = kubelet.pod_status_patch(KWOK_STATUS, waiting, "T1")
    assert patch is not None
    status = patch["status"]
    assert "phase" not in status  # stays Running: kwok's Stage only matches Pending pods
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["PodScheduled"]["lastTransitionTime"] == "T0"  # not ours: kept
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["lastTransitionTime"] == "T1"
    assert conditions["ContainersReady"]["status"] == "False"
    assert status["containerStatuses"] == [waiting]  # whole: no stale "running" state left
    ready = {**waiting, "ready": True, "state": {"running": {"startedAt": "T2"}}}
    after = {**KWOK_STATUS, **status}
    again = kubelet.pod_status_patch(after, ready, "T3")
    assert again is not None
    assert {c["type"]: c["lastTransitionTime"] for c in again["status"]["conditions"]} == {
        "PodScheduled": "T0",
        "Ready": "T3",
        "ContainersReady": "T3",
    }
