"""The API server stopped and restarted mid-run: jobs go on, drops are counted, Events resume.

The observer talks to a kube-apiserver of its own (same binary, etcd and certificates as
the local cluster, another port), so stopping it does not disturb other tests that share
the cluster's main API server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.e2e.kube_events_support import (
    create_partition,
    ensure_partition_crd,
    lifecycle,
    list_events,
    make_observer,
)
from tests.helpers import Kubectl, eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("ROGER_STATE_DIR", ROOT / ".cluster"))
ETCD_PORT = os.environ.get("ROGER_ETCD_PORT", "12379")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateApiServer:
    def __init__(self, workdir: Path, kubectl_bin: str) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.kubectl_bin = kubectl_bin
        self.proc: subprocess.Popen[bytes] | None = None
        pki = STATE / "pki"
        self.args = [
            str(STATE / "bin" / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            "--endpoint-reconciler-type=none",
            "--service-cluster-ip-range=10.96.0.0/16",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=Node,RBAC",
            f"--cert-dir={workdir / 'certs'}",
            "--profiling=false",
            "--event-ttl=1h",
        ]
        config = yaml.safe_load((STATE / "kubeconfig").read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = str(workdir / "kubeconfig")
        Path(self.kubeconfig).write_text(yaml.safe_dump(config))

    def start(self) -> None:
        log = open(self.workdir / "kube-apiserver.log", "ab")  # noqa: SIM115 - child owns it
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        eventually(self.ready, timeout=120, interval=0.5, message="private kube-apiserver ready")

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "kube-apiserver exited"
        return (
            subprocess.run(
                [self.kubectl_bin, "--kubeconfig", self.kubeconfig, "get", "--raw", "/readyz"],
                capture_output=True,
                timeout=10,
            ).returncode
            == 0
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def private_apiserver(
    kubeconfig: str, kubectl_bin: str, tmp_path: Path
) -> Iterator[PrivateApiServer]:
    server = PrivateApiServer(tmp_path, kubectl_bin)
    server.start()
    yield server
    server.stop()


class JobStream(threading.Thread):
    """A stand-in for the worker's event loop: N jobs/s, each firing two hooks."""

    def __init__(self, observer: object, partition: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.observer = observer
        self.partition = partition
        self.rate = rate
        self.done = 0
        self.slowest = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.halt.is_set():
            i = self.done
            for hook in ("before_run", "on_error" if i % 10 == 0 else "after_run"):
                t0 = time.perf_counter()
                self.observer.observe(lifecycle(hook, self.partition, i))  # type: ignore[attr-defined]
                self.slowest = max(self.slowest, time.perf_counter() - t0)
            self.done += 1
            ahead = start + self.done / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


def test_apiserver_stopped_and_restarted(
    kubectl_bin: str, kubeconfig: str, namespace: str, private_apiserver: PrivateApiServer
) -> None:
    kubectl = Kubectl(kubectl_bin, kubeconfig)
    ensure_partition_crd(kubectl)
    create_partition(kubectl, namespace, "tenant-outage")
    registry = CollectorRegistry()
    obs = make_observer("tenant-outage", namespace, private_apiserver.kubeconfig, registry)
    obs.patch_interval = 1.0  # patch often, so writes after the restart are quick to see
    obs._aggregator.patch_interval = 1.0
    stream = JobStream(obs, "tenant-outage", rate=200.0)
    stream.start()

    def dropped() -> float:
        return sum(
            s.value
            for m in registry.collect()
            if m.name == "roger_kube_events_dropped"
            for s in m.samples
            if s.name == "roger_kube_events_dropped_total"
        )

    eventually(lambda: obs.emitted > 100, timeout=30, message="events flowing")
    private_apiserver.stop()
    down_at = stream.done
    eventually(lambda: dropped() > 0, timeout=30, message="drops counted")
    time.sleep(3)
    assert stream.done > down_at + 300, "jobs stalled while the API server was down"
    cause = obs.stats()["down"]
    assert cause in ("unreachable", "timeout"), cause
    emitted_while_down = obs.emitted

    private_apiserver.start()
    eventually(
        lambda: obs.stats()["down"] is None and obs.emitted > emitted_while_down + 100,
        timeout=60,
        message="events resumed after the restart",
    )
    stream.halt.set()
    stream.join(5)
    obs.close(10.0)

    stats = obs.stats()
    observed = 2 * stream.done
    assert obs.observed == observed  # every hook of every job reached observe()
    assert obs.emitted + sum(stats["dropped"].values()) == observed
    assert set(stats["dropped"]) <= {"unreachable", "timeout", "shutdown"}
    assert stream.slowest < 0.05, f"observe() blocked for {stream.slowest * 1e3:.1f} ms"
    events = list_events(kubectl, namespace, "tenant-outage")
    assert sum(e["count"] for e in events) == obs.emitted
    print(
        f"\n{stream.done} jobs; emitted {obs.emitted}, dropped {stats['dropped']}, "
        f"writes {stats['writes']}, Event objects {len(events)}, "
        f"slowest observe() {stream.slowest * 1e6:.0f} µs"
    )
