"""What every step of `make demo` uses: where things are, and how the tour runs commands,
waits and reports (hack/demo.py is the tour; hack/demo_node.py its real-node step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))  # roger_devtools: the project's helpers, not an installed package
STATE = ROOT / ".cluster"
DEMO = STATE / "demo"
BIN = STATE / "bin"
VENV_BIN = Path(sys.executable).parent
KUBECONFIG = str(STATE / "kubeconfig")
WORKER_TARGETS = STATE / "prometheus" / "targets" / "workers.json"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
NAMESPACE = "demo"
PARTITIONS = ("tenant-a", "tenant-b")
PROMETHEUS = "http://127.0.0.1:9090"
OPERATOR_METRICS_PORT = 9191
OPERATOR_HEALTH_PORT = 9192
SPINNER = "|/-\\"
ENV = {
    **os.environ,
    "KUBECONFIG": KUBECONFIG,
    "PATH": f"{BIN}:{VENV_BIN}:{os.environ['PATH']}",
    # The example jobs and callbacks package lives in examples/ (the worker image's job).
    "PYTHONPATH": f"{ROOT / 'examples'}:{os.environ.get('PYTHONPATH', '')}",
    "ROGER_AMQP_URL": AMQP_URL,
}


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def sh(*cmd: str, check: bool = True, capture: bool = False) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, text=True, capture_output=capture)
    if check and proc.returncode != 0:
        sys.exit(f"demo: `{' '.join(cmd)}` failed:\n{proc.stderr if capture else ''}")
    return proc.stdout if capture else ""


def kubectl(*args: str, check: bool = True) -> str:
    return sh(str(BIN / "kubectl"), *args, capture=True, check=check)


def wait(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Poll until ``check`` is truthy, showing progress (a spinner on a terminal)."""
    tty = sys.stdout.isatty()
    started = last_note = time.monotonic()
    if not tty:
        print(f"    waiting for {what} ...", flush=True)
    i = 0
    while time.monotonic() - started < timeout:
        try:
            result = check()
            if result:
                prefix = "\r" if tty else ""
                took = time.monotonic() - started
                print(f"{prefix}    {what}: ok ({took:.0f}s)          ", flush=True)
                return result
        except Exception:  # not ready yet
            pass
        if tty:
            print(f"\r    waiting for {what} {SPINNER[i % 4]}", end="", flush=True)
        elif time.monotonic() - last_note > 15:
            print(f"    ... still waiting ({time.monotonic() - started:.0f}s)", flush=True)
            last_note = time.monotonic()
        i += 1
        time.sleep(0.5)
    sys.exit(f"\ndemo: timed out after {timeout:.0f}s waiting for {what}")


def background(name: str, *cmd: str) -> None:
    """Start a long-running helper once; its pid and log live in .cluster/demo/."""
    DEMO.mkdir(parents=True, exist_ok=True)
    pidfile = DEMO / f"{name}.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), 0)
            print(f"    {name} already running (pid {pidfile.read_text().strip()})")
            return
        except (OSError, ValueError):
            pass
    log = open(DEMO / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    pidfile.write_text(str(proc.pid))
    print(f"    {name} started (pid {proc.pid}, log .cluster/demo/{name}.log)")


def prom_query(query: str) -> list[dict[str, Any]]:
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return list(json.load(resp)["data"]["result"])


def partition(name: str) -> dict[str, Any]:
    return dict(json.loads(kubectl("get", "partition", name, "-n", NAMESPACE, "-o", "json")))


def partition_ready(name: str) -> bool:
    conditions = partition(name).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def workers_ready(expected: int) -> bool:
    """Every local worker process answers /readyz (connected, state caught up, consuming)."""
    targets = [t["targets"][0] for t in json.loads(WORKER_TARGETS.read_text())]
    if len(targets) < expected:
        return False
    for target in targets:
        with urllib.request.urlopen(f"http://{target}/readyz", timeout=2) as resp:
            if resp.status != 200:
                return False
    return True


def indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.rstrip().splitlines())
