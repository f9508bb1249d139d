"""``pip install roger-k8s`` without extras: the worker runs and the client enqueues with no
kopf and no kubernetes, and a feature that needs an extra says which one.

The package is installed (not editable) into a venv of its own with uv, as a user would,
with every dependency at the floor pyproject.toml allows (``--resolution lowest-direct``):
this proves the bare install's floors; ``make test-lowest`` proves the extras' floors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

from roger_devtools.polling import eventually
from roger_devtools.ports import free_port
from tests.integration.support import Broker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is in the test dependency group"
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    python = ["--python", str(venv / "bin" / "python")]
    subprocess.run(
        [uv, "pip", "install", "-q", "--resolution", "lowest-direct", *python, str(ROOT)],
        check=True,
        timeout=300,
    )
    return venv


def _run(venv: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        **kw,  # type: ignore[call-overload]
    )


def test_the_bare_install_has_neither_kopf_nor_kubernetes(bare_venv: Path) -> None:
    for module in ("kopf", "kubernetes"):
        assert _run(bare_venv, "python", "-c", f"import {module}").returncode != 0, module
    assert _run(bare_venv, "python", "-c", "import roger, pika, prometheus_client").returncode == 0


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in [*version.split("."), "0", "0"][:3])


def test_the_bare_install_runs_on_the_floors(bare_venv: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    show = "import sys, importlib.metadata as m; print(m.version(sys.argv[1]))"
    for requirement in project["dependencies"]:
        name, floor = re.fullmatch(r"([\w.-]+)>=([\d.]+)", requirement).groups()  # type: ignore[union-attr]
        installed = _run(bare_venv, "python", "-c", show, name).stdout.strip()
        assert _release(installed) == _release(floor), (name, installed)


def test_the_operator_names_its_extra(bare_venv: Path) -> None:
    result = _run(bare_venv, "roger-operator")
    assert result.returncode == 2
    assert "pip install 'roger-k8s[operator]'" in result.stderr
    assert "kopf" in result.stderr and "Traceback" not in result.stderr


def test_the_kubectl_plugin_needs_no_extra(bare_venv: Path) -> None:
    """``kubectl-roger`` calls the user's kubectl: no kubernetes library, no extra."""
    assert "kubectl roger VERB" in _run(bare_venv, "kubectl-roger", "--help").stdout
    env = {**os.environ, "PATH": str(bare_venv / "bin"), "KUBECTL": ""}
    result = _run(bare_venv, "kubectl-roger", "jobs", "tenant-a", "-n", "demo", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "kubectl not found on PATH" in result.stderr


def test_worker_runs_and_client_enqueues_without_extras(
    bare_venv: Path, amqp_url: str, unique_name: str, broker: Broker, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "worker.log"
    out = tmp_path / "out.txt"
    env = {**os.environ, "ROGER_AMQP_URL": amqp_url}
    env.pop("PYTHONPATH", None)
    cmd = [str(bare_venv / "bin" / "roger"), "--log-format", "json"]
    cmd += ["worker", "--partition", unique_name]
    cmd += ["--queue", "default=2", "--jobs", "tests.jobs.basic", "--metrics-port", str(port)]
    cmd += ["--kube-namespace", "default"]  # asks for Events, which need the [events] extra
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        eventually(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
            ),
            timeout=60,
            message="worker ready",
        )
        enqueue = (
            "import sys, roger; roger.Client(sys.argv[1]).enqueue(sys.argv[2], "
            "'tests.jobs.basic:ok', {'out': sys.argv[3]})"
        )
        result = _run(bare_venv, "python", "-c", enqueue, amqp_url, unique_name, str(out), cwd=ROOT)
        assert result.returncode == 0, result.stderr
        eventually(lambda: out.exists() and out.read_text().startswith("ok"), message="job ran")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        info = f'roger_worker_info{{partition="{unique_name}",version="{version}"}} 1.0'
        assert info in metrics.decode() and b"\nprocess_resident_memory_bytes " in metrics
        assert b'job_name="tests.jobs.basic:ok"' in metrics
        entries = [json.loads(line) for line in log.read_text().splitlines()]  # JSON lines
        assert any(
            e["message"].startswith("Kubernetes Events off")
            and "pip install 'roger-k8s[events]'" in e["message"]
            and e["level"] == "WARNING"
            for e in entries
        ), entries
    finally:
        proc.terminate()
        proc.wait(timeout=30)
