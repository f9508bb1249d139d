"""Paired A/B rounds of the Roger worker's drain rate (and bare pika as the ceiling).

Each variant is a name plus extra environment for the ``roger worker`` process (e.g. a
PYTHONPATH that puts another tree's ``worker/`` first; ``BENCH_JOB_PROCESSES=N`` is not
passed on but sets the worker's ``--job-processes``). Every round runs each variant once,
and the order alternates (A B, B A, A B, ...: ABBA), so neither a change in the machine's
load nor the position in a round favours one variant. Prints each round, the median and
spread (min..max) per variant, and, paired per round, each variant's ratio to the first
one: its median and spread are the verdict (a difference inside the spread is noise).
With ``--fresh-vhost`` the run uses a vhost of its own, deleted at the end: leftover
queues of other runs on a shared broker neither slow it nor are touched by it. With
``--cpu`` each round also prints the CPU a job of the broker and of the consumer's process
tree over the same window (from ``/proc``): what decides the ratios on a machine whose
cores they share (bench/RESULTS.md, "acks held for a gap to close").

Peers: ``--pika`` (the ceiling, a tuned bare consumer), ``--pika-roger-messages`` (the
same consumer draining Roger's own job messages) and ``--dramatiq``. Besides each
variant's ratio to each peer, the peers' ratios to each other are printed: a goal "k x a
peer" above the ceiling's own ratio to that peer is out of reach for any consumer.

Usage: python bench/ab_worker.py --rounds 10 --jobs 20000 --fresh-vhost \\
    --variant base=PYTHONPATH=/old/worker:bench:. --variant new= [--pika]
    [--pika-roger-messages] [--dramatiq]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worker_throughput as wt


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.partition("=")
    extra: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        extra[k] = v
    return name, extra


def round_order(names: list[str], r: int) -> list[str]:
    """Round ``r``'s order (0-based): as given on even rounds, reversed on odd ones."""
    return list(names) if r % 2 == 0 else list(reversed(names))


def ratio_line(name: str, peer: str, mine: list[float], theirs: list[float]) -> str:
    ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
    return (
        f"- {name} / {peer}, paired per round: median {statistics.median(ratios):.3f},"
        f" spread {min(ratios):.2f}..{max(ratios):.2f}"
        f" ({' '.join(f'{x:.2f}' for x in ratios)})"
    )


class CpuWindow:
    """CPU seconds of the broker and of a consumer's process tree between a drain's two
    marks (``worker_throughput.OnMark``), as microseconds a job of that window."""

    def __init__(self, url: str, jobs: int) -> None:
        self.broker = wt._broker_pid(url)
        first, last = wt.measured_window(jobs)
        self.jobs = last - first
        self.marks: list[tuple[float, float]] = []

    def mark(self, pid: int) -> None:
        self.marks.append((wt.cpu_seconds(self.broker), tree_cpu_seconds(pid)))

    def per_job(self) -> tuple[float, float]:
        (b0, c0), (b1, c1) = self.marks[0], self.marks[-1]
        self.marks.clear()
        return (b1 - b0) / self.jobs * 1e6, (c1 - c0) / self.jobs * 1e6


def tree_cpu_seconds(root: int) -> float:
    """``root`` and its descendants (a worker's job processes, Dramatiq's forks)."""
    total = 0.0
    for pid in wt.process_tree(root):
        try:
            total += wt.cpu_seconds(pid)
        except (OSError, IndexError):  # gone meanwhile
            continue
    return total


def run(opts: argparse.Namespace, url: str) -> None:
    variants = dict(parse_variant(v) for v in opts.variant)
    peers = (
        (["pika"] if opts.pika else [])
        + (["pika-roger-msgs"] if opts.pika_roger_messages else [])
        + (["dramatiq"] if opts.dramatiq else [])
    )
    names = [*variants, *peers]
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    window = CpuWindow(url, opts.jobs) if opts.cpu else None
    mark = window.mark if window is not None else None
    print(f"# {opts.jobs} jobs, {opts.workers} job slots, load {os.getloadavg()}", flush=True)
    for r in range(opts.rounds):
        for name in round_order(names, r):
            if name == "pika":
                rate = wt.bench_pika(url, opts.jobs, opts.workers, "quorum", on_mark=mark)
            elif name == "pika-roger-msgs":
                bodies = wt.roger_body("bench-pika")
                rate = wt.bench_pika(
                    url, opts.jobs, opts.workers, "quorum", on_mark=mark, bodies=bodies
                )
            elif name == "dramatiq":
                rate = wt.bench_dramatiq(url, opts.jobs, on_mark=mark)
            else:
                rate = wt.bench_roger(
                    url, opts.jobs, opts.workers, extra_env=variants[name], on_mark=mark
                )
            rates[name].append(rate)
            line = f"round {r + 1} {name:<15} {rate:7.0f}/s"
            if window is not None:
                broker_us, consumer_us = window.per_job()
                cpu[name].append((broker_us, consumer_us))
                line += f" (CPU a job: broker {broker_us:.1f} us, consumer {consumer_us:.1f} us)"
            print(line, flush=True)
        print(f"  load {os.getloadavg()}", flush=True)
    print()
    print("| variant | median jobs/s | min..max | rounds |")
    print("|---|---:|---:|---|")
    for name in names:
        v = rates[name]
        print(
            f"| {name} | {statistics.median(v):.0f} | {min(v):.0f}..{max(v):.0f} |"
            f" {' '.join(f'{x:.0f}' for x in v)} |"
        )
    if window is not None:
        print()
        print("| contender | broker us/job, median (min..max) | consumer us/job | total |")
        print("|---|---|---|---:|")
        for name in names:
            b = [x[0] for x in cpu[name]]
            c = [x[1] for x in cpu[name]]
            print(
                f"| {name} | {statistics.median(b):.1f} ({min(b):.1f}..{max(b):.1f}) |"
                f" {statistics.median(c):.1f} ({min(c):.1f}..{max(c):.1f}) |"
                f" {statistics.median(x + y for x, y in cpu[name]):.1f} |"
            )
    first = next(iter(variants), None)
    for name in variants:  # paired per round: both saw the same machine phase
        if first is not None and name != first:
            print(ratio_line(name, first, rates[name], rates[first]))
        for peer in peers:
            print(ratio_line(name, peer, rates[name], rates[peer]))
    # The peers against each other: a goal "k x Dramatiq" above the ceiling's own ratio to
    # Dramatiq is out of reach for any consumer with that prefetch, not only for Roger.
    for i, peer in enumerate(peers):
        for other in peers[i + 1 :]:
            print(ratio_line(peer, other, rates[peer], rates[other]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    wt.add_amqp_url(p)
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=K=V,K=V")
    p.add_argument("--pika", action="store_true", help="also bare pika, same prefetch")
    p.add_argument(
        "--pika-roger-messages",
        action="store_true",
        help="also bare pika draining Roger's own job messages (same bodies and properties)",
    )
    p.add_argument("--dramatiq", action="store_true", help="also Dramatiq 2 processes x 8")
    p.add_argument(
        "--fresh-vhost", action="store_true", help="run in a new vhost, deleted at the end"
    )
    p.add_argument(
        "--cpu", action="store_true", help="also the broker's and the consumer's CPU a job"
    )
    p.add_argument(
        "--broker-cpus",
        help="CPU list (taskset syntax, e.g. 1) for the broker alone; everything this run"
        " starts gets the other CPUs. Restored at the end.",
    )
    opts = p.parse_args()
    # A stop (SIGTERM, as from a background shell) unwinds: the worker and the vhost go too.
    signal.signal(signal.SIGTERM, lambda _s, _f: sys.exit(143))
    with wt.broker_on_cpus(opts.amqp_url, opts.broker_cpus):
        if opts.fresh_vhost:
            with wt.fresh_vhost(opts.amqp_url) as url:
                run(opts, url)
        else:
            run(opts, opts.amqp_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
