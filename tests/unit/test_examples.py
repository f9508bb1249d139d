"""examples/: the jobs package, the callbacks class, manifests and Dockerfiles fit together."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from roger.core.hooks import implemented_hooks
from roger.core.jobs import JobDefinition

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def myapp() -> Iterator[None]:
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield
    finally:
        sys.path.remove(str(EXAMPLES))
        for name in [m for m in sys.modules if m == "myapp" or m.startswith("myapp.")]:
            del sys.modules[name]


def _manifests() -> list[dict]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_jobs_of_every_outcome_are_decorated(myapp: None) -> None:
    jobs = importlib.import_module("myapp.jobs")
    defs = {n: v for n, v in vars(jobs).items() if isinstance(v, JobDefinition)}
    assert set(defs) == {
        "send_welcome",
        "sync_mailbox",
        "charge_card",
        "import_report",
        "import_invoice",
        "build_report",
        "crunch_numbers",
    }
    assert defs["crunch_numbers"].retryable
    assert defs["charge_card"].retryable and not defs["import_report"].retryable
    assert defs["build_report"].max_execution_time == 2


def test_audit_implements_every_hook_and_takes_config(myapp: None) -> None:
    audit_cls = importlib.import_module("myapp.callbacks").Audit
    audit = audit_cls(channel="#alerts")
    assert set(implemented_hooks(audit)) == {
        "before_run",
        "after_run",
        "on_error",
        "on_cancel",
        "on_buried",
    }
    assert audit.channel == "#alerts"


def test_manifests_reference_the_example_package(myapp: None) -> None:
    docs = _manifests()
    partitions = [d for d in docs if d["kind"] == "Partition"]
    callbacks = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Callback"}
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    assert {p["metadata"]["name"] for p in partitions} == {"tenant-a", "tenant-b"}
    for p in partitions:
        spec = p["spec"]
        assert p["apiVersion"] == "roger.dev/v1alpha1"
        assert spec["amqp"]["secretRef"]["name"] in secrets
        for module in spec["jobs"]:
            importlib.import_module(module)
        for name in spec.get("callbacks", []):
            module, _, cls = callbacks[name]["spec"]["module"].partition(":")
            assert callable(getattr(importlib.import_module(module), cls))
        queues = {q["name"] for q in spec["queues"]}
        jobs = importlib.import_module("myapp.jobs")
        for v in vars(jobs).values():
            if isinstance(v, JobDefinition):
                assert v.queue in queues, (v.name, v.queue)


@pytest.mark.parametrize("path", ["worker/Dockerfile", "operator/Dockerfile"])
def test_dockerfiles_are_slim_and_non_root(path: str) -> None:
    text = (ROOT / path).read_text()
    assert "python:3.11-slim" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for src in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.M):
        for part in src.split():
            if not part.startswith("--") and "[" not in part:
                assert (ROOT / part).exists(), (path, part)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored and ".cluster" in ignored


def test_example_image_extends_the_worker_base() -> None:
    text = (EXAMPLES / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{ROGER_WORKER_IMAGE\}", text, re.M)
    assert "COPY myapp /app/myapp" in text
    assert "PYTHONPATH=/app" in (ROOT / "worker/Dockerfile").read_text()


def test_kind_config_maps_loopback_ports_only() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    mappings = [m for n in config["nodes"] for m in n.get("extraPortMappings", [])]
    assert mappings and all(m["listenAddress"] == "127.0.0.1" for m in mappings)
    nodeports = {
        p.get("nodePort")
        for d in _manifests()
        if d["kind"] == "Service"
        for p in d["spec"]["ports"]
    }
    assert 30672 in nodeports and 30672 in {m["containerPort"] for m in mappings}
