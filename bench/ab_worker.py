"""Interleaved A/B rounds of the Roger worker's drain rate (and bare pika as the ceiling).

Each variant is a name plus extra environment for the ``roger worker`` process (e.g. a
PYTHONPATH that puts another tree's ``worker/`` first). Rounds are interleaved (A B C, A B
C, ...) so a change in the machine's load hits every variant alike; prints each round, then
the median and the spread (min..max) per variant, and the load average.

Usage: python bench/ab_worker.py --rounds 3 --jobs 20000 \\
    --variant off= --variant on=ROGER_X=1 [--pika] [--dramatiq]
"""

from __future__ import annotations

import argparse
import os
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    wt.add_amqp_url(p)
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=K=V,K=V")
    p.add_argument("--pika", action="store_true", help="also bare pika, same prefetch")
    p.add_argument("--dramatiq", action="store_true", help="also Dramatiq 2 processes x 8")
    opts = p.parse_args()
    variants = [parse_variant(v) for v in opts.variant]
    names = [n for n, _ in variants] + (["pika"] if opts.pika else [])
    names += ["dramatiq"] if opts.dramatiq else []
    rates: dict[str, list[float]] = {n: [] for n in names}
    print(f"# {opts.jobs} jobs, {opts.workers} job processes, load {os.getloadavg()}")
    for r in range(opts.rounds):
        for name, extra in variants:
            rates[name].append(
                wt.bench_roger(opts.amqp_url, opts.jobs, opts.workers, extra_env=extra)
            )
            print(f"round {r + 1} {name:<12} {rates[name][-1]:7.0f}/s", flush=True)
        if opts.pika:
            rates["pika"].append(wt.bench_pika(opts.amqp_url, opts.jobs, opts.workers, "quorum"))
            print(f"round {r + 1} {'pika':<12} {rates['pika'][-1]:7.0f}/s", flush=True)
        if opts.dramatiq:
            rates["dramatiq"].append(wt.bench_dramatiq(opts.amqp_url, opts.jobs))
            print(f"round {r + 1} {'dramatiq':<12} {rates['dramatiq'][-1]:7.0f}/s", flush=True)
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
    for name, _ in variants:  # paired per round: both saw the same machine phase
        for peer in ("pika", "dramatiq"):
            if peer in rates:
                ratios = [a / b for a, b in zip(rates[name], rates[peer], strict=True)]
                print(
                    f"- {name} / {peer}, per round: median {statistics.median(ratios):.2f}"
                    f" ({' '.join(f'{x:.2f}' for x in ratios)})"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
