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
