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
        busy = ws.start(["default=3"], ready=False)
        ws.env["POD_NAME"] = "pod-idle"
        idle = ws.start(["other=1"], ready=False)
        for w in (busy, idle):  # the shared broker declares quorum queues slowly at times
            w.wait_ready(timeout=120)
        with roger.Client(amqp_url) as client:
            for n in range(3):
                client.enqueue(unique_name, "tests.jobs.basic:slow", {"n": n, "sleep": 8})

        def counted() -> bool:
            found = running_per_pod(amqp_url, unique_name)
            assert found == {"pod-busy": 3, "pod-idle": 0}, found
            return True

        eventually(
            counted,
            timeout=60,
            interval=1,
            message="3 running jobs on pod-busy, none on pod-idle",
        )
    finally:
        ws.stop_all()
