"""`make demo`: the one-command tour of Roger on the local cluster.

Make has already started RabbitMQ and the cluster. This script starts Prometheus, installs
the chart, runs the operator and the worker Pods as local processes (kwok fakes the
containers), applies the example Partitions, enqueues jobs of every outcome and shows what
users see: `kubectl get partitions`, the Events of tenant-a and a metrics summary.
Everything stays up for exploration until `make down`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".cluster"
DEMO = STATE / "demo"
BIN = STATE / "bin"
VENV_BIN = Path(sys.executable).parent
KUBECONFIG = str(STATE / "kubeconfig")
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
NAMESPACE = "demo"
PROMETHEUS = "http://127.0.0.1:9090"
OPERATOR_METRICS_PORT = 9191
OPERATOR_HEALTH_PORT = 9192
ENV = {
    **os.environ,
    "KUBECONFIG": KUBECONFIG,
    "PATH": f"{BIN}:{VENV_BIN}:{os.environ['PATH']}",
    # The example jobs and callbacks package lives in examples/ (the worker image's job).
    "PYTHONPATH": f"{ROOT / 'examples'}:{os.environ.get('PYTHONPATH', '')}",
    "ROGER_AMQP_URL": AMQP_URL,
}


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def sh(*cmd: str, check: bool = True, capture: bool = False) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, text=True, capture_output=capture)
    if check and proc.returncode != 0:
        sys.exit(f"demo: `{' '.join(cmd)}` failed:\n{proc.stderr if capture else ''}")
    return proc.stdout if capture else ""


def kubectl(*args: str, capture: bool = True, check: bool = True) -> str:
    return sh(str(BIN / "kubectl"), *args, capture=capture, check=check)


def wait(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Poll with a visible spinner until ``check`` is truthy."""
    deadline = time.monotonic() + timeout
    frames = "|/-\\"
    i = 0
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                print(f"\r    {what}: done          ", flush=True)
                return result
        except Exception:  # not ready yet
            pass
        print(f"\r    waiting for {what} {frames[i % 4]}", end="", flush=True)
        i += 1
        time.sleep(0.5)
    sys.exit(f"\ndemo: timed out waiting for {what}")


def background(name: str, *cmd: str) -> None:
    """Start a long-running helper once; its pid and log live in .cluster/demo/."""
    DEMO.mkdir(parents=True, exist_ok=True)
    pidfile = DEMO / f"{name}.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), 0)
            print(f"    {name} already running (pid {pidfile.read_text().strip()})")
            return
        except (OSError, ValueError):
            pass
    log = open(DEMO / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    pidfile.write_text(str(proc.pid))
    print(f"    {name} started (pid {proc.pid}, log .cluster/demo/{name}.log)")


def prom_query(query: str) -> list[dict[str, Any]]:
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return list(json.load(resp)["data"]["result"])


def partition_ready(name: str) -> bool:
    obj = json.loads(kubectl("get", "partition", name, "-n", NAMESPACE, "-o", "json"))
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in obj.get("status", {}).get("conditions", []))


def main() -> int:
    started = time.monotonic()
    step("Cluster and broker (make started them)")
    sh("bash", "hack/cluster.sh", "status")
    sh("bash", "hack/rabbitmq.sh", "status")

    step("Prometheus on 127.0.0.1:9090, scraping loopback targets")
    sh("bash", "hack/prometheus.sh", "up")

    step("helm install roger (CRDs, operator Deployment, RBAC) into roger-system")
    sh(str(BIN / "helm"), "upgrade", "--install", "roger", "charts/roger", "--namespace",
       "roger-system", "--create-namespace", "--kubeconfig", KUBECONFIG, "--wait",
       "--timeout", "2m")
    kubectl("wait", "--for=condition=Established", "crd/partitions.roger.dev", "--timeout=60s")

    step("The operator, as a local process (kwok runs no containers)")
    background("operator", str(VENV_BIN / "roger-operator"), "--all-namespaces",
               "--metrics-port", str(OPERATOR_METRICS_PORT),
               "--health-port", str(OPERATOR_HEALTH_PORT))
    background("localpods", sys.executable, "-m", "roger_operator.devtools.localpods",
               "--state-dir", str(DEMO / "pods"),
               "--file-sd", str(STATE / "prometheus" / "targets" / "workers.json"))

    step(f"Example Partitions tenant-a and tenant-b in namespace {NAMESPACE}")
    kubectl("create", "namespace", NAMESPACE, check=False)
    kubectl("apply", "-n", NAMESPACE, "-f", "examples/manifests/", capture=False)
    for name in ("tenant-a", "tenant-b"):
        wait(f"partition {name} Ready", lambda n=name: partition_ready(n))  # type: ignore[misc]
    wait("worker processes serving metrics", lambda: len(
        json.loads((STATE / "prometheus" / "targets" / "workers.json").read_text())) >= 2)

    step("Enqueue demo jobs of every outcome")
    sh(sys.executable, "examples/enqueue_demo.py", "--partition", "tenant-a", capture=False)

    step("kubectl get partitions")
    print(kubectl("get", "partitions", "-n", NAMESPACE, "-o", "wide"))

    step("Events of tenant-a (kubectl describe partition tenant-a)")
    print(kubectl("get", "events", "-n", NAMESPACE, "--field-selector",
                  "involvedObject.name=tenant-a,involvedObject.kind=Partition",
                  "--sort-by=.lastTimestamp"))

    step("Metrics summary (from Prometheus)")
    wait("Prometheus to scrape the workers",
         lambda: prom_query('sum(roger_lifecycle_events_total{partition="tenant-a"})'), 60)
    for query, label in (
        ("sum by (hook) (roger_lifecycle_events_total)", "hook"),
        ("sum by (outcome) (roger_job_outcomes_total)", "outcome"),
        ("sum by (reason) (roger_messages_parked_total)", "reason"),
    ):
        for row in prom_query(query):
            print(f"    {query.split('(')[2].split(')')[0]:<32} {label}={row['metric'].get(label, '-'):<12}"
                  f" {float(row['value'][1]):.0f}")

    took = time.monotonic() - started
    step(f"Tour done in {took:.0f}s. Everything keeps running until `make down`.")
    print(f"""
    Prometheus:   {PROMETHEUS}  (try: sum by (hook) (rate(roger_lifecycle_events_total[1m])))
    Operator:     metrics http://127.0.0.1:{OPERATOR_METRICS_PORT}/metrics, log .cluster/demo/operator.log
    Workers:      local processes per Pod, logs in .cluster/demo/pods/<ns>/<pod>/process.log
    kubectl:      export KUBECONFIG={KUBECONFIG} PATH={BIN}:$PATH

    Try next:
      kubectl -n {NAMESPACE} scale partition tenant-a --replicas 3   # more worker processes
      kubectl -n {NAMESPACE} describe partition tenant-a             # conditions, Events
      {VENV_BIN}/roger enqueue tenant-a myapp.jobs:hello '{{"name": "you"}}'
      {VENV_BIN}/roger info tenant-a
      make down                                                       # stop everything
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
