"""Proof for the Grafana dashboards: every panel's query returns data from a real Prometheus.

Real processes only: two ``roger worker`` processes and the operator (local processes against
the local cluster and broker), scraped by Debian's Prometheus (hack/prometheus.sh, file_sd
loopback targets labelled like a PodMonitor would), plus RabbitMQ's own metrics. Jobs of
every outcome run in two waves (a counter's first sample is not an increase), then each
panel's query, with the dashboard variables substituted as Grafana would, is evaluated as a
range query over the test's window and must return data (and something non-zero).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

import roger
from roger_devtools.polling import eventually
from roger_devtools.ports import free_port
from roger_devtools.processes import stop
from tests.e2e.observe_support import (
    BIN,
    Prometheus,
    delete_rabbitmq_objects,
    http_ok,
    partition_manifest,
    secret_manifest,
    start_operator,
    start_process,
    tail,
)
from tests.helpers import Kubectl
from tests.integration.support import management
from tests.monitoring import DASHBOARDS, load_dashboard, panels, substitute

pytestmark = pytest.mark.e2e

RATE_INTERVAL = "30s"  # Grafana's $__rate_interval for a 5s scrape interval
JOBS = "tests.jobs.basic"

# Panels that cannot have data yet, and why. The test fails if one of them has data (then
# delete the entry) or if any other panel has none. "Paused queues" (roger_queue_paused,
# 0/1 from the start) and "Broker reconnects" (roger_broker_reconnects_total, at 0 from the
# start) have data now: the scenario pauses a queue and drops a worker's connection.
KNOWN_GAPS: dict[str, str] = {}
WAVES = 3
PAUSED = 'roger_queue_paused{{namespace="{}", queue="email"}}'


def _known_gaps() -> dict[str, str]:
    gaps = dict(KNOWN_GAPS)
    if not hasattr(roger.Client, "cancel"):
        gaps["Cancelled"] = "roger.Client has no cancel() yet (worker part 2)"
    return gaps


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    prom = Prometheus()
    yield prom
    prom.remove_targets()


def _has_values(result: list[Any]) -> tuple[bool, bool]:
    """(any sample that is a number, any sample > 0)."""
    values = [float(v) for series in result for _, v in series["values"]]
    numbers = [v for v in values if not math.isnan(v)]
    return bool(numbers), any(v > 0 for v in numbers)


def _evaluate(
    prom: Prometheus, variables: dict[str, str], start: float
) -> dict[str, dict[str, tuple[bool, bool]]]:
    """panel "dashboard/title" -> {refId: (has data, has a positive value)}."""
    out: dict[str, dict[str, tuple[bool, bool]]] = {}
    for path in DASHBOARDS:
        dash = load_dashboard(path)
        for panel in panels(dash):
            key = f"{dash['uid']}/{panel['title']}"
            for target in panel["targets"]:
                expr = substitute(target["expr"], variables)
                result = prom.query_range(expr, start, time.time())
                out.setdefault(key, {})[target["refId"]] = _has_values(result)
    return out


def _missing(evaluation: dict[str, dict[str, tuple[bool, bool]]]) -> dict[str, str]:
    missing = {}
    for key, targets in evaluation.items():
        empty = [ref for ref, (data, _) in targets.items() if not data]
        if empty:
            missing[key] = f"no data for target(s) {empty}"
        elif not any(positive for _, positive in targets.values()):
            missing[key] = "only zeros"
    return missing


def drop_worker_connection(partition: str) -> None:
    """Close one worker's AMQP connection from the broker side (it reconnects)."""
    prefix = f"roger-worker {partition} "

    def find() -> list[dict[str, Any]]:
        return [
            c
            for c in management("/connections?columns=name,client_properties")
            if str(c.get("client_properties", {}).get("connection_name", "")).startswith(prefix)
        ]

    conns = eventually(find, timeout=30, message="a worker connection listed")
    management("/connections/" + urllib.parse.quote(conns[0]["name"], safe=""), "DELETE")


class Scenario:
    """Jobs of every outcome, in waves, through two workers of one partition."""

    def __init__(self, amqp_url: str, partition: str) -> None:
        self.url = amqp_url
        self.partition = partition
        self.client = roger.Client(amqp_url)
        self.cancelled: list[str] = []

    def enqueue(self, name: str, args: Any = None, queue: str | None = None) -> str:
        return str(self.client.enqueue(self.partition, f"{JOBS}:{name}", args, queue=queue))

    def wave(self) -> None:
        for _ in range(40):
            self.enqueue("ok", {"sleep": 0.2})  # succeeded, duration, running
        for _ in range(4):
            self.enqueue("ok", {"sleep": 3}, queue="email")  # backlog on a 1-worker queue
        for _ in range(2):
            self.enqueue("flaky")  # retried twice, then buried
            self.enqueue("fails_once_not_retryable")  # on_error, kept in .buried at once
        self.enqueue("stuck")  # timeout after 1 s: on_error, kept in .buried
        for _ in range(2):
            self._park()
        cancel = getattr(self.client, "cancel", None)
        for _ in range(4 if cancel is not None else 0):
            queued = self.enqueue("ok", {"sleep": 1}, queue="email")  # behind the backlog
            cancel(self.partition, queued)
            self.cancelled.append(queued)

    def _park(self) -> None:
        """Messages that must never run: not JSON, and a job outside the worker's modules."""
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
            ch.basic_publish("", f"{self.partition}-default", b"{not json", props)
        finally:
            conn.close()
        # The client may refuse it before it reaches the worker: fine.
        with contextlib.suppress(Exception):
            self.client.enqueue(self.partition, "os:system", {})

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close:
            close()


def test_every_dashboard_panel_has_data(
    prometheus: Prometheus,
    amqp_url: str,
    kubeconfig: str,
    kubectl: Kubectl,
    namespace: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    partition = unique_name[:40].rstrip("-")
    started = time.time() - 5
    procs = []
    scenario = None
    try:
        # The operator, watching only this namespace, reconciles the Partition.
        kubectl.apply(secret_manifest(namespace, amqp_url))
        op_metrics, op_health = free_port(), free_port()
        op_log = tmp_path / "operator.log"
        operator = start_operator(kubeconfig, [namespace], op_log, op_metrics, op_health)
        procs.append(operator)
        prometheus.add_target(
            f"{partition}-operator", op_metrics, namespace=namespace, job="roger-operator"
        )
        eventually(
            lambda: http_ok(f"http://127.0.0.1:{op_health}/healthz") or operator.poll(),
            timeout=60,
            message="operator healthy",
        )
        assert operator.poll() is None, tail(op_log)
        kubectl.apply(partition_manifest(partition, namespace))
        # A second Partition whose Deployment name is taken by someone else's Deployment
        # (another selector, immutable): every reconcile of it fails at apply.
        squatted = f"{partition}-sq"
        kubectl.run(
            "-n",
            namespace,
            "create",
            "deployment",
            f"roger-{squatted}",
            "--image=x",
            "--replicas=0",
        )
        kubectl.apply(partition_manifest(squatted, namespace))

        # Two workers: A records Events on the Partition, B on a missing one (dropped).
        ports = []
        for i, kube_name in enumerate((partition, f"{partition}-missing")):
            port = free_port()
            ports.append(port)
            args = [str(BIN / "roger"), "worker", "--partition", partition]
            args += ["--queue", "default=4", "--queue", "email=1", "--jobs", JOBS]
            args += ["--callback", "tests.jobs.callbacks:Raises", "--retry-levels", "1,2"]
            args += ["--buried-max-length", "100", "--metrics-port", str(port)]
            args += ["--kube-namespace", namespace, "--kube-name", kube_name]
            env = {"ROGER_AMQP_URL": amqp_url, "KUBECONFIG": kubeconfig, "POD_NAME": f"w{i}"}
            procs.append(start_process(args, tmp_path / f"worker{i}.log", env))
            prometheus.add_target(
                f"{partition}-worker{i}", port, namespace=namespace, job="roger-workers"
            )
        for i, port in enumerate(ports):
            eventually(
                lambda port=port: http_ok(f"http://127.0.0.1:{port}/readyz"),
                timeout=60,
                message=f"worker {i} ready; log: {tail(tmp_path / f'worker{i}.log')}",
            )
        eventually(
            lambda: prometheus.targets_up(namespace=namespace) == 3,
            timeout=30,
            message="Prometheus scrapes the operator and both workers",
        )

        scenario = Scenario(amqp_url, partition)
        for wave in range(WAVES):
            if wave == 1:  # "Paused queues" at 1 and one reconnection, for three scrapes
                scenario.client.pause(partition, "email")
                drop_worker_connection(partition)
            if wave:
                time.sleep(15)  # three scrapes: the series exist before the next wave
            if wave == 1:  # resumed once a scrape saw it (a reconnect may take over 15 s)
                eventually(
                    lambda: _has_values(
                        prometheus.query_range(PAUSED.format(namespace), started, time.time())
                    )[1],
                    timeout=120,
                    interval=2.0,
                    message="a scrape of the paused queue",
                )
                scenario.client.resume(partition, "email")
            scenario.wave()
            for name in (partition, squatted):  # a spec change: the operator reconciles
                kubectl.run(
                    "-n", namespace, "patch", "partition", name, "--type=merge",
                    "-p", json.dumps({"spec": {"worker": {"replicas": 1 + wave % 2}}}),
                )  # fmt: skip

        variables = {
            "namespace": namespace,
            "partition": partition,
            "queue": "(default|email)",
            "__rate_interval": RATE_INTERVAL,
        }
        gaps = _known_gaps()
        deadline = time.monotonic() + 120
        while True:  # Prometheus scrapes every 5 s; the last jobs settle a little later
            evaluation = _evaluate(prometheus, variables, started)
            missing = _missing(evaluation)
            if all(key.split("/", 1)[1] in gaps for key in missing):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(5)
        unexplained = {k: v for k, v in missing.items() if k.split("/", 1)[1] not in gaps}
        assert not unexplained, f"panels without data: {unexplained}"
        stale = [t for t in gaps if not any(k.endswith("/" + t) for k in missing)]
        assert not stale, f"these panels have data now, remove them from KNOWN_GAPS: {stale}"
        with_data = len(evaluation) - len(missing)
        print(
            f"\n{with_data}/{len(evaluation)} panels with data "
            f"({sum(len(t) for t in evaluation.values())} queries); gaps: {gaps}"
        )
        for p in procs[1:]:
            assert p.poll() is None, "a worker died"
        # The squatted Partition goes; the Deployment it never owned stays.
        kubectl.run("-n", namespace, "delete", "partition", squatted, "--timeout=60s")
        kubectl.get_json("-n", namespace, "deployment", f"roger-{squatted}")
    finally:
        if scenario is not None:
            scenario.close()
        for p in reversed(procs[1:]):
            stop(p)
        # Every Partition, before the operator stops: a finalizer left would hold the
        # namespace in Terminating for ever.
        kubectl.run("-n", namespace, "delete", "partitions", "--all", "--timeout=60s", check=False)
        if procs:
            stop(procs[0])
        prometheus.remove_targets()
        delete_rabbitmq_objects(partition)
