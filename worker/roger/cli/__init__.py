"""The ``roger`` command: ``worker``, ``enqueue`` (one job or a JSON Lines file), ``info``;
the admin verbs (``buried``, ...) are in ``roger.cli.admin``.

Bad input never shows a traceback: one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import yaml

from roger.cli import admin, queues
from roger.cli.common import EXIT_DUPLICATE, EXIT_USAGE, UsageError, _Parser, amqp_url
from roger.core.config import (
    ConfigError,
    WorkerConfig,
    parse_config,
    parse_queue_spec,
    parse_retry_levels,
)
from roger.core.lifecycle import LifecycleObserver
from roger.core.naming import InvalidName
from roger.logs import LOG_FORMATS, configure_logging
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
    p.add_argument("--log-level", default=os.environ.get("ROGER_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("ROGER_LOG_FORMAT", "text"),
        help="text, or json: one object per line (default: $ROGER_LOG_FORMAT or text)",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    w = sub.add_parser("worker", help="consume and run jobs of one partition")
    w.add_argument("--partition")
    w.add_argument("--queue", action="append", default=[], metavar="NAME=MAX")
    w.add_argument("--jobs", action="append", default=[], metavar="MODULE")
    w.add_argument("--callback", action="append", default=[], metavar="MODULE:CLASS")
    w.add_argument("--retry-levels", metavar="1,3,5")
    w.add_argument("--buried-max-length", type=int)
    w.add_argument("--metrics-port", type=int)
    w.add_argument("--shutdown-timeout", type=float)
    w.add_argument("--callback-timeout", type=float)
    w.add_argument(
        "--broker-consumer-timeout",
        type=float,
        metavar="SECONDS",
        help="the broker's consumer_timeout (default 1800, RabbitMQ's): queues whose jobs "
        "may hold a delivery longer are named at start-up",
    )
    w.add_argument(
        "--job-processes",
        type=int,
        metavar="N",
        help="job processes per queue; a queue's MAX slots run as threads spread over them "
        "(default: one per usable CPU; N >= MAX gives every slot a process of its own)",
    )
    w.add_argument(
        "--kube-namespace",
        metavar="NS",
        help="emit lifecycle Events about the Partition in NS "
        "(default: $ROGER_KUBE_NAMESPACE, $POD_NAMESPACE; none: no Events)",
    )
    w.add_argument(
        "--kube-name", metavar="NAME", help="the Partition object (default: --partition)"
    )
    w.add_argument(
        "--kube-events",
        metavar="HOOKS",
        help="hooks that become Events, e.g. on_error,on_buried (default: all five)",
    )
    w.add_argument("--config", metavar="FILE", help="YAML or JSON with the same settings")

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
    i.add_argument("--queue", action="append", default=[])
    i.add_argument("--retry-levels", metavar="1,3,5")
    i.add_argument("--json", action="store_true")
    return p


_amqp_url = amqp_url


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not YAML/JSON: {exc}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise UsageError(f"config file {path} must hold a mapping of settings")
    return dict(data)


def worker_config(opts: argparse.Namespace) -> WorkerConfig:
    """The config file, overridden by the flags given on the command line."""
    data = _read_file(opts.config) if opts.config else {}
    if opts.partition is not None:
        data["partition"] = opts.partition
    if opts.queue:
        data["queues"] = dict(parse_queue_spec(s) for s in opts.queue)
    if opts.jobs:
        data["jobs"] = list(opts.jobs)
    if opts.callback:
        data["callbacks"] = list(opts.callback)
    flags = {
        "retry_levels": opts.retry_levels,
        "buried_max_length": opts.buried_max_length,
        "metrics_port": opts.metrics_port,
        "shutdown_timeout": opts.shutdown_timeout,
        "callback_timeout": opts.callback_timeout,
        "job_processes": opts.job_processes,
        "broker_consumer_timeout": opts.broker_consumer_timeout,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    kube = {
        "namespace": opts.kube_namespace,
        "name": opts.kube_name,
        "events": [h.strip() for h in opts.kube_events.split(",") if h.strip()]
        if opts.kube_events is not None
        else None,
    }
    if any(v is not None for v in kube.values()):
        merged = dict(data.get("kube") or {})
        merged.update({k: v for k, v in kube.items() if v is not None})
        data["kube"] = merged
    return parse_config(data)


def _extra_observers(config: WorkerConfig, registry: Any = None) -> list[LifecycleObserver]:
    """Where other lifecycle observers plug in: Kubernetes Events (``roger.kube``).

    Without a namespace (flag, config or the pod's env) there are none, said once in the log.
    ``registry`` is the worker's metrics registry, so the Events counters show on /metrics.
    """
    from roger.kube import observer_from_config

    observer = observer_from_config(config, registry=registry)
    return [observer] if observer is not None else []


def make_observers(config: WorkerConfig, registry: Any = None) -> list[LifecycleObserver]:
    """Lifecycle observers besides the metrics, which the worker always has."""
    return _extra_observers(config, registry)


def _import(what: str, path: str) -> Any:
    try:
        return importlib.import_module(path)
    except Exception as exc:  # any import failure is the user's input
        raise UsageError(f"cannot import {what} {path!r}: {type(exc).__name__}: {exc}") from None


def _check_callbacks(opts: argparse.Namespace, config: WorkerConfig) -> None:
    """Refuse, before anything is called, a callback that is not a callback class; in a pod
    the Partition hears why (a ``CallbackRejected`` Event the operator reads)."""
    from roger.worker.callbacks import CallbackRejected, check

    for cb in config.callbacks:
        try:
            check(cb, os.environ)
        except CallbackRejected as exc:
            from roger.kube.rejection import report_callback_rejected

            report_callback_rejected(config, str(exc), _config_text(opts))
            raise UsageError(str(exc)) from None


def _config_text(opts: argparse.Namespace) -> str | None:
    if not opts.config:
        return None
    try:
        with open(opts.config, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def _worker(opts: argparse.Namespace) -> int:
    url = _amqp_url(opts)
    config = worker_config(opts)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like celery/dramatiq: the app's modules import
    from roger.core.jobs import JobRegistry

    registry = JobRegistry(_import("jobs module", m) for m in config.jobs)
    if not registry.jobs:
        raise UsageError(f"no @roger.job functions in {', '.join(config.jobs)}")
    _check_callbacks(opts, config)
    from roger.worker.runtime import Worker

    telemetry: Any = None
    server = None
    worker: Worker
    if config.metrics_port is not None:
        from roger.metrics.server import MetricsServer
        from roger.metrics.worker import WorkerMetrics

        telemetry = WorkerMetrics(config.partition)
    observers = make_observers(config, telemetry.registry if telemetry is not None else None)
    worker = Worker(config, url, registry, observers, telemetry, sys.path)
    if config.metrics_port is not None:
        try:
            server = MetricsServer(
                config.metrics_port, telemetry.registry, worker.healthy, worker.ready
            ).start()
        except OSError as exc:
            raise UsageError(
                f"cannot listen on metrics port {config.metrics_port}: {exc}"
            ) from None
        logging.getLogger("roger.worker").info("metrics on :%d", server.port)
    try:
        return worker.run()
    finally:
        if server is not None:
            server.stop()


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
    url = _amqp_url(opts)
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


def _state_command(opts: argparse.Namespace) -> int:
    """``cancel``, ``pause`` and ``resume``: one confirmed control event each."""
    url = _amqp_url(opts)
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
    url = _amqp_url(opts)
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
    configure_logging(str(opts.log_level).upper(), opts.log_format)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # we log what matters
    from pika.exceptions import AMQPConnectionError

    commands = {
        "worker": _worker,
        "enqueue": _enqueue,
        "info": _info,
        "cancel": _state_command,
        "pause": _state_command,
        "resume": _state_command,
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
