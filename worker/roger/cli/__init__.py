"""The ``roger`` command: its global flags, ``info``, ``cancel``, ``pause`` and ``resume``;
the other verbs each have a module: ``worker`` (``roger.cli.worker``), ``enqueue`` (one job
or a JSON Lines file, ``roger.cli.enqueue``), ``buried`` (``roger.cli.admin``), ``jobs``
and ``purge`` (``roger.cli.queues``).

Bad input never shows a traceback: one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from roger.cli import admin, enqueue, queues, worker
from roger.cli.common import EXIT_USAGE, UsageError, _Parser, amqp_url
from roger.core.config import ConfigError, parse_retry_levels
from roger.core.naming import InvalidName
from roger.logs import LOG_FORMATS, LOG_LEVEL_NAMES, configure_logging
from roger.version import package_version


def _parser(prog: str = "roger") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Roger: RabbitMQ-backed multi-tenant jobs")
    p.add_argument("--version", action="version", version=f"roger {package_version()}")
    p.add_argument(
        "--amqp-url",
        default=None,
        help="broker URL, or several separated by commas (failover order); "
        "default: $ROGER_AMQP_URL",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get("ROGER_LOG_LEVEL", "INFO"),
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVEL_NAMES)}, in any case (default: $ROGER_LOG_LEVEL or INFO)",
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("ROGER_LOG_FORMAT", "text"),
        help="text, or json: one object per line (default: $ROGER_LOG_FORMAT or text)",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    worker.add_parsers(sub)
    enqueue.add_parsers(sub)
    for name, what in (
        ("pause", "stop consuming QUEUE on every worker (persisted)"),
        ("resume", "consume a paused QUEUE again"),
    ):
        s = sub.add_parser(name, help=what)
        s.add_argument("partition")
        s.add_argument("queue")
    c = sub.add_parser("cancel", help="cancel a job: skipped if queued, killed if running")
    c.add_argument("partition")
    c.add_argument("job_id")

    admin.add_parsers(sub)
    queues.add_parsers(sub)

    i = sub.add_parser("info", help="queue statistics of a partition; without one, every partition")
    i.add_argument("partition", nargs="?")
    i.add_argument(
        "--management-url",
        metavar="URL",
        help="without a partition: the management API (default: the broker's host, "
        "port 15672, /api, with the AMQP URL's credentials)",
    )
    i.add_argument(
        "--queue",
        action="append",
        default=[],
        help="with a partition: this queue only (repeatable; default: the queues its "
        "workers report, else 'default'; kubectl roger: the Partition's queues)",
    )
    i.add_argument(
        "--retry-levels",
        metavar="1,3,5",
        help="with a partition: the retry levels whose queues are counted (default: the "
        "ones its workers report, else the defaults)",
    )
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _state_command(opts: argparse.Namespace) -> int:
    """``cancel``, ``pause`` and ``resume``: one confirmed control event each."""
    url = amqp_url(opts)
    from roger.broker.client import Client

    with Client(url) as client:
        if opts.command == "cancel":
            client.cancel(opts.partition, opts.job_id)
            print(f"cancel of {opts.job_id} published")
        elif opts.command == "pause":
            client.pause(opts.partition, opts.queue)
            print(f"{opts.partition}-{opts.queue} paused")
        else:
            client.resume(opts.partition, opts.queue)
            print(f"{opts.partition}-{opts.queue} resumed")
    return 0


def _info(opts: argparse.Namespace) -> int:
    if opts.partition is None:
        return queues.print_partitions(opts)
    url = amqp_url(opts)
    # left out: learned from the partition's workers (Client.info), else the defaults
    levels = parse_retry_levels(opts.retry_levels) if opts.retry_levels else None
    from roger.broker.client import Client

    with Client(url) as client:
        info = client.info(opts.partition, tuple(opts.queue) or None, levels)
    if opts.json:
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    print(
        f"{'QUEUE':<20} {'READY':>8} {'CONSUMERS':>9} {'RETRYING':>8} {'BURIED':>7} {'INVALID':>7}"
        f" {'PAUSED':>6}"
    )
    for q in info.queues.values():
        if not q.exists:
            print(f"{q.queue:<20} (not declared)")
            continue
        print(
            f"{q.queue:<20} {q.messages:>8} {q.consumers:>9} {q.retrying:>8} {q.buried:>7}"
            f" {q.invalid:>7} {'yes' if q.paused else 'no':>6}"
        )
    print(f"\npaused queues: {', '.join(info.paused) or 'none'}")
    print(f"workers: {len(info.workers)}")
    for w in info.workers:
        print(f"  {w['worker']}: {len(w['running'])} running")
        for r in w["running"]:
            key = f" execution_key={r['execution_key']}" if r["execution_key"] else ""
            print(f"    {r['id']} {r['name']} ({r['queue']}){key}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(_parser().parse_args(argv))


def run(opts: argparse.Namespace, connect_hint: str = "") -> int:
    """Run parsed ``roger`` arguments (``kubectl roger`` fills in the broker and partition;
    ``connect_hint`` is said when the broker cannot be reached)."""
    try:  # the defaults come from the environment, where argparse checks nothing
        configure_logging(str(opts.log_level), opts.log_format)
    except ValueError as exc:
        print(f"roger: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # we log what matters
    from pika.exceptions import AMQPConnectionError

    commands = {
        "info": _info,
        "cancel": _state_command,
        "pause": _state_command,
        "resume": _state_command,
        **worker.COMMANDS,
        **enqueue.COMMANDS,
        **admin.COMMANDS,
        **queues.COMMANDS,
    }
    try:
        return commands[opts.command](opts)
    except (UsageError, ConfigError, InvalidName) as exc:
        print(f"roger: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AMQPConnectionError as exc:
        print(f"roger: cannot connect to RabbitMQ: {exc!r}{connect_hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
