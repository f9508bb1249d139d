"""``roger enqueue``: one job (``JOB_NAME [ARGS_JSON]``, ``--delay``/``--at``) or every job
of a JSON Lines file (``--file``), confirmed as one pipeline.

Exit codes: 0 enqueued, 3 (``EXIT_DUPLICATE``) a job refused as a duplicate (its queue_key
is held), 1 a job that failed otherwise, 2 bad input (nothing enqueued from a bad file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from roger.cli.common import EXIT_DUPLICATE, UsageError, amqp_url


def add_parsers(sub: Any) -> None:
    e = sub.add_parser(
        "enqueue",
        help="enqueue a job and print its id",
        description="Enqueue one job (JOB_NAME [ARGS_JSON]) or, with --file, every job of a "
        'JSON Lines file, one {"job": "module:function", "args": ..., "queue": ..., "id": ...} '
        "per line, confirmed as one pipeline; prints one JSON result per job. Exit 3 when a "
        "job was refused as a duplicate (its queue_key is held), 1 when one failed otherwise.",
    )
    e.add_argument("partition")
    e.add_argument("job", nargs="?", metavar="JOB_NAME", help="module:function")
    e.add_argument("args", nargs="?", default=None, metavar="ARGS_JSON")
    e.add_argument("--queue", help="the queue (default: the job's own, else 'default')")
    e.add_argument("--id", dest="job_id", metavar="ID", help="the job's id (default: a new UUID)")
    e.add_argument("--file", metavar="JOBS_JSONL", help="jobs to enqueue, one per line; - is stdin")
    when = e.add_mutually_exclusive_group()
    when.add_argument(
        "--delay",
        type=float,
        metavar="SECONDS",
        help="start the job this many seconds from now (up to 90 days; held in the broker)",
    )
    when.add_argument(
        "--at",
        metavar="TIME",
        help="start the job at TIME, ISO 8601 with an offset or Z (2026-12-01T09:00:00+01:00)",
    )


def parse_jobs_jsonl(lines: Iterable[str], default_queue: str | None) -> list[tuple[Any, ...]]:
    """``(job, args, queue)`` of each non-blank line; the first bad line is a UsageError
    naming it, so that nothing is enqueued from a file with a mistake in it."""
    jobs: list[tuple[Any, ...]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"line {number}: not JSON: {exc}") from None
        if not isinstance(item, dict) or not isinstance(item.get("job"), str):
            raise UsageError(f'line {number}: expected {{"job": "module:function", "args": ...}}')
        unknown = set(item) - {"job", "args", "queue", "id"}
        if unknown:
            raise UsageError(f"line {number}: unknown field(s) {', '.join(sorted(unknown))}")
        queue = item.get("queue", default_queue)
        if queue is not None and not isinstance(queue, str):
            raise UsageError(f"line {number}: queue must be a string")
        job_id = item.get("id")
        if job_id is not None and not isinstance(job_id, str):
            raise UsageError(f"line {number}: id must be a string")
        jobs.append((item["job"], item.get("args"), queue, job_id))
    return jobs


def _enqueue_file(opts: argparse.Namespace, url: str) -> int:
    if opts.job is not None:
        raise UsageError("give either JOB_NAME or --file, not both")
    if opts.job_id is not None:
        raise UsageError('--id is for one job; in a file, give each line its "id"')
    try:
        if opts.file == "-":
            jobs = parse_jobs_jsonl(sys.stdin, opts.queue)
        else:
            with open(opts.file, encoding="utf-8") as fh:
                jobs = parse_jobs_jsonl(fh, opts.queue)
    except OSError as exc:
        raise UsageError(f"cannot read {opts.file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{opts.file} is not UTF-8: {exc}") from None
    from roger.broker.client import Client, EnqueueError

    try:
        with Client(url) as client:
            results = client.enqueue_many(opts.partition, jobs)  # type: ignore[arg-type]
    except EnqueueError as exc:
        raise UsageError(str(exc)) from None
    for r in results:
        print(json.dumps({k: v for k, v in asdict(r).items() if v is not None}))
    refused = [r for r in results if not r.ok]
    if refused:
        print(f"roger: {len(refused)} of {len(results)} jobs not enqueued", file=sys.stderr)
    if any(r.status == "error" for r in refused):
        return 1
    return EXIT_DUPLICATE if refused else 0


def _enqueue(opts: argparse.Namespace) -> int:
    url = amqp_url(opts)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the job's module gives its queue and keys
    if opts.file is not None:
        if opts.delay is not None or opts.at is not None:
            raise UsageError("--delay and --at are for one job, not with --file")
        return _enqueue_file(opts, url)
    if opts.job is None:
        raise UsageError("give JOB_NAME (or --file JOBS_JSONL)")
    try:
        args = json.loads(opts.args if opts.args is not None else "null")
    except ValueError as exc:
        raise UsageError(f"ARGS_JSON is not JSON: {exc}") from None
    from roger.broker.client import Client, EnqueueError
    from roger.broker.state_client import DuplicateJob
    from roger.core.delay import InvalidDelay, parse_at

    try:
        at = parse_at(opts.at) if opts.at is not None else None
    except InvalidDelay as exc:
        raise UsageError(str(exc)) from None
    try:
        with Client(url) as client:
            job_id = client.enqueue(
                opts.partition,
                opts.job,
                args,
                queue=opts.queue,
                id=opts.job_id,
                delay=opts.delay,
                at=at,
            )
            print(job_id)
    except EnqueueError as exc:
        raise UsageError(str(exc)) from None
    except DuplicateJob as exc:
        print(f"roger: duplicate: {exc}", file=sys.stderr)
        return EXIT_DUPLICATE
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"enqueue": _enqueue}
