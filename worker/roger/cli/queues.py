"""``roger jobs``, ``roger purge`` and ``roger info`` without a partition (docs/admin.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from roger.cli.common import UsageError, amqp_url

EXIT_DECLINED = 5  # purge: not confirmed


def add_parsers(sub: Any) -> None:
    j = sub.add_parser(
        "jobs",
        help="queued jobs (left in place) and the jobs running on each worker",
        description="Queued jobs are taken without an ack and returned at once: each one "
        "listed counts as a delivery (x-delivery-count); see docs/admin.md.",
    )
    j.add_argument("partition")
    j.add_argument("--queue", help="one queue (default: every queue of the partition)")
    j.add_argument("--limit", type=int, default=20, help="queued jobs per queue (default 20)")
    j.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("purge", help="remove every queued job of a queue (asks first)")
    p.add_argument("partition")
    p.add_argument("--queue", required=True, help="the queue (its retry queues too)")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p.add_argument("--buried", action="store_true", help="drop its buried jobs too")


def _jobs(opts: argparse.Namespace) -> int:
    if opts.limit < 1:
        raise UsageError("--limit must be >= 1")
    from roger.broker.client import Client

    with Client(amqp_url(opts)) as client:
        queued = client.queued(opts.partition, opts.queue, opts.limit)
        workers = client.info(opts.partition, (opts.queue,) if opts.queue else None).workers
    if opts.json:
        print(json.dumps({"queued": queued, "workers": workers}, indent=2, default=str))
        return 0
    for queue, rows in queued.items():
        print(f"queue {queue}: {len(rows)} shown (head first, limit {opts.limit})")
        for r in rows:
            print(
                f"  {r['id']} {r['job'] or '(invalid: ' + str(r.get('invalid')) + ')'}"
                f" retry={r.get('retry_count', '-')} deliveries={r.get('deliveries', '-')}"
            )
    print(f"workers: {len(workers)}")
    for w in workers:
        print(f"  {w['worker']}: {len(w['running'])} running")
        for r in w["running"]:
            print(f"    {r['id']} {r['name']} ({r['queue']})")
    return 0


def _purge(opts: argparse.Namespace) -> int:
    from roger.broker.client import Client

    with Client(amqp_url(opts)) as client:
        counts = client.purge_counts(opts.partition, opts.queue)
        total = sum(counts.values())
        what = f"{total} queued job(s) of {opts.partition}-{opts.queue}"
        if opts.buried:
            buried = len(client.buried(opts.partition, queue=opts.queue))
            what += f" and {buried} buried job(s)"
        if not opts.yes:
            try:
                answer = input(f"purge {what}? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("not purged", file=sys.stderr)
                return EXIT_DECLINED
        purged = client.purge(opts.partition, opts.queue, buried=opts.buried)
    for name, n in purged.items():
        print(f"{name}: {n} removed")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"jobs": _jobs, "purge": _purge}


def print_partitions(opts: argparse.Namespace) -> int:
    """``roger info`` without a partition: every partition the broker holds."""
    from roger.broker.client import Client

    with Client(amqp_url(opts)) as client:
        try:
            found = client.partitions(opts.management_url)
        except OSError as exc:
            raise UsageError(
                f"cannot read the management API ({exc}); pass --management-url"
            ) from None
    if opts.json:
        print(json.dumps([p.to_dict() for p in found], indent=2))
        return 0
    print(
        f"{'PARTITION':<24} {'QUEUE':<16} {'READY':>7} {'UNACKED':>7} {'CONSUMERS':>9}"
        f" {'RETRYING':>8} {'BURIED':>7} {'INVALID':>7}"
    )
    for p in found:
        if not p.queues:
            print(f"{p.partition:<24} (no queues)")
        for q in p.queues.values():
            print(
                f"{p.partition:<24} {q.queue:<16} {q.ready:>7} {q.unacked:>7}"
                f" {q.consumers:>9} {q.retrying:>8} {q.buried:>7} {q.invalid:>7}"
            )
    return 0
