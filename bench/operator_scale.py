"""Operator at scale: N Partitions applied at once on the local cluster.

Measures: seconds until every Deployment exists and until every Partition reports Ready,
Kubernetes API requests (the operator's own client counter, and the API server's
``apiserver_request_total`` diff for the resources the operator touches), operator CPU
seconds up to all Ready (also per Partition), operator peak RSS, the machine's load
average, and operator CPU while nothing changes. Then deletes everything and times that
too. The namespace starts with ``ROGER_TEST_TAG`` (as the tests' do), so two checkouts
sharing the cluster never touch each other's.

    .venv/bin/python bench/operator_scale.py [--partitions 200] [--idle-seconds 60]

The operator runs from a venv of its own holding only ``roger-k8s[operator]``, as the
image installs it (``--operator-venv``, made with uv on first use): the dev venv also holds
the ``kubernetes`` package (the ``events`` extra, the tests), which kopf imports whenever it
is installed, and its ~32 MiB would be counted in the operator's RSS.

Needs ``make cluster-up rabbitmq-up``. Writes nothing; paste the output into
bench/OPERATOR_RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import worker_throughput as wt  # noqa: E402
from roger_devtools.ports import free_port  # noqa: E402

KUBECONFIG = str(ROOT / ".cluster" / "kubeconfig")
KUBECTL = str(ROOT / ".cluster" / "bin" / "kubectl")
AMQP_URL = os.environ.get("ROGER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
RESOURCES = {
    "partitions",
    "configmaps",
    "services",
    "serviceaccounts",
    "roles",
    "rolebindings",
    "secrets",
    "deployments",
    "callbacks",
}
API_REQUESTS_SERIES = "roger_operator_api_requests_total{"


def kubectl(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [KUBECTL, "--kubeconfig", KUBECONFIG, *args],
        input=stdin,
        text=True,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def apiserver_metrics() -> str:
    """The API server's /metrics text: one snapshot for both counts below."""
    return kubectl("get", "--raw", "/metrics")


def apiserver_requests(metrics_text: str) -> int:
    """Requests the API server counted for the operator's resources: not Deployment status
    (kube-controller-manager writes it) and not LISTs (this script polls with them)."""
    total = 0.0
    for line in metrics_text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("resource") not in RESOURCES:
            continue
        if labels.get("resource") == "deployments" and labels.get("subresource") == "status":
            continue
        if labels.get("verb") == "LIST":  # this script's polling (the operator only watches)
            continue
        total += float(m["value"])
    return int(total)


_WATCH_SAMPLE = re.compile(
    r'^apiserver_watch_events_total\{.*resource="(?P<r>[^"]+)".*\} (?P<v>\S+)$'
)


def watch_events(metrics_text: str) -> dict[str, float]:
    """Watch events the API server sent, per resource, to every watcher (the operator is
    the only one watching partitions; deployments and pods also go to the controllers)."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        m = _WATCH_SAMPLE.match(line)
        if m and m["r"] in ("partitions", "deployments", "pods", "configmaps"):
            out[m["r"]] = out.get(m["r"], 0.0) + float(m["v"])
    return out


def operator_counters(port: int) -> dict[str, float]:
    """The operator's own counters, summed per series name and label set we report:
    requests by verb, reconciles by result, seconds spent reconciling, errors by stage,
    broker calls by name (how many, seconds queued for a lane thread, seconds running)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    wanted = (
        "roger_operator_api_requests_total{",
        "roger_operator_reconciles_total{",
        "roger_operator_reconcile_duration_seconds_sum{",
        "roger_operator_errors_total{",
        "roger_operator_broker_call_queued_seconds_sum{",
        "roger_operator_broker_call_duration_seconds_sum{",
        "roger_operator_broker_call_duration_seconds_count{",
    )
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            series, value = line.rsplit(" ", 1)
            out[series] = out.get(series, 0.0) + float(value)
    return out


def operator_requests(counters: dict[str, float]) -> int:
    """The operator's own client requests, from an ``operator_counters`` snapshot."""
    return int(sum(v for k, v in counters.items() if k.startswith(API_REQUESTS_SERIES)))


def counters_per_partition(
    before: dict[str, float], after: dict[str, float], partitions: int
) -> dict[str, float]:
    """What each counter grew by, per Partition (the series that did not move left out)."""
    return {
        key.replace("roger_operator_", ""): round((value - before.get(key, 0.0)) / partitions, 3)
        for key, value in sorted(after.items())
        if value != before.get(key, 0.0)
    }


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def peak_rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM:") / 1024


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS:") / 1024


def manifests(ns: str, names: list[str], url: str = AMQP_URL) -> tuple[str, str]:
    """(the Secret, the Partitions) as YAML."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "rabbitmq", "namespace": ns},
        "stringData": {"url": url},
    }
    docs = []
    for name in names:
        docs.append(
            {
                "apiVersion": "roger.dev/v1alpha1",
                "kind": "Partition",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "amqp": {"secretRef": {"name": "rabbitmq"}},
                    "worker": {"image": "example/jobs-worker:1.0", "replicas": 1},
                    "jobs": ["myapp.jobs"],
                    "queues": [{"name": "default", "maxWorkers": 4}],
                    "retry": {"levels": [5]},
                },
            }
        )
    return yaml.safe_dump(secret), yaml.safe_dump_all(docs)


def apply_parallel(ns: str, names: list[str], streams: int, url: str = AMQP_URL) -> None:
    """``kubectl apply --server-side`` of all Partitions from ``streams`` processes at once."""
    kubectl("apply", "-f", "-", stdin=manifests(ns, [], url)[0])
    procs = []
    for i in range(min(streams, len(names))):  # kubectl refuses an empty apply
        chunk = names[i::streams]
        procs.append(
            subprocess.Popen(
                [KUBECTL, "--kubeconfig", KUBECONFIG, "apply", "--server-side", "-f", "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
            )
        )
        assert procs[-1].stdin is not None
        procs[-1].stdin.write(manifests(ns, chunk, url)[1])
        procs[-1].stdin.close()
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("kubectl apply failed")


def count_ready(ns: str) -> tuple[int, int]:
    items = json.loads(kubectl("get", "partitions", "-n", ns, "-o", "json"))["items"]
    ready = 0
    for p in items:
        for c in (p.get("status") or {}).get("conditions") or ():
            if c["type"] == "Ready" and c["status"] == "True":
                ready += 1
    return len(items), ready


def count_deployments(ns: str) -> int:
    out = kubectl(
        "get",
        "deployments",
        "-n",
        ns,
        "-l",
        "app.kubernetes.io/managed-by=roger-operator",
        "-o",
        "name",
    )
    return len(out.split())


def operator_venv(venv: Path) -> Path:
    """``roger-operator`` in ``venv``, which holds the [operator] extra and nothing else."""
    uv = str(Path(sys.executable).parent / "uv")
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), "-e", f"{ROOT}[operator]"],
        check=True,
    )
    probe = "import importlib.util as u; print(u.find_spec('kubernetes') is None)"
    absent = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if absent.stdout.strip() != "True":
        raise SystemExit(f"{venv} holds the kubernetes package: not the image's install")
    return venv / "bin" / "roger-operator"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partitions", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--status-interval", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--apply-streams", type=int, default=4, help="parallel kubectl applies")
    parser.add_argument(
        "--skip-delete",
        action="store_true",
        help="no timed delete phase (at 500 it is RabbitMQ deleting 2,000 queues, ~22 min): "
        "the namespace goes without finalizers and the queues stay in RabbitMQ",
    )
    parser.add_argument(
        "--operator-venv",
        type=Path,
        default=ROOT / ".venv-operator",
        help="venv with only roger-k8s[operator], as in the image (made if missing)",
    )
    parser.add_argument(
        "--bound-policy",
        choices=("queue", "vhost"),
        default="queue",
        help="the operator's --bound-policy; with vhost the Partitions get a vhost of their "
        "own (worker_throughput.fresh_vhost: deleted at the end), as that mode asks",
    )
    args = parser.parse_args(argv)
    if args.bound_policy == "vhost":  # the mode is for a vhost of the operator's own
        with wt.fresh_vhost(AMQP_URL) as url:
            return run(args, url)
    return run(args, AMQP_URL)


def run(args: argparse.Namespace, url: str) -> int:
    """Apply ``args.partitions`` Partitions (their Secret: ``url``) and measure; prints a
    JSON line."""
    operator_bin = operator_venv(args.operator_venv)

    try:  # installed already: a shared cluster's CRDs may be newer than this checkout's
        kubectl("get", "crd", "partitions.roger.dev")
    except RuntimeError:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    tag = os.environ.get("ROGER_TEST_TAG", "t")
    ns = f"{tag}-bench-operator-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    metrics_port, health_port = free_port(), free_port()
    log_path = Path(f"/tmp/{ns}.log")
    op = subprocess.Popen(
        [
            str(operator_bin),
            "--namespace",
            ns,
            "--metrics-port",
            str(metrics_port),
            "--health-port",
            str(health_port),
            "--bind-address",
            "127.0.0.1",
            "--status-interval",
            str(args.status_interval),
            "--bound-policy",
            args.bound_policy,
        ],
        env={**os.environ, "KUBECONFIG": KUBECONFIG},
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    names = [f"p{i:03d}-{uuid.uuid4().hex[:4]}" for i in range(args.partitions)]
    result: dict[str, Any] = {"partitions": args.partitions, "namespace": ns}
    try:
        deadline = time.monotonic() + 120  # (a traced operator starts slowly)
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"the operator did not answer /healthz: see {log_path}"
                    ) from None
                time.sleep(0.2)
        time.sleep(1)
        api_text0, counters0 = apiserver_metrics(), operator_counters(metrics_port)
        api0, own0 = apiserver_requests(api_text0), operator_requests(counters0)
        result["load_average_before"] = [round(x, 1) for x in os.getloadavg()]
        cpu_start = wt.cpu_seconds(op.pid)
        start = time.monotonic()
        apply_parallel(ns, names, args.apply_streams, url)
        result["apply_seconds"] = round(time.monotonic() - start, 2)
        result["apply_streams"] = args.apply_streams
        deployments_at, timeline, last_mark = None, [], -1
        while True:
            elapsed = time.monotonic() - start
            deployments = count_deployments(ns) if deployments_at is None else args.partitions
            if deployments_at is None and deployments >= args.partitions:
                deployments_at = elapsed
            _total, ready = count_ready(ns)
            if int(elapsed // 30) != last_mark:  # how far it got, every 30 s
                last_mark = int(elapsed // 30)
                timeline.append((round(elapsed), deployments, ready))
            if deployments_at is not None and ready >= args.partitions:
                break
            if elapsed > args.timeout:
                result["timed_out_ready"] = ready
                break
            time.sleep(0.5)
        result["timeline_seconds_deployments_ready"] = timeline
        result["all_deployments_seconds"] = deployments_at and round(deployments_at, 1)
        result["all_ready_seconds"] = round(time.monotonic() - start, 1)
        cpu_ready = wt.cpu_seconds(op.pid) - cpu_start
        result["load_average_at_ready"] = [round(x, 1) for x in os.getloadavg()]
        result["operator_cpu_seconds_to_ready"] = round(cpu_ready, 2)
        result["operator_cpu_ms_per_partition"] = round(1000 * cpu_ready / args.partitions, 1)
        result["rss_mib_at_ready"] = round(rss_mib(op.pid), 1)
        api_text1, counters1 = apiserver_metrics(), operator_counters(metrics_port)
        api1, own1 = apiserver_requests(api_text1), operator_requests(counters1)
        result["apiserver_requests_to_ready"] = api1 - api0
        result["operator_client_requests_to_ready"] = own1 - own0
        result["requests_per_partition"] = round((api1 - api0) / args.partitions, 1)
        result["operator_requests_per_partition"] = round((own1 - own0) / args.partitions, 1)
        result["operator_counters_per_partition_to_ready"] = counters_per_partition(
            counters0, counters1, args.partitions
        )
        watch0, watch1 = watch_events(api_text0), watch_events(api_text1)
        result["watch_events_per_partition_to_ready"] = {
            r: round((watch1[r] - watch0.get(r, 0.0)) / args.partitions, 2) for r in watch1
        }

        time.sleep(3)  # let the last status events settle
        cpu0, t0 = wt.cpu_seconds(op.pid), time.monotonic()
        own_idle0 = operator_requests(operator_counters(metrics_port))
        time.sleep(args.idle_seconds)
        cpu1, t1 = wt.cpu_seconds(op.pid), time.monotonic()
        result["idle_window_seconds"] = round(t1 - t0, 1)
        result["idle_cpu_percent"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 2)
        result["idle_operator_requests_per_second"] = round(
            (operator_requests(operator_counters(metrics_port)) - own_idle0) / (t1 - t0), 2
        )
        result["status_interval_seconds"] = args.status_interval
        result["peak_rss_mib"] = round(peak_rss_mib(op.pid), 1)

        if not args.skip_delete:
            start, cpu_start = time.monotonic(), wt.cpu_seconds(op.pid)
            kubectl("delete", "partitions", "--all", "-n", ns, "--timeout=600s")
            result["delete_all_seconds"] = round(time.monotonic() - start, 1)
            result["operator_cpu_seconds_to_delete"] = round(wt.cpu_seconds(op.pid) - cpu_start, 2)
            result["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
            result["peak_rss_mib"] = round(peak_rss_mib(op.pid), 1)
    finally:
        if op.poll() is None:
            op.send_signal(signal.SIGTERM)
            try:
                op.wait(timeout=60)
            except subprocess.TimeoutExpired:
                op.kill()
        result["operator_exit_code"] = op.returncode
        # After a failure, leftover Partitions would hold the namespace in Terminating.
        for obj in kubectl("get", "partitions", "-n", ns, "-o", "name").split():
            kubectl(
                "patch", "-n", ns, obj, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
            )
        subprocess.run(
            [KUBECTL, "--kubeconfig", KUBECONFIG, "delete", "namespace", ns, "--wait=false"],
            capture_output=True,
            check=False,
        )
        result["bound_policy"] = args.bound_policy
        # Also after a failure (how far it got); before the vhost's deletion, which takes
        # minutes at 2,000 queues.
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
