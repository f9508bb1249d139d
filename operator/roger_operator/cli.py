"""``roger-operator``: run the Partition/Callback controller (kopf, standalone).

    roger-operator [--all-namespaces | --namespace NS ...] [--metrics-port 9090]
                   [--health-port 8080] [--status-interval 30] [--leader-election]

The AMQP URL of each Partition is read from its Secret when needed and kept in memory only.
SIGTERM/SIGINT stop it cleanly, in seconds: from the signal no handler starts work and no
broker call starts (handlers in flight end at their next call; the next operator resumes
their work), then kopf exits 0. With ``--leader-election`` several replicas can run: only
the holder of the Lease reconciles (``roger_operator.kube.lease``); the others wait,
serving /healthz.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final

from roger.core.naming import DEFAULT_BURIED_MAX_LENGTH
from roger.extras import MissingExtra, require_extra
from roger.logs import LOG_FORMATS, configure_logging
from roger.version import package_version
from roger_operator.builders.model import MANAGED_SELECTOR, MANAGER

if TYPE_CHECKING:  # kopf is imported once the [operator] extra is known to be there
    import kopf

    from roger_operator.kube import Kube
    from roger_operator.kube.lease import LeaderElector

log = logging.getLogger("roger_operator")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return arg_parser().parse_args(argv)


def arg_parser() -> argparse.ArgumentParser:
    """``roger-operator``'s flags (the CLI tests walk them for their help texts)."""
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
    parser.add_argument(
        "--bound-policy",
        choices=("queue", "vhost"),
        default="queue",
        help="how .buried queues are bounded: a RabbitMQ policy per queue (safe on a vhost "
        "shared with others), or one policy per vhost matching every .buried by name, plus "
        "one per queue only where spec.retry.buriedMaxLength is not the default (for vhosts "
        "holding only this operator's Partitions: each policy written costs the broker a "
        "re-match of every queue against every policy; docs/admin.md)",
    )
    parser.add_argument("--workers", type=int, default=16, help="reconcile threads")
    parser.add_argument(
        "--delete-broker-timeout",
        type=float,
        default=300.0,
        help="seconds a Partition's deletion waits for an unreachable RabbitMQ before its "
        "finalizer gives up, leaving the queues (Warning Event QueuesKept)",
    )
    election = parser.add_argument_group("leader election (several replicas)")
    election.add_argument(
        "--leader-election",
        action="store_true",
        help="reconcile only while holding a coordination.k8s.io Lease",
    )
    election.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE") or "default",
        help="namespace of the Lease (default: $POD_NAMESPACE, else default)",
    )
    election.add_argument(
        "--leader-election-name", default="roger-operator", help="name of the Lease"
    )
    election.add_argument(
        "--lease-duration",
        type=int,
        choices=range(4, 301),
        metavar="4-300",
        default=8,
        help="seconds a dead leader's Lease lasts; a standby takes over within this "
        "+ 2 s (the leader renews every 2 s and stops if it cannot for 3/4 of this)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log at DEBUG level (urllib3, aiohttp and kopf.objects stay at WARNING, "
        "pika at ERROR)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text, or json: one object per line, for log shippers",
    )
    return parser


TIMER_STOP_POLL_SECONDS: Final = 1.0
# After kopf patches a Partition (its finalizer, the last-handled configuration), it waits
# this long for the watch to bring that version back before it trusts an older body. kopf's
# 5 s was too short under load: at 500 Partitions created at once the patched versions came
# back later, kopf took the older bodies for new objects and ran the reconcile a second time
# (1.67 reconciles per Partition at 100, 1.98 at 500; bench/OPERATOR_RESULTS.md). Waiting
# longer costs nothing when the version comes: kopf goes on as soon as it arrives.
CONSISTENCY_TIMEOUT_SECONDS: Final = 60.0


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
    # A timer (autoscaling) running when a Partition is deleted holds its
    # finalizer until it returns; kopf looks again after this many seconds (default 60,
    # which made `kubectl delete partition` take a minute whenever a refresh was in flight).
    settings.background.cancellation_polling = TIMER_STOP_POLL_SECONDS
    settings.networking.request_timeout = 60
    settings.persistence.consistency_timeout = CONSISTENCY_TIMEOUT_SECONDS
    settings.watching.server_timeout = 600
    for group, _version, plural in CHILDREN:
        settings.watching.label_selectors[group, plural] = MANAGED_SELECTOR
    return settings


def wait_for_lease(args: argparse.Namespace, kube: Kube) -> LeaderElector | None:
    """Standby until this process holds the Lease (None: stopped by a signal meanwhile).

    While waiting it answers /healthz itself (kopf serves it once leading), so the probes
    of a standby replica pass. Once leading, losing the Lease ends the process at once.
    """
    from roger_operator.kube.lease import LeaderElector

    duration = args.lease_duration
    elector = LeaderElector(
        kube,
        args.leader_election_namespace,
        args.leader_election_name,
        lease_duration=duration,
        renew_deadline=duration * 3 / 4,
        retry_period=max(1.0, min(2.0, duration / 4)),
    )
    health = standby_health(args.bind_address, args.health_port) if args.health_port else None
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        raise SystemExit(0)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        elector.acquire()
    except SystemExit:
        log.info("%s stopped while standing by", MANAGER)
        return None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if health is not None:
            health.shutdown()
            health.server_close()
    if stop.is_set():
        return None

    def lost() -> None:
        logging.shutdown()
        os._exit(1)  # another replica may lead in a moment: stop reconciling now

    elector.keep(lost)
    return elector


def standby_health(host: str, port: int) -> ThreadingHTTPServer:
    """/healthz -> 200 while standing by (alive, waiting for the Lease)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path.split("?")[0] == "/healthz"
            body = b'{"standby": true}' if ok else b"not found"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    return server


def keep_terminating_namespaces_watched() -> None:
    """``handlers/namespaces.py``; a kopf whose internals moved runs with kopf's own rule
    (a warning, not a crash: the image installs the newest kopf)."""
    try:
        from roger_operator.handlers import namespaces

        namespaces.install()
    except (ImportError, RuntimeError) as exc:
        log.warning(
            "kopf's namespace watch left as it is (%s): with --namespace patterns, a "
            "namespace deleted with its Partitions may stay Terminating until their "
            "finalizers are removed by hand",
            exc,
        )


async def run_kopf(on_stop: Callable[[], None], **operator_args: Any) -> None:
    """``kopf.run``, but a stop signal also calls ``on_stop`` at once.

    kopf lets every handler running in a thread end before it exits, and a handler waiting
    for broker calls queued behind others' (forty Partitions deleted at once) kept a
    stopped operator alive 45-100 s: longer than a Pod's grace period. ``on_stop`` makes
    those waits end now."""
    import kopf

    before = asyncio.all_tasks()  # what kopf must not cancel when it stops (as kopf.run)
    stop = asyncio.Event()
    tasks = await kopf.spawn_tasks(stop_flag=stop, **operator_args)

    def on_signal(sig: signal.Signals) -> None:
        log.info("%s received: stopping", sig.name)
        on_stop()
        stop.set()

    if threading.current_thread() is threading.main_thread():  # kopf's own rule
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # in place of kopf's handlers
            loop.add_signal_handler(sig, on_signal, sig)
    with contextlib.suppress(asyncio.CancelledError):
        await kopf.run_tasks(tasks, ignored=before)


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
    from roger_operator.kube.credentials import LoginError
    from roger_operator.rabbit import Broker

    configure_logging(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    for noisy in ("urllib3", "aiohttp", "kopf.objects"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.ERROR)  # 404s of passive declares are expected
    from roger.version import package_version
    from roger_operator import metrics

    metrics.INFO.info({"version": package_version()})
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.bind_address)
    try:
        kube = Kube(pool_size=max(args.workers * 2, 16))
    except LoginError as exc:
        print(f"roger-operator: {exc}", file=sys.stderr)
        return 2
    ctx = Context(
        kube=kube,
        broker=Broker(
            management_port=args.rabbitmq_management_port,
            vhost_bound=DEFAULT_BURIED_MAX_LENGTH if args.bound_policy == "vhost" else None,
        ),
        status_interval=args.status_interval,
        delete_broker_timeout=args.delete_broker_timeout,
        autoscale_interval=args.autoscale_interval,
    )
    elector = None
    if args.leader_election:
        elector = wait_for_lease(args, ctx.kube)
        if elector is None:
            return 0
    registry = kopf.OperatorRegistry()
    register(registry, ctx)
    keep_terminating_namespaces_watched()
    liveness = (
        f"http://{args.bind_address}:{args.health_port}/healthz" if args.health_port else None
    )
    namespaces = list(args.namespace)
    log.info(
        "%s starting: %s", MANAGER, f"namespaces {namespaces}" if namespaces else "all namespaces"
    )
    try:
        asyncio.run(
            run_kopf(
                ctx.stop,
                registry=registry,
                settings=settings_for(args),
                standalone=True,
                clusterwide=not namespaces,
                namespaces=namespaces,
                liveness_endpoint=liveness,
            )
        )
    finally:
        ctx.broker.close()
        if elector is not None:
            elector.release()
    log.info("%s stopped", MANAGER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
