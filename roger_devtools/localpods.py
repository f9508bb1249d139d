"""A tiny local "kubelet" for kwok nodes: run worker Pods' containers as local processes.

It polls Pods matching a selector, starts one process per Running Pod (command, env,
ConfigMap volumes resolved by ``podspec``), stops it when the Pod goes away, gives each a
loopback metrics port and writes them as Prometheus file_sd targets. The demo and the
e2e tests use it so that Pods the operator creates really process jobs.

    python -m roger_devtools.localpods --selector app.kubernetes.io/component=worker \
        --state-dir .cluster/localpods --file-sd .cluster/prometheus/targets/workers.json
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

from roger_devtools.podspec import LocalProcess, UnresolvableEnv, local_process
from roger_devtools.ports import free_port

log = logging.getLogger("roger.localpods")


@dataclass
class Running:
    pod_uid: str
    name: str
    namespace: str
    labels: dict[str, str]
    proc: subprocess.Popen[bytes]
    metrics_port: int | None
    grace: float


def _is_roger_worker(argv: list[str]) -> bool:
    return len(argv) >= 2 and os.path.basename(argv[0]) == "roger" and argv[1] == "worker"


class LocalPods:
    def __init__(
        self,
        api: client.CoreV1Api,
        selector: str,
        namespace: str | None,
        state_dir: Path,
        file_sd: Path | None,
    ) -> None:
        self.api = api
        self.selector = selector
        self.namespace = namespace
        self.state_dir = state_dir
        self.file_sd = file_sd
        self.running: dict[str, Running] = {}

    def _pods(self) -> list[Any]:
        if self.namespace:
            items = self.api.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        else:
            items = self.api.list_pod_for_all_namespaces(label_selector=self.selector).items
        return list(items)

    def _data(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        try:
            if kind == "secret":
                raw = self.api.read_namespaced_secret(name, namespace).data or {}
                return {k: base64.b64decode(v).decode() for k, v in raw.items()}
            return dict(self.api.read_namespaced_config_map(name, namespace).data or {})
        except client.ApiException as exc:
            if exc.status == 404:
                return {}
            raise

    def _describe(self, pod: Any, pod_dir: Path) -> LocalProcess:
        raw = self.api.api_client.sanitize_for_serialization(pod)
        ns = pod.metadata.namespace
        secrets: dict[str, dict[str, str]] = {}
        maps: dict[str, dict[str, str]] = {}
        for c in raw["spec"]["containers"]:
            for e in c.get("env") or ():
                src = e.get("valueFrom") or {}
                if "secretKeyRef" in src:
                    secrets[src["secretKeyRef"]["name"]] = self._data(
                        "secret", ns, src["secretKeyRef"]["name"]
                    )
                if "configMapKeyRef" in src:
                    maps[src["configMapKeyRef"]["name"]] = self._data(
                        "cm", ns, src["configMapKeyRef"]["name"]
                    )
        for v in raw["spec"].get("volumes") or ():
            if "configMap" in v:
                maps[v["configMap"]["name"]] = self._data("cm", ns, v["configMap"]["name"])
        return local_process(raw, None, secrets, maps, str(pod_dir))

    def _start(self, pod: Any) -> None:
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        pod_dir = self.state_dir / pod.metadata.namespace / pod.metadata.name
        try:
            desc = self._describe(pod, pod_dir)
        except UnresolvableEnv as exc:
            log.warning("not starting %s: %s", key, exc)
            return
        for rel, content in desc.files.items():
            path = pod_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        argv = list(desc.argv)
        port = None
        if _is_roger_worker(argv):
            argv[0] = shutil.which("roger") or argv[0]
            port = free_port()
            argv += ["--metrics-port", str(port)]
        env = {**os.environ, **desc.env}
        logf = open(pod_dir / "process.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=pod_dir,
            start_new_session=True,
        )
        logf.close()
        self.running[pod.metadata.uid] = Running(
            pod.metadata.uid,
            pod.metadata.name,
            pod.metadata.namespace,
            dict(pod.metadata.labels or {}),
            proc,
            port,
            desc.grace_seconds,
        )
        log.info("started %s (pid %d, metrics 127.0.0.1:%s)", key, proc.pid, port)

    def _stop(self, r: Running) -> None:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
            try:
                r.proc.wait(timeout=r.grace)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
        log.info("stopped %s/%s (exit %s)", r.namespace, r.name, r.proc.returncode)

    def _write_targets(self) -> None:
        if not self.file_sd:
            return
        targets = [
            {
                "targets": [f"127.0.0.1:{r.metrics_port}"],
                "labels": {
                    "namespace": r.namespace,
                    "pod": r.name,
                    "job": "roger-worker",
                    **{
                        k.replace(".", "_").replace("/", "_").replace("-", "_"): v
                        for k, v in r.labels.items()
                        if k.startswith("app.kubernetes.io/")
                    },
                },
            }
            for r in self.running.values()
            if r.metrics_port
        ]
        self.file_sd.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file_sd.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets, indent=1))
        tmp.replace(self.file_sd)

    def sync(self) -> None:
        """One pass: start processes for new Running Pods, stop those whose Pod is gone."""
        live = {}
        for pod in self._pods():
            if pod.status.phase == "Running" and not pod.metadata.deletion_timestamp:
                live[pod.metadata.uid] = pod
        for uid in [u for u in self.running if u not in live]:
            self._stop(self.running.pop(uid))
        for uid, pod in live.items():
            r = self.running.get(uid)
            if r is not None and r.proc.poll() is not None:  # crashed: restart like a kubelet
                log.warning("%s/%s exited %s; restarting", r.namespace, r.name, r.proc.returncode)
                del self.running[uid]
            if uid not in self.running:
                self._start(pod)
        self._write_targets()

    def stop_all(self) -> None:
        for r in list(self.running.values()):
            self._stop(r)
        self.running.clear()
        self._write_targets()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selector", default="app.kubernetes.io/component=worker")
    parser.add_argument("--namespace")
    parser.add_argument("--state-dir", type=Path, default=Path(".cluster/localpods"))
    parser.add_argument("--file-sd", type=Path)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config.load_kube_config()  # type: ignore[no-untyped-call]
    pods = LocalPods(
        client.CoreV1Api(), args.selector, args.namespace, args.state_dir, args.file_sd
    )
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping:
        try:
            pods.sync()
        except Exception:  # keep running through API hiccups, like a kubelet
            log.exception("sync failed")
        time.sleep(args.interval)
    pods.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
