"""The example jobs and callbacks, run by a real ``roger worker``: each job's outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import roger
from roger_devtools.polling import eventually
from roger_devtools.ports import free_port
from tests.e2e.observe_support import delete_rabbitmq_objects

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _audit(path: Path) -> list[dict]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_example_jobs_reach_their_outcomes(amqp_url: str, unique_name: str, tmp_path: Path) -> None:
    partition = unique_name[:40].rstrip("-")
    port = free_port()
    out = tmp_path / "audit.jsonl"
    err = tmp_path / "worker.log"
    cmd = [str(Path(sys.executable).parent / "roger"), "worker", "--partition", partition]
    cmd += ["--queue", "default=4", "--queue", "email=2", "--queue", "reports=2"]
    cmd += ["--jobs", "myapp.jobs", "--callback", "myapp.callbacks:Audit"]
    cmd += ["--retry-levels", "1,2", "--metrics-port", str(port)]
    env = {**os.environ, "ROGER_AMQP_URL": amqp_url}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=EXAMPLES, env=env, stdout=stdout, stderr=stderr)
    try:
        eventually(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
            ),
            timeout=60,
            message="worker ready",
        )
        with roger.Client(amqp_url) as client:
            ids = {
                "welcome": client.enqueue(partition, "myapp.jobs:send_welcome", {"user": 1}),
                "mailbox": client.enqueue(
                    partition, "myapp.jobs:sync_mailbox", {"until": time.time() + 0.5}
                ),
                "charge": client.enqueue(partition, "myapp.jobs:charge_card", {"card": "4242"}),
                "import": client.enqueue(partition, "myapp.jobs:import_report", {}),
                "timeout": client.enqueue(partition, "myapp.jobs:build_report", {"seconds": 10}),
                "cancel": client.enqueue(partition, "myapp.jobs:build_report", {"seconds": 1.5}),
            }
            client.cancel(partition, ids["cancel"])

        expected = {
            ("welcome", "after_run"),
            ("mailbox", "on_error"),
            ("mailbox", "after_run"),
            ("charge", "on_buried"),
            ("import", "on_error"),  # not retryable: on_error, kept in .buried
            ("timeout", "on_error"),
            ("cancel", "on_cancel"),
        }
        by_id = {v: k for k, v in ids.items()}

        def seen() -> set[tuple[str, str]]:
            return {(by_id.get(r["id"], "?"), r["hook"]) for r in _audit(out)}

        eventually(
            lambda: expected <= seen(),
            timeout=60,
            interval=0.5,
            message=f"every outcome; log: {err.read_text()[-2000:]}",
        )
        records = _audit(out)
        assert all(r["channel"] == "#jobs" for r in records)
        timeout = next(r for r in records if r["id"] == ids["timeout"] and r["hook"] == "on_error")
        assert timeout["error"] == "timeout"
        charge = [r for r in records if r["id"] == ids["charge"]]
        assert [r["hook"] for r in charge] == ["on_error", "on_error", "on_buried"]
        assert ("welcome", "on_buried") not in seen() and ("cancel", "after_run") not in seen()
        assert ("import", "on_buried") not in seen() and ("timeout", "on_buried") not in seen()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        delete_rabbitmq_objects(partition)
