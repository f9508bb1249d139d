"""``roger worker``: its flags, the config they override, and the worker's start.

Flags override the config file (``--config``, YAML or JSON with the same settings); the
result is checked by ``roger.core.config.parse_config``. Jobs modules and callbacks are
imported and checked before anything runs; the worker itself is ``roger.worker.runtime``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from roger.cli.common import UsageError, amqp_url
from roger.core import naming
from roger.core.config import WorkerConfig, parse_config, parse_queue_spec
from roger.core.lifecycle import LifecycleObserver


def add_parsers(sub: Any) -> None:
    w = sub.add_parser("worker", help="consume and run jobs of one partition")
    w.add_argument("--partition", help="the partition (tenant) whose queues this worker consumes")
    w.add_argument(
        "--queue",
        action="append",
        default=[],
        metavar="NAME=MAX",
        help="consume queue NAME, running up to MAX of its jobs at once (repeat for more "
        "queues; MAX 0 declares the queue without consuming it)",
    )
    w.add_argument(
        "--jobs",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE for the jobs it defines (repeatable)",
    )
    w.add_argument(
        "--callback",
        action="append",
        default=[],
        metavar="MODULE:CLASS",
        help="a callback class whose hooks run around every job (repeatable; in order)",
    )
    w.add_argument(
        "--retry-levels",
        metavar="1,3,5",
        help="seconds before each retry of a retryable job; it is buried after the last "
        f"(default: {','.join(map(str, naming.DEFAULT_RETRY_LEVELS))})",
    )
    w.add_argument(
        "--buried-max-length",
        type=int,
        metavar="N",
        help="at most N burials not yet filed by `roger buried` wait in each .buried "
        "queue; past that the oldest is dropped, logged and counted "
        f"(default {WorkerConfig.buried_max_length})",
    )
    w.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on PORT (0: a free port; default: none of them)",
    )
    w.add_argument(
        "--shutdown-timeout",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM or SIGINT, how long running jobs get to finish (a second signal: "
        "no wait); jobs still running then are stopped and go back to their queue, to run "
        f"again from the start (default {WorkerConfig.shutdown_timeout:g})",
    )
    w.add_argument(
        "--callback-timeout",
        type=float,
        metavar="SECONDS",
        help="how long one callback hook may run; past it the hook's job process is "
        "killed, and the other jobs it was running go back to their queue "
        f"(default {WorkerConfig.callback_timeout:g})",
    )
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
    url = amqp_url(opts)
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"worker": _worker}
