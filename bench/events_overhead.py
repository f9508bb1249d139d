"""What Kubernetes Events cost the worker: throughput with Events on vs off, same run.

Two parts:

1. ``observer``: the Events observer alone, as the worker's event loop sees it: the cost of
   ``observe()`` per call next to a no-op observer, and the throughput of a simulated event
   loop (fixed CPU work per job, two hooks per job) with the observer's background threads
   running and writing to the local cluster (or a fake API when no cluster is up).
2. ``worker``: real ``roger worker`` subprocesses draining N pre-enqueued no-op jobs from
   the local RabbitMQ, Events off and on, rounds interleaved in the same run; throughput
   from the worker's own ``roger_lifecycle_events_total``. Runs only when the worker CLI
   is there.

Usage: .venv/bin/python bench/events_overhead.py [observer|worker|all] [--jobs N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "worker"), str(ROOT)]

from prometheus_client import CollectorRegistry  # noqa: E402

from roger.core.lifecycle import LifecycleEvent  # noqa: E402
from roger.kube.metrics import kube_event_metrics  # noqa: E402
from roger.kube.observer import KubeEventsObserver  # noqa: E402
from roger_devtools.ports import free_port  # noqa: E402

KUBECONFIG = ROOT / ".cluster" / "kubeconfig"
KUBECTL = ROOT / ".cluster" / "bin" / "kubectl"
AMQP_URL = os.environ.get("ROGER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
# Seconds between the last enqueue and the worker's start, in both modes. (Before, only
# the Events-on rounds paused here, for kubectl, and so started on a quieter broker.)
SETTLE = 2.0


class NoopObserver:
    def observe(self, event: LifecycleEvent) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


class FakeApi:
    def get_partition(self, namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"uid": "fake"}}

    def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.002)
        return body

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.002)
        return patch

    def close(self) -> None:
        pass


def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(KUBECONFIG), *args],
        input=stdin,
        text=True,
        capture_output=True,
    )


def cluster_up() -> bool:
    return KUBECONFIG.exists() and kubectl("get", "--raw", "/readyz").returncode == 0


def prepare_partition(namespace: str, name: str) -> None:
    """A namespace and a Partition object for the Events to regard (CRD from crds/)."""
    kubectl("create", "namespace", namespace)
    if kubectl("get", "crd", "partitions.roger.dev").returncode != 0:
        kubectl("apply", "-f", str(ROOT / "crds" / "partitions.roger.dev.yaml"))
        kubectl("wait", "--for=condition=Established", "crd/partitions.roger.dev")
    obj = {
        "apiVersion": "roger.dev/v1alpha1",
        "kind": "Partition",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "amqp": {"secretRef": {"name": "absent"}},
            "worker": {"image": "roger-worker:bench", "replicas": 0},
            "jobs": ["tests.jobs.basic"],
            "queues": [{"name": "default", "maxWorkers": 1}],
        },
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(obj))


def events(i: int) -> tuple[LifecycleEvent, LifecycleEvent]:
    job = "tests.jobs.basic.noop" if i % 2 else "tests.jobs.basic.ok"
    start = LifecycleEvent("before_run", "bench", "default", f"id-{i}", job, 0, time.time())
    done = LifecycleEvent(
        "after_run", "bench", "default", f"id-{i}", job, 0, time.time(), None, 0.001
    )
    return start, done


def _work(units: int) -> int:
    x = 0
    for k in range(units):
        x += k * k
    return x


def simulated_loop(observer: Any, jobs: int, work_units: int) -> float:
    """Jobs per second of a loop doing ``work_units`` of CPU per job plus two hooks."""
    t0 = time.perf_counter()
    for i in range(jobs):
        _work(work_units)
        a, b = events(i)
        observer.observe(a)
        observer.observe(b)
    return jobs / (time.perf_counter() - t0)


def make_observer(namespace: str, name: str) -> tuple[KubeEventsObserver, str]:
    if cluster_up():
        from roger.kube.client import KubeEventsApi

        prepare_partition(namespace, name)
        api: Any = KubeEventsApi.from_environment(str(KUBECONFIG))
        where = "local cluster"
    else:
        api, where = FakeApi(), "fake API (no cluster)"
    obs = KubeEventsObserver(
        api,
        namespace=namespace,
        name=name,
        partition=name,
        instance="bench",
        metrics=kube_event_metrics(CollectorRegistry()),
    )
    return obs, where


def bench_observer(results: dict[str, Any]) -> None:
    namespace = f"bench-events-{uuid.uuid4().hex[:6]}"
    obs, where = make_observer(namespace, "bench")
    noop = NoopObserver()
    try:
        # observe() per call, in batches the bounded queue holds (then let it drain).
        batch = [e for i in range(5_000) for e in events(i)]
        per_call = {}
        for label, o in (("noop", noop), ("events", obs)):
            best = float("inf")
            for _ in range(10):
                t0 = time.perf_counter()
                for e in batch:
                    o.observe(e)
                best = min(best, (time.perf_counter() - t0) / len(batch))
                time.sleep(0.1)
            per_call[label] = best * 1e6
        # Simulated event loops, Events off/on interleaved: per-job work of ~200 µs (a fast
        # real worker, ~5k jobs/s) and ~16 µs (a stress rate far above any real worker).
        loops: dict[str, dict[str, list[float]]] = {}
        for name, units, jobs in (("5k_jobs_per_s", 4000, 10_000), ("60k_jobs_per_s", 300, 60_000)):
            rates = loops[name] = {"off": [], "on": []}
            for _ in range(5):
                rates["off"].append(simulated_loop(noop, jobs, units))
                rates["on"].append(simulated_loop(obs, jobs, units))
                time.sleep(0.2)
    finally:
        obs.close(10.0)
        if where == "local cluster":
            kubectl("delete", "namespace", namespace, "--wait=false")
    results["observer"] = {
        "api": where,
        "observe_us_per_call": round(per_call["events"], 3),
        "noop_us_per_call": round(per_call["noop"], 3),
        "observed": obs.observed,
        "emitted": obs.emitted,
        "dropped": obs.dropped,
        "writes": obs.writes,
    }
    for name, rates in loops.items():
        off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
        results["observer"][f"loop_{name}"] = {
            "jobs_per_s_off": round(off),
            "jobs_per_s_on": round(on),
            "slowdown_pct": round((off - on) / off * 100, 2),
        }


# ---- the full worker -----------------------------------------------------------------------


def worker_available() -> bool:
    roger = shutil.which("roger", path=str(ROOT / ".venv" / "bin"))
    if not roger:
        return False
    probe = subprocess.run([roger, "worker", "--help"], capture_output=True, text=True)
    return probe.returncode == 0 and "--kube-namespace" in probe.stdout


def _lifecycle_total(port: int, hook: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith("roger_lifecycle_events_total{") and f'hook="{hook}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def worker_round(jobs: int, events_on: bool, namespace: str, concurrency: int) -> float:
    import roger

    partition = f"bench-{uuid.uuid4().hex[:8]}"
    if events_on:  # before enqueueing, so that both modes start their worker alike
        prepare_partition(namespace, partition)
    with roger.Client(AMQP_URL) as client:
        for i in range(jobs):
            client.enqueue(partition, "tests.jobs.basic:noop", {"n": i})
    time.sleep(SETTLE)  # let the broker finish with the publishes, in both modes
    port = free_port()
    cmd = [
        str(ROOT / ".venv" / "bin" / "roger"),
        "worker",
        "--partition",
        partition,
        "--queue",
        f"default={concurrency}",
        "--jobs",
        "tests.jobs.basic",
        "--metrics-port",
        str(port),
    ]
    env = {**os.environ, "ROGER_AMQP_URL": AMQP_URL, "KUBECONFIG": str(KUBECONFIG)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if events_on:
        cmd += ["--kube-namespace", namespace]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=ROOT)
    try:
        started = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = _lifecycle_total(port, "after_run")
            if started is None and _lifecycle_total(port, "before_run") > 0:
                started = time.monotonic()
            if done >= jobs:
                break
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"worker exited: {log.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError("worker did not finish in time")
        assert started is not None
        return jobs / (time.monotonic() - started)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_worker(results: dict[str, Any], jobs: int, rounds: int, concurrency: int) -> None:
    if not worker_available():
        results["worker"] = "skipped: the roger worker CLI (with --kube-namespace) is not there"
        return
    if not cluster_up():
        results["worker"] = "skipped: the local cluster is not up (make cluster-up)"
        return
    namespace = f"bench-events-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        for r in range(rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for mode in order:
                rates[mode].append(worker_round(jobs, mode == "on", namespace, concurrency))
        listed = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false")
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    # Each round ran off and on back to back: the per-round difference cancels slow drifts
    # of the machine's load that the two medians do not.
    paired = [(a - b) / a * 100 for a, b in zip(rates["off"], rates["on"], strict=True)]

    def spread(xs: list[float]) -> dict[str, float]:
        q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
        return {
            "min": round(min(xs)),
            "q1": round(q[0]),
            "median": round(statistics.median(xs)),
            "q3": round(q[2]),
            "max": round(max(xs)),
            "cv_pct": round(statistics.pstdev(xs) / statistics.mean(xs) * 100, 1),
        }

    results["worker"] = {
        "jobs_per_round": jobs,
        "rounds": rounds,
        "concurrency": concurrency,
        "jobs_per_s_off": [round(x) for x in rates["off"]],
        "jobs_per_s_on": [round(x) for x in rates["on"]],
        "spread_off": spread(rates["off"]),
        "spread_on": spread(rates["on"]),
        "median_off": round(off),
        "median_on": round(on),
        "difference_pct": round((off - on) / off * 100, 2),
        "paired_difference_pct": [round(d, 1) for d in paired],
        "paired_difference_median_pct": round(statistics.median(paired), 2),
        "load_average_before_after": [load_before, [round(x, 2) for x in os.getloadavg()]],
        "event_objects": len(listed["items"]),
        "event_count_sum": sum(e.get("count") or 0 for e in listed["items"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", default="all", choices=["observer", "worker", "all"])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.part in ("observer", "all"):
        bench_observer(results)
    if args.part in ("worker", "all"):
        bench_worker(results, args.jobs, args.rounds, args.concurrency)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
