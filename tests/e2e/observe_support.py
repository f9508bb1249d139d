"""Real processes for the observability proofs: Prometheus (hack/prometheus.sh), workers,
the operator, and RabbitMQ clean-up. Loopback only."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.brokers import BROKER

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROMETHEUS_URL = f"http://127.0.0.1:{os.environ.get('ROGER_PROMETHEUS_PORT', '9090')}"
TARGETS = ROOT / ".cluster" / "prometheus" / "targets"
MANAGEMENT_URL = BROKER.management_api.removesuffix("/api")  # the session's broker


class Prometheus:
    """The project's Prometheus (started by hack/prometheus.sh) and its file_sd targets."""

    def __init__(self) -> None:
        subprocess.run(["bash", "hack/prometheus.sh", "up"], cwd=ROOT, check=True)
        self.url = PROMETHEUS_URL
        self.names: list[str] = []

    def add_target(self, name: str, port: int, **labels: str) -> None:
        args = ["bash", "hack/prometheus.sh", "add", name, f"127.0.0.1:{port}"]
        args += [f"{k}={v}" for k, v in labels.items()]
        subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
        self.names.append(name)

    def remove_targets(self) -> None:
        for name in self.names:
            (TARGETS / f"{name}.json").unlink(missing_ok=True)
        self.names.clear()

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: str = "5s") -> list[Any]:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        return list(data["result"])

    def targets_up(self, **labels: str) -> int:
        active = self.api("targets", state="active")["activeTargets"]
        return sum(
            t["health"] == "up" and all(t["labels"].get(k) == v for k, v in labels.items())
            for t in active
        )


def start_process(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen(
        args,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def start_operator(
    kubeconfig: str, namespaces: list[str], log_path: Path, metrics_port: int, health_port: int
) -> subprocess.Popen[bytes]:
    args = [str(BIN / "roger-operator")]
    for ns in namespaces:
        args += ["--namespace", ns]
    args += ["--metrics-port", str(metrics_port), "--health-port", str(health_port)]
    args += ["--bind-address", "127.0.0.1", "--status-interval", "2"]
    return start_process(args, log_path, {"KUBECONFIG": kubeconfig})


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _management(method: str, path: str) -> Any:
    req = urllib.request.Request(f"{MANAGEMENT_URL}/api/{path}", method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def delete_rabbitmq_objects(prefix: str) -> None:
    """Best effort: the queues and exchanges of a test partition (names start with it)."""
    try:
        for kind in ("queues", "exchanges"):
            for obj in _management("GET", f"{kind}/%2F?columns=name"):
                if obj["name"].startswith(prefix):
                    name = urllib.parse.quote(obj["name"], safe="")
                    _management("DELETE", f"{kind}/%2F/{name}")
    except OSError:
        pass


def partition_manifest(name: str, namespace: str, jobs: str = "tests.jobs.basic") -> str:
    return json.dumps(
        {
            "apiVersion": "roger.dev/v1alpha1",
            "kind": "Partition",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "amqp": {"secretRef": {"name": "rabbitmq", "key": "url"}},
                "worker": {"image": "example/jobs-worker:1.0", "replicas": 1},
                "jobs": [jobs],
                "queues": [
                    {"name": "default", "maxWorkers": 4},
                    {"name": "email", "maxWorkers": 1},
                ],
                "retry": {"levels": [1, 2], "buriedMaxLength": 100},
            },
        }
    )


def secret_manifest(namespace: str, url: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "rabbitmq", "namespace": namespace},
            "stringData": {"url": url},
        }
    )
