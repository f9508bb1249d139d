"""``roger-operator``: run the Partition/Callback controller (kopf, standalone).

    roger-operator [--all-namespaces | --namespace NS ...] [--metrics-port 9090]
                   [--health-port 8080] [--status-interval 30]

The AMQP URL of each Partition is read from its Secret when needed and kept in memory only.
SIGTERM/SIGINT stop it cleanly (kopf finishes running handlers, then exits 0).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from roger.extras import MissingExtra, require_extra
from roger.logs import LOG_FORMATS, configure_logging
from roger.version import package_version
from roger_operator.builders.model import MANAGED_SELECTOR, MANAGER

if TYPE_CHECKING:  # kopf is imported once the [operator] extra is known to be there
    import kopf

log = logging.getLogger("roger_operator")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="roger-operator", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--version", action="version", version=f"roger-operator {package_version()}"
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; globs allowed)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    parser.add_argument("--metrics-port", type=int, default=9090, help="Prometheus; 0: off")
    parser.add_argument("--health-port", type=int, default=8080, help="/healthz; 0: off")
    parser.add_argument("--bind-address", default="0.0.0.0", help="for metrics and health")
    parser.add_argument(
        "--status-interval",
        type=float,
        default=30.0,
        help="seconds between per-queue stats refreshes (0: off)",
    )
    parser.add_argument(
        "--autoscale-interval",
        type=float,
        default=5.0,
        help="seconds between evaluations of Partitions with spec.autoscaling (0: off)",
    )
    parser.add_argument(
        "--rabbitmq-management-port",
        type=int,
        default=15672,
        help="management API port on the AMQP host, for unacked counts (0: AMQP only)",
    )
    parser.add_argument("--workers", type=int, default=16, help="reconcile threads")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text, or json: one object per line, for log shippers",
    )
    return parser.parse_args(argv)


def settings_for(args: argparse.Namespace) -> kopf.OperatorSettings:
    import kopf

    from roger_operator.handlers import CHILDREN

    settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    settings.persistence.finalizer = "roger.dev/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="roger.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="roger.dev", key="last-handled-configuration"
    )
    # kopf would post its log lines as Events; the operator posts its own, deliberate ones.
    settings.posting.enabled = False
    settings.execution.max_workers = args.workers
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 600
    for group, _version, plural in CHILDREN:
        settings.watching.label_selectors[group, plural] = MANAGED_SELECTOR
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        require_extra("operator", "roger-operator")
    except MissingExtra as exc:
        print(f"roger-operator: {exc}", file=sys.stderr)
        return 2
    import kopf
    from prometheus_client import start_http_server

    from roger_operator.handlers import register
    from roger_operator.handlers.context import Context
    from roger_operator.kube import Kube
    from roger_operator.rabbit import Broker

    configure_logging(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    for noisy in ("kubernetes", "urllib3", "aiohttp", "kopf.objects"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.ERROR)  # 404s of passive declares are expected
    from roger.version import package_version
    from roger_operator import metrics

    metrics.INFO.info({"version": package_version()})
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.bind_address)
    ctx = Context(
        kube=Kube(pool_size=max(args.workers * 2, 16)),
        broker=Broker(management_port=args.rabbitmq_management_port),
        status_interval=args.status_interval,
        autoscale_interval=args.autoscale_interval,
    )
    registry = kopf.OperatorRegistry()
    register(registry, ctx)
    liveness = (
        f"http://{args.bind_address}:{args.health_port}/healthz" if args.health_port else None
    )
    namespaces = list(args.namespace)
    log.info(
        "%s starting: %s", MANAGER, f"namespaces {namespaces}" if namespaces else "all namespaces"
    )
    try:
        kopf.run(
            registry=registry,
            settings=settings_for(args),
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
        )
    finally:
        ctx.broker.close()
    log.info("%s stopped", MANAGER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
