"""The autoscaler reads each worker pod's running jobs from the workers' heartbeats
(``rabbit/load.py``): what keeps ``pod-deletion-cost`` on busy pods above idle ones."""

from __future__ import annotations

from pathlib import Path

import pytest

import roger
from roger_devtools.polling import eventually
from roger_devtools.workers import Workers
from roger_operator.rabbit.load import running_per_pod

pytestmark = pytest.mark.integration


def test_running_jobs_per_pod_come_from_heartbeats_named_after_the_pod(
    amqp_url: str, unique_name: str, tmp_path: Path
) -> None:
    ws = Workers(amqp_url, unique_name, tmp_path, jobs=["tests.jobs.basic"])
    try:
        assert running_per_pod(amqp_url, unique_name) == {}  # no worker ever ran
        ws.env["POD_NAME"] = "pod-busy"
        ws.start(["default=3"])
        ws.env["POD_NAME"] = "pod-idle"
        ws.start(["other=1"])
        with roger.Client(amqp_url) as client:
            for n in range(3):
                client.enqueue(unique_name, "tests.jobs.basic:slow", {"n": n, "sleep": 8})
        eventually(
            lambda: running_per_pod(amqp_url, unique_name) == {"pod-busy": 3, "pod-idle": 0},
            timeout=30,
            interval=1,
            message="3 running jobs on pod-busy, none on pod-idle",
        )
    finally:
        ws.stop_all()
