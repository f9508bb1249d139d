"""``roger buried list|show|replay|drop``: buried jobs seen and acted on (docs/admin.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from roger.cli.common import UsageError, amqp_url
from roger.core import buried as bu

EXIT_REFUSED = 4  # replay: some selected jobs were refused (replayed too often)


def add_parsers(sub: Any) -> None:
    b = sub.add_parser(
        "buried",
        help="list, show, replay or drop buried jobs",
        description="Buried jobs are read by offset from <partition>-<queue>.buried.log "
        "(nothing is consumed or reordered); see docs/admin.md.",
    )
    verbs = b.add_subparsers(dest="verb", required=True, parser_class=type(b))

    ls = verbs.add_parser("list", help="buried jobs, oldest first")
    ls.add_argument("partition")
    _filters(ls)
    ls.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="table (default) or json"
    )

    sh = verbs.add_parser("show", help="one buried job: args, stack trace, history")
    sh.add_argument("partition")
    sh.add_argument("id", help="job id (its newest burial) or burial id")
    sh.add_argument("--queue", help="the queue (default: every queue of the partition)")

    rp = verbs.add_parser("replay", help="put buried jobs back as fresh attempts")
    rp.add_argument("partition")
    _selection(rp)
    rp.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    rp.add_argument(
        "--force",
        action="store_true",
        help=f"replay jobs replayed {bu.MAX_REPLAYS} times already too",
    )

    dr = verbs.add_parser("drop", help="remove buried jobs for good")
    dr.add_argument("partition")
    _selection(dr)
    dr.add_argument("--dry-run", action="store_true", help="say what would be dropped")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", help="one queue (default: every queue of the partition)")
    p.add_argument("--job", metavar="NAME", help="only jobs named module:function")
    p.add_argument("--error", metavar="KIND", help="only jobs whose last error is KIND")


def _selection(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", dest="ids", metavar="ID", help="a job id")
    which.add_argument("--all", action="store_true", dest="all_jobs", help="every buried job")
    _filters(p)


def _table(jobs: Sequence[bu.BuriedJob]) -> None:
    print(f"{'ID':<34} {'JOB':<28} {'ERROR':<20} {'ATTEMPTS':>8}  {'BURIED AT':<25} MESSAGE")
    for j in jobs:
        s = j.summary()
        print(
            f"{j.id[:34]:<34} {j.name[:28]:<28} {(j.error_kind or '-')[:20]:<20}"
            f" {j.attempts:>8}  {s['buried_at'] or '-':<25} {(j.error_message or '')[:60]}"
        )
    print(f"{len(jobs)} buried job(s)")


def _buried(opts: argparse.Namespace) -> int:
    from roger.broker.client import Client

    with Client(amqp_url(opts)) as client:
        return _VERBS[opts.verb](client, opts)


def _list(client: Any, opts: argparse.Namespace) -> int:
    jobs = client.buried(opts.partition, queue=opts.queue, job=opts.job, error=opts.error)
    if opts.output == "json":
        print(bu.as_json(jobs))
    else:
        _table(jobs)
    return 0


def _show(client: Any, opts: argparse.Namespace) -> int:
    try:
        job = client.buried_job(opts.partition, opts.id, queue=opts.queue)
    except KeyError:
        raise UsageError(f"no buried job {opts.id} in {opts.partition}") from None
    print(json.dumps(job.detail(), indent=2, default=str))
    return 0


def _replay(client: Any, opts: argparse.Namespace) -> int:
    report = client.replay_buried(
        opts.partition,
        ids=opts.ids or (),
        all_jobs=opts.all_jobs,
        queue=opts.queue,
        job=opts.job,
        error=opts.error,
        dry_run=opts.dry_run,
        force=opts.force,
    )
    verb = "would replay" if opts.dry_run else "replayed"
    for j in report.replayed:
        print(f"{verb} {j.id} ({j.name})")
    for j, why in report.refused:
        print(f"refused {j.id} ({j.name}): {why}", file=sys.stderr)
    if report.recovered:
        print(f"finished {report.recovered} move(s) an interrupted replay had left")
    print(f"{len(report.replayed)} {verb}, {len(report.refused)} refused")
    return EXIT_REFUSED if report.refused else 0


def _drop(client: Any, opts: argparse.Namespace) -> int:
    if opts.dry_run:
        chosen = bu.select(
            client.buried(opts.partition, queue=opts.queue, job=opts.job, error=opts.error),
            bu.Selection(tuple(opts.ids or ()), None, None, None, opts.all_jobs),
        )
        for j in chosen:
            print(f"would drop {j.id} ({j.name})")
        print(f"{len(chosen)} would be dropped")
        return 0
    dropped = client.drop_buried(
        opts.partition,
        ids=opts.ids or (),
        all_jobs=opts.all_jobs,
        queue=opts.queue,
        job=opts.job,
        error=opts.error,
    )
    for j in dropped:
        print(f"dropped {j.id} ({j.name})")
    print(f"{len(dropped)} dropped")
    return 0


_VERBS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "list": _list,
    "show": _show,
    "replay": _replay,
    "drop": _drop,
}

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"buried": _buried}
