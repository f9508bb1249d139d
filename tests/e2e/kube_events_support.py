"""Shared pieces of the Kubernetes Events e2e tests: Partition objects, listing of Events,
and a private kube-apiserver that a test may stop, freeze (SIGSTOP) and restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from roger.core.config import parse_config
from roger.core.hooks import HookName
from roger.core.lifecycle import LifecycleEvent
from roger.kube import KubeEventsObserver, observer_from_config
from roger.kube.client import KubeEventsApi
from roger_devtools.polling import eventually
from roger_devtools.ports import free_port
from tests.helpers import Kubectl

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("ROGER_STATE_DIR", ROOT / ".cluster"))
ETCD_PORT = os.environ.get("ROGER_ETCD_PORT", "12379")


def create_partition(kubectl: Kubectl, namespace: str, name: str) -> str:
    """A Partition object (spec valid for the project's CRD); returns its uid."""
    manifest = json.dumps(
        {
            "apiVersion": "roger.dev/v1alpha1",
            "kind": "Partition",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "amqp": {"secretRef": {"name": "absent"}},
                "worker": {"image": "roger-worker:e2e", "replicas": 0},
                "jobs": ["tests.jobs"],
                "queues": [{"name": "default", "maxWorkers": 1}],
            },
        }
    )
    kubectl.apply(manifest)
    obj = kubectl.get_json("partition", name, "-n", namespace)
    return str(obj["metadata"]["uid"])


def list_events(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    items = kubectl.get_json("events", "-n", namespace)["items"]
    return [
        e
        for e in items
        if e["involvedObject"].get("kind") == "Partition" and e["involvedObject"]["name"] == name
    ]


def worker_config(partition: str, namespace: str, **kube: Any) -> Any:
    return parse_config(
        {
            "partition": partition,
            "queues": {"default": 1},
            "jobs": ["tests.jobs"],
            "kube": {"namespace": namespace, **kube},
        }
    )


def make_observer(
    partition: str,
    namespace: str,
    kubeconfig: str,
    registry: CollectorRegistry | None = None,
    **kube: Any,
) -> KubeEventsObserver:
    obs = observer_from_config(
        worker_config(partition, namespace, **kube),
        env={"POD_NAME": "e2e-pod-0"},
        api=KubeEventsApi.from_environment(kubeconfig),
        registry=registry or CollectorRegistry(),
    )
    assert obs is not None
    return obs


def lifecycle(
    hook: HookName,
    partition: str,
    i: int,
    job: str = "tests.jobs.Send",
    error: tuple[str, str] | None = None,
) -> LifecycleEvent:
    if error is None and hook in ("on_error", "on_buried"):
        error = ("ValueError", f"boom {i}")
    return LifecycleEvent(
        hook=hook,
        partition=partition,
        queue="default",
        job_id=f"job-{i:06d}",
        job_name=job,
        retry_count=i % 3,
        at=time.time(),
        error=error,
        duration=0.01 if hook in ("after_run", "on_error", "on_buried") else None,
    )


def wait_events(
    kubectl: Kubectl, namespace: str, name: str, n: int, timeout: float = 30.0
) -> list[dict[str, Any]]:
    return eventually(
        lambda: (ev := list_events(kubectl, namespace, name)) and len(ev) >= n and ev,
        timeout=timeout,
        message=f"{n} Events about Partition {name}",
    )


class PrivateApiServer:
    """A kube-apiserver of the test's own: the local cluster's binary, etcd and certificates
    on another port, so stopping or freezing it does not disturb tests that share the
    cluster's main API server. ``kubeconfig`` is the admin kubeconfig pointed at it."""

    def __init__(self, workdir: Path, kubectl_bin: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.kubectl_bin = kubectl_bin
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
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
        self.frozen = False
        eventually(self.ready, timeout=120, interval=0.5, message="private kube-apiserver ready")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        assert self.running(), "kube-apiserver exited"
        return (
            subprocess.run(
                [self.kubectl_bin, "--kubeconfig", self.kubeconfig, "get", "--raw", "/readyz"],
                capture_output=True,
                timeout=10,
            ).returncode
            == 0
        )

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, nothing is answered."""
        assert self.proc is not None and self.running()
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.proc is not None and self.frozen:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        self.thaw()  # a stopped process would not act on SIGTERM
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
