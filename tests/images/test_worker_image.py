"""The example worker image (FROM roger-worker) runs as the operator's worker Pods run it.

The Pod is the operator's own (``build_children`` of a Partition), translated flag for flag
into ``podman run`` (roger_devtools.podman): user 65532, read-only root filesystem, every
capability dropped, no privilege escalation, the rendered ConfigMap mounted read-only where
the operator mounts it, /tmp an emptyDir, its memory limit. Host networking reaches the
local broker on 127.0.0.1. Jobs of every outcome are processed inside the container.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import roger
from roger_devtools.podman import podman_run
from roger_devtools.polling import eventually
from roger_devtools.ports import free_port
from roger_operator.builders.manifests import WORKER_CONTAINER, build_children
from roger_operator.builders.model import CONFIG_DIR, parse_callback, parse_partition
from tests.e2e.observe_support import delete_rabbitmq_objects
from tests.images.conftest import Images, podman, podman_env

# Real containers of the project's images: run with the e2e tier (make test), once.
pytestmark = pytest.mark.e2e

MEMORY_LIMIT = 256 * 2**20


def _partition(name: str, image: str, port: int) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": "images", "uid": "u-1"},
        "spec": {
            "amqp": {"secretRef": {"name": "rabbitmq", "key": "url"}},
            "worker": {
                "image": image,
                "metricsPort": port,
                "resources": {"limits": {"memory": "256Mi"}},
            },
            "jobs": ["myapp.jobs"],
            "callbacks": ["audit"],
            "queues": [
                {"name": "default", "maxWorkers": 4},
                {"name": "email", "maxWorkers": 2},
                {"name": "reports", "maxWorkers": 2},
            ],
            "retry": {"levels": [1, 2]},
            "events": {"hooks": []},  # no API server behind this container
        },
    }


def _audit(path: Path) -> list[dict[str, object]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.startswith("{")]


def _exec(name: str, script: str) -> str:
    return podman("exec", name, "sh", "-c", script).stdout


def test_example_worker_image_with_the_operators_pod_settings(
    amqp_url: str, images: Images, container_name: str, tmp_path: Path
) -> None:
    partition = container_name[:40].rstrip("-")
    port = free_port()
    spec = parse_partition(_partition(partition, images.example, port))
    audit = parse_callback(
        {"metadata": {"name": "audit"}, "spec": {"module": "myapp.callbacks:Audit"}}
    )
    children, _ = build_children(spec, [audit])
    kinds = {c["kind"]: c for c in children}
    pod = {
        "metadata": {"name": container_name, "namespace": spec.namespace},
        "spec": kinds["Deployment"]["spec"]["template"]["spec"],
    }
    config_map = kinds["ConfigMap"]
    run = podman_run(
        pod,
        WORKER_CONTAINER,
        name=container_name,
        secrets={"rabbitmq": {"url": amqp_url}},
        config_maps={config_map["metadata"]["name"]: config_map["data"]},
        pod_dir=str(tmp_path),
    )
    for rel, text in run.files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(run.argv, env=podman_env(), stdout=stdout, stderr=stderr)
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"container exited: {err.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        eventually(ready, timeout=90, message="worker container /readyz")

        # What the kubelet would enforce, seen from inside the container.
        seen = _exec(
            container_name,
            "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status;"
            " touch /rootfs-write 2>/dev/null && echo root-writable || echo root-read-only;"
            f" touch {CONFIG_DIR}/x 2>/dev/null && echo config-writable || echo config-read-only;"
            " touch /tmp/x && echo tmp-writable; ls /etc/roger;"
            " cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
            " || cat /sys/fs/cgroup/memory.max",
        ).split()
        assert seen[:2] == ["65532", "65532"], seen
        assert "CapEff:" in seen and seen[seen.index("CapEff:") + 1] == "0000000000000000"
        assert "CapBnd:" in seen and seen[seen.index("CapBnd:") + 1] == "0000000000000000"
        assert "NoNewPrivs:" in seen and seen[seen.index("NoNewPrivs:") + 1] == "1"
        assert {"root-read-only", "config-read-only", "tmp-writable", "worker.yaml"} <= set(seen)
        assert seen[-1] == str(MEMORY_LIMIT)

        with roger.Client(amqp_url) as client:
            ids = {
                "welcome": client.enqueue(partition, "myapp.jobs:send_welcome", {"user": 1}),
                "mailbox": client.enqueue(
                    partition, "myapp.jobs:sync_mailbox", {"until": time.time() + 0.5}
                ),
                "charge": client.enqueue(partition, "myapp.jobs:charge_card", {"card": "4242"}),
                "import": client.enqueue(partition, "myapp.jobs:import_report", {}),
                "cancel": client.enqueue(partition, "myapp.jobs:build_report", {"seconds": 1.5}),
            }
            client.cancel(partition, ids["cancel"])
        expected = {
            ("welcome", "after_run"),  # succeeded
            ("mailbox", "on_error"),  # retried ...
            ("mailbox", "after_run"),  # ... then succeeded
            ("charge", "on_buried"),  # retried through every level, then buried
            ("import", "on_error"),  # not retryable: buried at once
            ("cancel", "on_cancel"),  # cancelled
        }
        by_id = {v: k for k, v in ids.items()}

        def outcomes() -> set[tuple[str, str]]:
            return {(by_id.get(str(r["id"]), "?"), str(r["hook"])) for r in _audit(out)}

        eventually(
            lambda: expected <= outcomes(),
            timeout=60,
            interval=0.5,
            message=f"every outcome; container log: {err.read_text()[-2000:]}",
        )
        charge = [r["hook"] for r in _audit(out) if r["id"] == ids["charge"]]
        assert charge == ["on_error", "on_error", "on_buried"]
        with roger.Client(amqp_url) as client:
            buried = {j.id for j in client.buried(partition)}
        assert {ids["charge"], ids["import"]} <= buried

        # SIGTERM as a kubelet stops it: a clean exit within the Pod's grace period.
        grace = float(pod["spec"]["terminationGracePeriodSeconds"])
        podman("stop", "--time", str(int(grace)), container_name, timeout=grace + 30)
        assert proc.wait(timeout=30) == 0, err.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        delete_rabbitmq_objects(partition)
