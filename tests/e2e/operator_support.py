"""The operator as a local process against the local cluster, and helpers for its e2e tests."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from roger_devtools.polling import eventually
from roger_devtools.ports import free_port
from roger_devtools.processes import stop
from tests.helpers import TEST_TAG, Kubectl

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Every operator e2e test is named test_operator_*, so its namespace (from `unique_name`)
# matches this glob; the test operator watches only those and leaves others' alone.
NAMESPACE_GLOB = f"{TEST_TAG}-test-operator*"


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: str,
        log_path: Path,
        status_interval: float = 2.0,
        namespace: str = NAMESPACE_GLOB,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.status_interval = status_interval
        self.namespace = namespace
        self.extra_args = extra_args
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(BIN / "roger-operator"),
                "--namespace",
                self.namespace,
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(self.health_port),
                "--bind-address",
                "127.0.0.1",
                "--status-interval",
                str(self.status_interval),
                *self.extra_args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        eventually(self.healthy, timeout=timeout, message="operator /healthz")

    def healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.tail()
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return r.read().decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"operator did not stop on signal {sig}") from None

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""


def leader_elected_operators(
    kubeconfig: str, namespace: str, lease: str, log_dir: Path, *extra_args: str
) -> list[OperatorProcess]:
    """Two operators watching ``namespace`` that elect their leader through the Lease
    ``lease`` in it; both started, so one leads and one stands by."""
    election = ("--leader-election", "--leader-election-namespace", namespace)
    ops = [
        OperatorProcess(
            kubeconfig,
            log_dir / f"operator-{i}.log",
            namespace=namespace,
            extra_args=(*election, "--leader-election-name", lease, *extra_args),
        )
        for i in range(2)
    ]
    for op in ops:
        op.start(timeout=120)  # a loaded 2-core machine takes a while to import kopf
    return ops


def short_id() -> str:
    return f"p-{uuid.uuid4().hex[:8]}"


def partition_manifest(name: str, namespace: str, **spec: Any) -> str:
    body: dict[str, Any] = {
        "amqp": {"secretRef": {"name": "rabbitmq", "key": "url"}},
        "worker": {"image": "example/jobs-worker:1.0", "replicas": 1, "metricsPort": free_port()},
        "jobs": ["tests.jobs.basic"],
        "queues": [{"name": "default", "maxWorkers": 2}, {"name": "email", "maxWorkers": 1}],
        "retry": {"levels": [1, 2], "buriedMaxLength": 10},
    }
    for key, value in spec.items():
        if key == "worker":
            body["worker"].update(value)
        else:
            body[key] = value
    return yaml.safe_dump(
        {
            "apiVersion": "roger.dev/v1alpha1",
            "kind": "Partition",
            "metadata": {"name": name, "namespace": namespace},
            "spec": body,
        }
    )


def callback_manifest(name: str, namespace: str, **config: Any) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "roger.dev/v1alpha1",
            "kind": "Callback",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"module": "tests.jobs.callbacks:Recorder", "config": config},
        }
    )


def secret_manifest(namespace: str, url: str, name: str = "rabbitmq") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {"url": url},
        }
    )


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c["type"] == ctype:
            return dict(c)
    return {}


def wait_condition(
    k: Kubectl,
    ns: str,
    name: str,
    ctype: str,
    status: str,
    reason: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = k.get_json("-n", ns, "partition", name)
        c = condition(obj, ctype)
        ok = c.get("status") == status and (reason is None or c.get("reason") == reason)
        ok = (
            ok
            and (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
        )
        return obj if ok else None

    result: dict[str, Any] = eventually(
        check, timeout=timeout, message=f"{ns}/{name} {ctype}={status} {reason or ''}"
    )
    return result


def replace_in_spec(k: Kubectl, ns: str, name: str, path: str, value: Any) -> None:
    """One JSON-patch ``replace`` of ``/spec/<path>`` of a Partition, as a user would."""
    op = [{"op": "replace", "path": f"/spec/{path}", "value": value}]
    k.run("-n", ns, "patch", "partition", name, "--type=json", "-p", json.dumps(op))


def get_or_none(k: Kubectl, *args: str) -> Any:
    proc = k.run("get", *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def template_hash(k: Kubectl, ns: str, name: str) -> str:
    dep = k.get_json("-n", ns, "deployment", f"roger-{name}")
    return str(dep["spec"]["template"]["metadata"]["annotations"]["roger.dev/config-hash"])


def config_map_name(k: Kubectl, ns: str, name: str) -> str:
    """The ConfigMap the Deployment's pods read now (one per config content)."""
    dep = k.get_json("-n", ns, "deployment", f"roger-{name}")
    (volume,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    return str(volume["configMap"]["name"])


def config_map(k: Kubectl, ns: str, name: str) -> Any:
    """That ConfigMap (as the API returns it)."""
    return k.get_json("-n", ns, "configmap", config_map_name(k, ns, name))


def secret_data(k: Kubectl, ns: str, name: str) -> dict[str, str]:
    obj = k.get_json("-n", ns, "secret", name)
    return {key: base64.b64decode(v).decode() for key, v in (obj.get("data") or {}).items()}


def wait_gone(k: Kubectl, *args: str, timeout: float = 40) -> None:
    eventually(lambda: get_or_none(k, *args) is None, timeout=timeout, message=f"{args} gone")


def elapsed(start: float) -> float:
    return time.monotonic() - start


def delete_partition_sync(k: Kubectl, ns: str, name: str) -> None:
    k.run("-n", ns, "delete", "partition", name, "--wait=true", "--timeout=60s", check=False)


class LocalPodsProcess:
    """``roger_devtools.localpods`` for one namespace: runs its worker Pods' containers,
    probes them and reports their status like a kubelet (kwok runs nothing)."""

    def __init__(
        self, kubeconfig: str, namespace: str, state_dir: Path, selector: str | None = None
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.state_dir = state_dir
        self.selector = selector  # a label selector: only these Pods of the namespace
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalPodsProcess:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),  # the test jobs (tests.jobs.*) import in the workers
            "PYTHONUNBUFFERED": "1",
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        selector = ("--selector", self.selector) if self.selector else ()
        with (self.state_dir / "localpods.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "roger_devtools.localpods", "--namespace", self.namespace,
                 *selector, "--state-dir", str(self.state_dir), "--interval", "0.5"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )  # fmt: skip
        return self

    def stop(self, grace: float = 60) -> None:
        """SIGTERM, then ``grace`` seconds for its pods' workers to finish, then SIGKILL."""
        if self.proc is not None:
            stop(self.proc, grace=grace)

    def tail(self, n: int = 40) -> str:
        try:
            text = (self.state_dir / "localpods.log").read_text()
            return "\n".join(text.splitlines()[-n:])
        except OSError:
            return ""

    def worker_pid(self, pod: str) -> int:
        """The pid of the process running ``pod``'s container (its cwd is the pod's dir)."""
        pod_dir = (self.state_dir / self.namespace / pod).resolve()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if Path(os.readlink(entry / "cwd")) != pod_dir:
                    continue
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(") ", 1)[1].split()[2]) == int(entry.name):
                    return int(entry.name)  # the session leader; job processes are in it
            except (OSError, ValueError):
                continue
        raise AssertionError(f"no process runs pod {pod}")
