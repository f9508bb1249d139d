"""Autoscaling vs fixed replicas for one bursty workload, side by side on the local cluster.

Three Partitions get the same bursts of jobs at the same moments:

- ``auto``: ``spec.autoscaling`` (builtin engine) from 0 to ``--max`` pods;
- ``max``: ``--max`` fixed replicas (sized for the bursts, idle between them);
- ``min``: 1 fixed replica (the least that drains anything).

For each: how long each burst takes to drain (its enqueue to its last job's end), the
wait before a job starts, and pod-seconds (worker Pods alive, integrated over the run, from
the first burst until every Partition is drained and ``auto`` is back to zero). Then the
ratios against ``max``. Worker Pods are kwok Pods that ``roger_devtools.localpods`` runs as
local processes; the fixed Partitions' pods are up before the first burst.

    .venv/bin/python bench/autoscale.py [--bursts 3 --jobs 80 --gap 45 --job-seconds 2]

Needs ``make cluster-up rabbitmq-up``; ~5 minutes. Writes nothing; paste the output into
bench/AUTOSCALE_RESULTS.md. Not a test: no assertion about the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import roger  # noqa: E402
from roger_devtools.polling import eventually  # noqa: E402
from tests.e2e.autoscale_support import records  # noqa: E402
from tests.e2e.operator_support import (  # noqa: E402
    LocalPodsProcess,
    OperatorProcess,
    partition_manifest,
    secret_manifest,
)
from tests.helpers import TEST_TAG, Kubectl  # noqa: E402

KUBECONFIG = str(ROOT / ".cluster" / "kubeconfig")
KUBECTL = str(ROOT / ".cluster" / "bin" / "kubectl")
AMQP_URL = os.environ.get("ROGER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
JOB = "tests.jobs.basic:slow"
MAX_WORKERS = 4  # jobs at once per pod


@dataclass
class Mode:
    name: str
    namespace: str
    partition: str
    out: Path
    autoscaling: dict[str, Any] | None
    replicas: int
    pods: list[tuple[float, int]] = field(default_factory=list)  # (at, worker Pods alive)


def manifest(mode: Mode) -> str:
    spec: dict[str, Any] = {
        "worker": {"replicas": mode.replicas, "shutdownTimeout": 10, "jobProcesses": 1},
        "jobs": ["tests.jobs.basic"],
        "queues": [{"name": "default", "maxWorkers": MAX_WORKERS}],
    }
    if mode.autoscaling is not None:
        spec["autoscaling"] = mode.autoscaling
    return partition_manifest(mode.partition, mode.namespace, **spec)


def alive_pods(k: Kubectl, namespaces: set[str]) -> dict[str, int]:
    """Worker Pods that exist (a terminating one still runs its process), per namespace."""
    found = k.get_json("pods", "-A", "-l", "app.kubernetes.io/name=roger-worker")["items"]
    counts = dict.fromkeys(namespaces, 0)
    for pod in found:
        ns = pod["metadata"]["namespace"]
        if ns in counts and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            counts[ns] += 1
    return counts


def sample(k: Kubectl, modes: list[Mode], stop: threading.Event) -> None:
    namespaces = {m.namespace for m in modes}
    while not stop.is_set():
        at = time.time()
        try:
            counts = alive_pods(k, namespaces)
        except (AssertionError, ValueError):
            stop.wait(0.5)
            continue
        for m in modes:
            m.pods.append((at, counts[m.namespace]))
        stop.wait(1.0)


def pod_seconds(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """Step integral of the Pod count over [start, end]."""
    total = 0.0
    inside = [(at, n) for at, n in samples if start <= at <= end]
    for (at, n), (nxt, _) in zip(inside, [*inside[1:], (end, 0)], strict=True):
        total += n * (nxt - at)
    return total


def consumers(k: Kubectl, mode: Mode) -> int:
    """Workers consuming the queue (status.queues, from RabbitMQ): kwok marks Pods Ready at
    once, before their worker processes have even started."""
    obj = k.get_json("-n", mode.namespace, "partition", mode.partition)
    queues = (obj.get("status") or {}).get("queues") or []
    return int(queues[0].get("consumers") or 0) if queues else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=80, help="jobs per burst")
    ap.add_argument("--gap", type=float, default=45.0, help="seconds from burst to burst")
    ap.add_argument("--job-seconds", type=float, default=2.0)
    ap.add_argument("--max", type=int, default=4, help="maxReplicas, and the fixed maximum")
    ap.add_argument("--cooldown", type=int, default=15, help="auto: scaleToZeroCooldownSeconds")
    args = ap.parse_args()

    k = Kubectl(KUBECTL, KUBECONFIG)
    k.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    run = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="roger-bench-autoscale-"))
    autoscaling = {
        "minReplicas": 0,
        "maxReplicas": args.max,
        "scaleToZeroCooldownSeconds": args.cooldown,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}},
    }
    modes = [
        Mode("auto", "", "auto", tmp / "auto.txt", autoscaling, 0),
        Mode("max", "", "fixed-max", tmp / "max.txt", None, args.max),
        Mode("min", "", "fixed-min", tmp / "min.txt", None, 1),
    ]
    glob = f"{TEST_TAG}-bench-autoscale-{run}-*"
    for m in modes:
        m.namespace = f"{TEST_TAG}-bench-autoscale-{run}-{m.name}"
    operator = OperatorProcess(
        KUBECONFIG, tmp / "operator.log", namespace=glob, extra_args=("--autoscale-interval", "1")
    )
    pods = [LocalPodsProcess(KUBECONFIG, m.namespace, tmp / "pods" / m.name) for m in modes]
    stop = threading.Event()
    load_before = os.getloadavg()
    try:
        operator.start()
        for m in modes:
            k.run("create", "namespace", m.namespace)
            k.apply(secret_manifest(m.namespace, AMQP_URL))
            k.apply(manifest(m))
        for p in pods:
            p.start()
        for m in modes:
            want = m.replicas
            eventually(
                lambda m=m, want=want: consumers(k, m) >= want,
                timeout=240, interval=1, message=f"{m.name}: {want} workers consuming",
            )  # fmt: skip
        sampler = threading.Thread(target=sample, args=(k, modes, stop), daemon=True)
        sampler.start()

        burst_at: list[float] = []
        with roger.Client(AMQP_URL) as client:
            first = time.time()
            for b in range(args.bursts):
                time.sleep(max(0.0, first + b * args.gap - time.time()))
                burst_at.append(time.time())
                for m in modes:
                    jobs = [
                        (
                            JOB,
                            {"out": str(m.out), "n": b * args.jobs + i, "sleep": args.job_seconds},
                        )
                        for i in range(args.jobs)
                    ]
                    client.enqueue_many(m.partition, jobs)
                print(f"burst {b + 1}: {args.jobs} jobs x {len(modes)} enqueued "
                      f"in {time.time() - burst_at[-1]:.1f}s", flush=True)  # fmt: skip
        total = args.bursts * args.jobs

        def drained(m: Mode) -> bool:
            return sum(1 for r in records(m.out) if r[0] == "end") >= total

        eventually(lambda: all(drained(m) for m in modes), timeout=900, interval=2,
                   message="every Partition drained")  # fmt: skip
        last_end = max(r[2] for m in modes for r in records(m.out) if r[0] == "end")
        # auto's pods go back to zero after its cooldown: counted until then.
        auto = modes[0]
        eventually(lambda: auto.pods and auto.pods[-1][1] == 0 and auto.pods[-1][0] > last_end,
                   timeout=240, interval=1, message="auto back to zero")  # fmt: skip
        end = auto.pods[-1][0]
        stop.set()
        sampler.join(timeout=10)
        load_after = os.getloadavg()
        report(modes, args, burst_at, first, end, load_before, load_after)
    finally:
        stop.set()
        for p in pods:
            p.stop()
        for m in modes:
            k.run("-n", m.namespace, "delete", "partition", "--all", "--timeout=120s", check=False)
        operator.stop()
        for m in modes:
            k.run("delete", "namespace", m.namespace, "--wait=false", check=False)


def report(
    modes: list[Mode],
    args: argparse.Namespace,
    burst_at: list[float],
    first: float,
    end: float,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    print(
        f"\nworkload: {args.bursts} bursts of {args.jobs} jobs of {args.job_seconds:g}s, one burst "
        f"every {args.gap:g}s; maxWorkers {MAX_WORKERS}/pod; auto 0..{args.max} "
        f"(cooldown {args.cooldown}s, scale-down window 10s), max {args.max} fixed, min 1 fixed"
    )
    print(f"window: {end - first:.0f}s (first burst -> every Partition drained, auto at zero)")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min)\n")
    rows: dict[str, dict[str, float]] = {}
    header = (
        f"{'mode':<5} {'drain/burst mean':>16} {'max':>6} {'wait p50':>9} {'wait p95':>9} "
        f"{'all done':>9} {'pod-s':>7} {'peak pods':>9}"
    )
    print(header)
    for m in modes:
        rows_m = records(m.out)
        starts = {n: at for what, n, at in rows_m if what == "start"}
        ends = {n: at for what, n, at in rows_m if what == "end"}
        drains = []
        waits = []
        for b, at in enumerate(burst_at):
            ids = range(b * args.jobs, (b + 1) * args.jobs)
            drains.append(max(ends[n] for n in ids) - at)
            waits.extend(starts[n] - at for n in ids)
        waits.sort()
        p95 = waits[min(len(waits) - 1, math.ceil(0.95 * len(waits)) - 1)]
        done = max(ends.values()) - first
        ps = pod_seconds(m.pods, first, end)
        peak = max((n for _, n in m.pods), default=0)
        rows[m.name] = {"drain": statistics.mean(drains), "ps": ps, "done": done}
        print(
            f"{m.name:<5} {statistics.mean(drains):>15.1f}s {max(drains):>5.1f}s "
            f"{statistics.median(waits):>8.1f}s {p95:>8.1f}s {done:>8.1f}s {ps:>7.0f} {peak:>9}"
        )
    base = rows["max"]
    print("\nratios against max (fixed maxReplicas):")
    for name in ("auto", "min"):
        r = rows[name]
        print(
            f"  {name}: drain/burst x{r['drain'] / base['drain']:.2f}, "
            f"all done x{r['done'] / base['done']:.2f}, pod-seconds x{r['ps'] / base['ps']:.2f}"
        )
    print(json.dumps({"rows": rows}, sort_keys=True))


if __name__ == "__main__":
    main()
