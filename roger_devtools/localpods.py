"""A tiny local "kubelet" for kwok nodes: run worker Pods' containers as local processes.

It polls Pods matching a selector, starts one process per Running Pod (command, env,
ConfigMap volumes resolved by ``podspec``), stops it when the Pod goes away, gives each a
loopback metrics port and writes them as Prometheus file_sd targets. The demo and the
e2e tests use it so that Pods the operator creates really process jobs.

Like a kubelet (the rules are in ``kubelet``), it runs the containers' HTTP startup,
liveness and readiness probes against the process, writes the Pod's Ready condition and
``containerStatuses`` (kwok's instant Ready is overwritten on the first pass), kills and
restarts a container whose liveness probe fails, restarts one that exits (with back-off,
its log's tail as the termination message) and reports an image it cannot run (one not
matching ``--runnable-image``) as ErrImagePull / ImagePullBackOff. Nothing here blocks a
pass: probes run in a thread pool, kills are SIGTERM now and SIGKILL on a later pass.
Pods bound to a node kwok does not manage (the real node of ``hack/node.sh``) are left to
that node's own kubelet.
(Over 400 lines: one process supervisor, its state and its I/O are kept together.)

    python -m roger_devtools.localpods --selector app.kubernetes.io/component=worker \
        --state-dir .cluster/localpods --file-sd .cluster/prometheus/targets/workers.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from roger_devtools import kubelet
from roger_devtools.podspec import LocalProcess, UnresolvableEnv, local_process
from roger_devtools.ports import free_port

log = logging.getLogger("roger.localpods")
API_TIMEOUT = 10.0  # a request hung on a restarted API server must not stall every pod
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"  # hack/cluster.sh: kwok manages nodes with it "fake"
RESEND_EVERY = 30.0  # rewrite an unchanged status this often (nobody else may own it)


@dataclass
class Container:
    """One Pod's container as a local process, and what the kubelet knows of it."""

    pod_uid: str
    name: str
    namespace: str
    labels: dict[str, str]
    spec: dict[str, Any]  # the container's spec (probes, ports, image)
    pod_dir: Path
    grace: float
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int | None = None
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> local port
    started_at: float = 0.0
    started_wall: str = ""
    restarts: int = 0
    probes: dict[str, kubelet.ProbeState] = field(default_factory=dict)
    pending: dict[str, Future[bool]] = field(default_factory=dict)
    last_terminated: dict[str, Any] | None = None
    waiting: dict[str, str] | None = None
    restart_at: float = 0.0
    kill_at: float | None = None  # SIGKILL then, if SIGTERM did not end it
    killed_by: str = ""
    sent: str = ""  # the status last written (skip identical patches)
    sent_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def started(self) -> bool:
        startup = self.probes.get("startup")
        return self.alive and (startup is None or startup.result is True)

    def ready(self) -> bool:
        if not self.started() or self.kill_at is not None:
            return False
        readiness = self.probes.get("readiness")
        return readiness is None or readiness.result is True

    def status(self) -> dict[str, Any]:
        """The container's ``containerStatuses[]`` entry."""
        state: dict[str, Any]
        if self.alive:
            state = {"running": {"startedAt": self.started_wall}}
        else:
            state = {"waiting": dict(self.waiting or {"reason": "ContainerCreating"})}
        out: dict[str, Any] = {
            "name": self.spec["name"],
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready(),
            "started": self.started(),
            "restartCount": self.restarts,
            "state": state,
        }
        if self.last_terminated:
            out["lastState"] = {"terminated": dict(self.last_terminated)}
        return out


def _is_roger_worker(argv: list[str]) -> bool:
    return len(argv) >= 2 and os.path.basename(argv[0]) == "roger" and argv[1] == "worker"


def _wall() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def http_probe(port: int, path: str, timeout: float) -> bool:
    """A kubelet httpGet probe: any status from 200 to 399 succeeds."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return 200 <= int(r.status) < 400
    except urllib.error.HTTPError as exc:
        return 200 <= exc.code < 400
    except (OSError, ValueError):
        return False


class LocalPods:
    def __init__(
        self,
        api: client.CoreV1Api,
        selector: str,
        namespace: str | None,
        state_dir: Path,
        file_sd: Path | None,
        runnable_images: tuple[str, ...] = kubelet.RUNNABLE_IMAGES,
    ) -> None:
        self.api = api
        self.selector = selector
        self.namespace = namespace
        self.state_dir = state_dir
        self.file_sd = file_sd
        self.runnable_images = runnable_images
        self.running: dict[str, Container] = {}
        self.stopping: list[Container] = []  # deleted pods' processes, within their grace
        self.prober = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")

    def _pods(self) -> list[Any]:
        if self.namespace:
            items = self.api.list_namespaced_pod(
                self.namespace, label_selector=self.selector, _request_timeout=API_TIMEOUT
            ).items
        else:
            items = self.api.list_pod_for_all_namespaces(
                label_selector=self.selector, _request_timeout=API_TIMEOUT
            ).items
        return list(items)

    def _kwok_nodes(self) -> set[str]:
        """The nodes kwok fakes (hack/cluster.sh annotates them): only their Pods are ours."""
        nodes: list[Any] = self.api.list_node(_request_timeout=API_TIMEOUT).items
        return {
            n.metadata.name
            for n in nodes
            if (n.metadata.annotations or {}).get(KWOK_NODE_ANNOTATION) == "fake"
        }

    def _data(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        try:
            if kind == "secret":
                raw = (
                    self.api.read_namespaced_secret(
                        name, namespace, _request_timeout=API_TIMEOUT
                    ).data
                    or {}
                )
                return {k: base64.b64decode(v).decode() for k, v in raw.items()}
            return dict(
                self.api.read_namespaced_config_map(
                    name, namespace, _request_timeout=API_TIMEOUT
                ).data
                or {}
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return {}
            raise

    def _describe(self, raw: dict[str, Any], pod_dir: Path) -> LocalProcess:
        ns = raw["metadata"]["namespace"]
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

    def _adopt(self, raw: dict[str, Any]) -> Container:
        meta = raw["metadata"]
        pod_dir = self.state_dir / meta["namespace"] / meta["name"]
        return Container(
            meta["uid"],
            meta["name"],
            meta["namespace"],
            dict(meta.get("labels") or {}),
            raw["spec"]["containers"][0],
            pod_dir,
            float(raw["spec"].get("terminationGracePeriodSeconds") or 30),
        )

    def _start(self, c: Container, raw: dict[str, Any]) -> None:
        image = str(c.spec.get("image", ""))
        if not kubelet.runnable(image, self.runnable_images):
            pulled_before = c.waiting is not None and c.waiting.get("reason") == "ErrImagePull"
            c.waiting = {
                "reason": "ImagePullBackOff" if pulled_before else "ErrImagePull",
                "message": f'Back-off pulling image "{image}"'
                if pulled_before
                else f'failed to pull image "{image}": not found (localpods runs only '
                f"images matching {', '.join(self.runnable_images)})",
            }
            c.restart_at = time.monotonic() + 5
            return
        try:
            desc = self._describe(raw, c.pod_dir)
        except UnresolvableEnv as exc:
            log.warning("not starting %s: %s", c.key, exc)
            c.waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
            c.restart_at = time.monotonic() + 5
            return
        for rel, content in desc.files.items():
            path = c.pod_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        c.pod_dir.mkdir(parents=True, exist_ok=True)
        argv = list(desc.argv)
        c.ports = {}
        if _is_roger_worker(argv):
            argv[0] = shutil.which("roger") or argv[0]
            c.metrics_port = free_port()
            argv += ["--metrics-port", str(c.metrics_port)]
            for p in c.spec.get("ports") or ():
                if p.get("name") == "metrics":
                    c.ports[int(p["containerPort"])] = c.metrics_port
        env = {**os.environ, **desc.env}
        log_path = c.pod_dir / "process.log"
        log_path.write_bytes(b"")  # this run's log: its tail is the termination message
        logf = open(log_path, "ab")  # noqa: SIM115 - owned by the child
        c.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=c.pod_dir,
            start_new_session=True,
        )
        logf.close()
        c.started_at, c.started_wall = time.monotonic(), _wall()
        c.waiting, c.kill_at, c.killed_by = None, None, ""
        c.probes = {
            kind: kubelet.ProbeState.start(probe, c.started_at)
            for kind, probe in kubelet.probes_of(c.spec).items()
        }
        c.pending = {}
        log.info("started %s (pid %d, metrics 127.0.0.1:%s)", c.key, c.proc.pid, c.metrics_port)

    def _kill(self, c: Container, grace: float, why: str) -> None:
        """SIGTERM now, SIGKILL after ``grace`` seconds (checked on later passes)."""
        if c.proc is None or c.kill_at is not None:
            return
        log.warning("killing %s: %s", c.key, why)
        c.killed_by = why
        with contextlib.suppress(ProcessLookupError):
            c.proc.send_signal(signal.SIGTERM)  # to the container's main process, as runc
        c.kill_at = time.monotonic() + grace

    def _reap(self, c: Container, now: float) -> None:
        """A container whose process ended: record it, schedule its restart (back-off)."""
        assert c.proc is not None
        code = c.proc.returncode
        try:
            tail = (c.pod_dir / "process.log").read_bytes()[-kubelet.TERMINATION_MESSAGE_BYTES :]
        except OSError:
            tail = b""
        reason = "Completed" if code == 0 else "Error"
        c.last_terminated = {
            "exitCode": 128 - code if code < 0 else code,  # killed by a signal: 128 + signal
            "reason": reason,
            "startedAt": c.started_wall,
            "finishedAt": _wall(),
        }
        if code != 0 and tail:  # FallbackToLogsOnError
            c.last_terminated["message"] = kubelet.termination_message(tail)
        ran = now - c.started_at
        c.restarts += 1
        c.proc, c.probes, c.pending, c.kill_at = None, {}, {}, None
        delay = kubelet.restart_delay(c.restarts, ran)
        c.restart_at = now + delay
        c.waiting = {
            "reason": "CrashLoopBackOff",
            "message": f"back-off {delay:.0f}s restarting failed container={c.spec['name']} "
            f"pod={c.name}",
        }
        log.warning("%s exited %s after %.0fs; restart in %.0fs", c.key, code, ran, delay)

    def _probe(self, c: Container, now: float) -> None:
        """Collect finished probes, start due ones, act on startup and liveness failures."""
        for kind, future in list(c.pending.items()):
            if future.done():
                del c.pending[kind]
                c.probes[kind].record(future.result(), now)
        startup = c.probes.get("startup")
        kinds = ["startup"] if startup is not None and startup.result is not True else []
        if not kinds:
            kinds = [k for k in ("liveness", "readiness") if k in c.probes]
        for kind in kinds:
            state = c.probes[kind]
            if kind not in c.pending and state.due(now):
                port = kubelet.local_port(state.probe.port, c.spec, c.ports)
                c.pending[kind] = self.prober.submit(
                    http_probe, port, state.probe.path, state.probe.timeout
                )
                state.next_at = now + state.probe.period  # no second one while this runs
        for kind in ("startup", "liveness"):
            failed = c.probes.get(kind)
            if failed is not None and failed.result is False:
                grace = failed.probe.grace if failed.probe.grace is not None else c.grace
                self._kill(c, grace, f"{kind} probe failed {failed.failures} times")

    def _tick(self, c: Container, raw: dict[str, Any], now: float) -> None:
        if c.proc is not None and c.proc.poll() is not None:
            self._reap(c, now)
        if c.proc is None:
            if now >= c.restart_at:
                self._start(c, raw)
        elif c.kill_at is not None:
            if now >= c.kill_at:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
        else:
            self._probe(c, now)
        self._report(c, raw, now)

    def _report(self, c: Container, raw: dict[str, Any], now: float) -> None:
        status = c.status()
        sent = json.dumps(status, sort_keys=True)
        if sent == c.sent and now - c.sent_at < RESEND_EVERY:
            return
        patch = kubelet.pod_status_patch(raw.get("status") or {}, status, _wall())
        if patch is not None:
            try:
                self.api.patch_namespaced_pod_status(
                    c.name,
                    c.namespace,
                    patch,
                    _content_type="application/merge-patch+json",
                    _request_timeout=API_TIMEOUT,
                )
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
        c.sent, c.sent_at = sent, now

    def _stop(self, c: Container) -> None:
        """The pod is gone: SIGTERM now, SIGKILL after its grace period (later passes)."""
        if c.alive:
            self._kill(c, c.grace, "pod deleted")
            self.stopping.append(c)
        log.info("stopping %s", c.key)

    def _finish_stopping(self, now: float) -> None:
        for c in list(self.stopping):
            if c.proc is None or c.proc.poll() is not None:
                self.stopping.remove(c)
                log.info("stopped %s (exit %s)", c.key, c.proc.returncode if c.proc else None)
            elif c.kill_at is not None and now >= c.kill_at:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGKILL)

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
            if r.metrics_port and r.alive
        ]
        self.file_sd.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file_sd.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets, indent=1))
        tmp.replace(self.file_sd)

    def sync(self) -> None:
        """One pass: run new Running Pods' containers, probe them, restart what died or
        failed its liveness probe, report each container's status, stop deleted Pods'."""
        now = time.monotonic()
        live = {}
        kwok_nodes = self._kwok_nodes()
        for pod in self._pods():
            if pod.spec.node_name not in kwok_nodes:
                continue  # not scheduled yet, or a real kubelet's
            if pod.status.phase == "Running" and not pod.metadata.deletion_timestamp:
                live[pod.metadata.uid] = pod
        for uid in [u for u in self.running if u not in live]:
            self._stop(self.running.pop(uid))
        for uid, pod in live.items():
            raw = self.api.api_client.sanitize_for_serialization(pod)
            c = self.running.get(uid)
            if c is None:
                c = self.running[uid] = self._adopt(raw)
            try:
                self._tick(c, raw, now)
            except client.ApiException as exc:
                log.warning("%s: %s", c.key, exc)
        self._finish_stopping(now)
        self._write_targets()

    def stop_all(self) -> None:
        for c in list(self.running.values()):
            self._stop(c)
        self.running.clear()
        deadline = time.monotonic() + max((c.grace for c in self.stopping), default=0)
        while self.stopping and time.monotonic() < deadline + 1:
            self._finish_stopping(time.monotonic())
            time.sleep(0.1)
        self.prober.shutdown(wait=False, cancel_futures=True)
        self._write_targets()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selector", default="app.kubernetes.io/component=worker")
    parser.add_argument("--namespace")
    parser.add_argument("--state-dir", type=Path, default=Path(".cluster/localpods"))
    parser.add_argument("--file-sd", type=Path)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument(
        "--runnable-image",
        action="append",
        help="glob of images it can run (repeatable); others are reported as ErrImagePull "
        f"(default: {' '.join(kubelet.RUNNABLE_IMAGES)})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config.load_kube_config()  # type: ignore[no-untyped-call]
    pods = LocalPods(
        client.CoreV1Api(),
        args.selector,
        args.namespace,
        args.state_dir,
        args.file_sd,
        tuple(args.runnable_image or kubelet.RUNNABLE_IMAGES),
    )
    stopping = False
    log.info("running pods %s in %s", args.selector, args.namespace or "all namespaces")

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
