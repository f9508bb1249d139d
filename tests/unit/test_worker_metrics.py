"""The worker's metrics start at 0 for known label sets and follow pause/resume."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from roger.core import metric_names as names
from roger.metrics.worker import WorkerMetrics

pytestmark = pytest.mark.unit


def _sample(m: WorkerMetrics, name: str, **labels: str) -> float | None:
    value = m.registry.get_sample_value(name, {"partition": "p", **labels})
    return None if value is None else float(value)


def test_known_series_start_at_zero_and_paused_follows() -> None:
    m = WorkerMetrics("p")
    assert _sample(m, names.BROKER_RECONNECTS + "_total") == 0
    m.prepare(["default", "mail"])
    assert _sample(m, names.QUEUE_PAUSED, queue="mail") == 0
    assert _sample(m, names.MESSAGES_PARKED + "_total", queue="mail", reason="not_json") == 0
    assert _sample(m, names.JOBS_RUNNING, queue="default") == 0
    m.queue_paused("mail", True)
    assert _sample(m, names.QUEUE_PAUSED, queue="mail") == 1
    m.queue_paused("mail", False)
    assert _sample(m, names.QUEUE_PAUSED, queue="mail") == 0
    m.reconnected()
    assert _sample(m, names.BROKER_RECONNECTS + "_total") == 1
    assert b"roger_queue_paused{" in generate_latest(m.registry)


# Target labels Prometheus (and the Prometheus Operator) set on every scraped series: a
# metric label of the same name would arrive renamed to exported_<name>.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}


def _label_names(registry: object) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for family in registry.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_the_lifecycle_contract_and_no_label_prometheus_owns() -> None:
    from roger.core.lifecycle import LifecycleEvent

    m = WorkerMetrics("p")
    m.prepare(["default"])
    fields = {f: "x" for f in LifecycleEvent._fields}
    m.observe(
        LifecycleEvent(**{**fields, "queue": "default", "job_name": "a:b", "hook": "after_run"})
    )
    m.outcome("default", "a:b", "retried", 0.1)
    m.callback_failed("cb:C", "on_error", "raised")
    labels = _label_names(m.registry)
    assert labels[names.LIFECYCLE_EVENTS + "_total"] == {"partition", "queue", "job_name", "hook"}
    assert labels[names.JOB_OUTCOMES + "_total"] == {"partition", "queue", "job_name", "outcome"}
    assert (
        _sample(
            m, names.LIFECYCLE_EVENTS + "_total", queue="default", job_name="a:b", hook="after_run"
        )
        == 1
    )
    clashing = {name: ls & TARGET_LABELS for name, ls in labels.items() if ls & TARGET_LABELS}
    assert not clashing


def test_operator_metrics_own_no_target_label() -> None:
    from prometheus_client import REGISTRY

    from roger_operator import metrics

    metrics.PARTITIONS.labels("shop", "Ready").set(1)
    labels = _label_names(REGISTRY)
    assert labels[names.OPERATOR_PARTITIONS] == {"partition_namespace", "phase"}
    roger = {n: ls for n, ls in labels.items() if n.startswith("roger_")}
    assert roger and not {n: ls & TARGET_LABELS for n, ls in roger.items() if ls & TARGET_LABELS}


def test_worker_info_reports_the_installed_version_and_process_collectors() -> None:
    from importlib.metadata import version

    m = WorkerMetrics("p")
    info = m.registry.get_sample_value(
        names.WORKER_INFO + "_info", {"partition": "p", "version": version("roger-k8s")}
    )
    assert info == 1
    text = generate_latest(m.registry).decode()
    for series in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"):
        assert f"\n{series}" in text, series
