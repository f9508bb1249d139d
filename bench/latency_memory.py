"""Enqueue-to-start latency at fixed offered loads, and resident memory: Roger beside peers.

Latency: this process publishes jobs at a fixed rate, a share (25 %, 50 %) of Roger's
measured drain peak, for a few seconds; each contender writes, as a job starts, the time
since the job was made: Roger's bench callback in ``before_run`` (all five hooks and
metrics on, as in worker_throughput.py), Dramatiq's ``stamp`` actor (2 processes x 8
threads). Both see the same offered load in jobs/s, so where it is over a contender's own
peak its latency is queueing time, and that is the comparison users feel.

Memory: a contender's whole process tree (Roger's worker and its job processes, Dramatiq's
and Celery's parent and worker processes), RSS and PSS. PSS divides pages that forked
children share among them, so its sum counts the tree once; RSS counts shared pages in
every process. Idle once the contender consumes, and the peak while it drains N jobs
published as it runs.

Usage: python bench/latency_memory.py [--peak JOBS_PER_S] [--workers 64] [--jobs 20000]
Without ``--peak`` Roger's peak is measured first (median of 3 drains of a full queue).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worker_throughput as wt


# -- memory ------------------------------------------------------------------------------
def footprint(pid: int) -> tuple[float, float]:
    """RSS and PSS of ``pid``'s tree, MiB (``smaps_rollup``)."""
    rss = pss = 0
    for p in wt.process_tree(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue  # gone meanwhile
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss += int(rest.split()[0])
            elif key == "Pss":
                pss += int(rest.split()[0])
    return rss / 1024, pss / 1024


class PeakSampler:
    """The largest footprint seen while it runs (every 50 ms, in a thread)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.rss, self.pss = pid, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            rss, pss = footprint(self.pid)
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def consuming(b: wt.Broker, queue: str, timeout: float = 60) -> None:
    """Until ``queue`` has a consumer, then two seconds for the contender to settle."""
    deadline = time.monotonic() + timeout
    while b.ch.queue_declare(queue, passive=True).method.consumer_count < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no consumer on {queue} after {timeout}s")
        time.sleep(0.1)
    time.sleep(2)


def drained(b: wt.Broker, queue: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while b.count(queue) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{queue} not drained after {timeout}s")
        time.sleep(0.05)


def measure_memory(
    b: wt.Broker, proc: subprocess.Popen[bytes], queue: str, make: Any, n: int
) -> dict[str, float]:
    consuming(b, queue)
    idle_rss, idle_pss = footprint(proc.pid)
    with PeakSampler(proc.pid) as peak:
        for i in range(n):
            body, props = make(i)
            b.ch.basic_publish("", queue, body, props)
        drained(b, queue)
        time.sleep(0.5)  # the last jobs' outcomes
    time.sleep(2)
    after_rss, after_pss = footprint(proc.pid)
    return {
        "idle_rss": idle_rss,
        "idle_pss": idle_pss,
        "peak_rss": peak.rss,
        "peak_pss": peak.pss,
        "after_rss": after_rss,
        "after_pss": after_pss,
    }


@contextmanager
def roger_running(url: str, workers: int, extra: dict[str, str]) -> Iterator[tuple[Any, str]]:
    b = wt.Broker(url)
    partition = f"bench-{uuid.uuid4().hex[:6]}"
    proc = wt.start_roger(url, partition, workers, extra)
    try:
        yield proc, partition
    finally:
        wt.stop(proc)
        b.delete_partition(partition)


@contextmanager
def dramatiq_running(url: str, extra: dict[str, str]) -> Iterator[tuple[Any, str]]:
    b = wt.Broker(url)
    q = wt.declare_dramatiq_queue(b)
    proc = wt.start_dramatiq(url, q, **extra)
    try:
        yield proc, q
    finally:
        wt.stop(proc)
        b.delete(q, f"{q}.DQ", f"{q}.XQ")


@contextmanager
def celery_running(url: str) -> Iterator[tuple[Any, str]]:
    b = wt.Broker(url)
    q = f"bench-celery-{uuid.uuid4().hex[:6]}"
    b.ch.queue_declare(q, durable=True)
    proc = wt.start_celery(url, q)
    try:
        yield proc, q
    finally:
        wt.stop(proc)
        b.delete(q)


def memory_table(url: str, workers: int, n: int) -> None:
    b = wt.Broker(url)
    rows: list[tuple[str, dict[str, float]]] = []
    with roger_running(url, workers, {}) as (proc, partition):
        q = f"{partition}-default"
        rows.append(
            (wt.roger_label(workers), measure_memory(b, proc, q, wt.roger_body(partition), n))
        )
    with dramatiq_running(url, {}) as (proc, q):
        rows.append(
            ("Dramatiq 2 processes x 8 threads", measure_memory(b, proc, q, wt.dramatiq_body(q), n))
        )
    with celery_running(url) as (proc, q):
        rows.append(
            ("Celery prefork, 2 processes", measure_memory(b, proc, q, wt.celery_body(), n))
        )
    print(f"\nMemory of the whole process tree, MiB ({n} no-op jobs drained while published):\n")
    print("| contender | idle RSS | idle PSS | draining, peak RSS | peak PSS | after, RSS | PSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, m in rows:
        print(
            f"| {name} | {m['idle_rss']:.1f} | {m['idle_pss']:.1f} | {m['peak_rss']:.1f} |"
            f" {m['peak_pss']:.1f} | {m['after_rss']:.1f} | {m['after_pss']:.1f} |",
            flush=True,
        )


# -- latency -----------------------------------------------------------------------------
def dramatiq_latency(url: str, rate: float, seconds: float) -> tuple[float, float, int]:
    b = wt.Broker(url)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "latency"
        with dramatiq_running(url, {"BENCH_LATENCY_FILE": str(path)}) as (_, q):
            consuming(b, q)
            total = wt.publish_at_rate(b, q, wt.dramatiq_body(q, "stamp"), rate, seconds)
            values = wt.read_latencies(path, total)
    return (*wt.p50_p99(values), len(values))


def latency_table(url: str, peak: float, workers: int, seconds: float, rounds: int) -> None:
    print(
        f"\nEnqueue-to-start, ms, p50 / p99 (median of {rounds} rounds; jobs published for"
        f" {seconds:.0f}s at the rate shown; Roger max_workers {workers}, peak {peak:.0f}/s):\n"
    )
    print("| offered load | Roger p50 | Roger p99 | Dramatiq p50 | Dramatiq p99 |")
    print("|---|---:|---:|---:|---:|")
    for share in (0.25, 0.5):
        rate = peak * share
        ours: list[tuple[float, float, int]] = []
        theirs: list[tuple[float, float, int]] = []
        for r in range(rounds):  # alternate who goes first
            for who in ("roger", "dramatiq") if r % 2 == 0 else ("dramatiq", "roger"):
                if who == "roger":
                    ours.append(wt.bench_latency(url, rate, seconds, workers))
                else:
                    theirs.append(dramatiq_latency(url, rate, seconds))

        def med(rows: list[tuple[float, float, int]], i: int) -> str:
            return f"{statistics.median(r[i] for r in rows):.1f}"

        print(
            f"| {rate:.0f}/s ({share:.0%} of Roger's peak) | {med(ours, 0)} | {med(ours, 1)} |"
            f" {med(theirs, 0)} | {med(theirs, 1)} |",
            flush=True,
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    wt.add_amqp_url(p)
    p.add_argument("--workers", type=int, default=64, help="Roger max_workers (prefetch)")
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--peak", type=float, help="Roger's drain peak, jobs/s (else measured)")
    p.add_argument("--seconds", type=float, default=5.0, help="of publishing, per latency run")
    p.add_argument("--rounds", type=int, default=3, help="latency runs per contender and load")
    p.add_argument("--only", choices=["latency", "memory"])
    opts = p.parse_args()
    url = opts.amqp_url
    print(f"# load average {os.getloadavg()}", flush=True)
    if opts.only != "memory":
        peak = opts.peak or statistics.median(
            wt.bench_roger(url, opts.jobs, opts.workers) for _ in range(3)
        )
        latency_table(url, peak, opts.workers, opts.seconds, opts.rounds)
    if opts.only != "latency":
        memory_table(url, opts.workers, opts.jobs)
    print(f"\n# load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
