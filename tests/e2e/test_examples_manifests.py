"""The example manifests are accepted by the API server with the project's CRDs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Kubectl

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROGER = ["secret-rabbitmq.yaml", "callback-audit.yaml", "partition-tenant-a.yaml"]
ROGER += ["partition-tenant-b.yaml", "schedule-tenant-a.yaml"]


def test_examples_pass_server_side_validation(kubectl: Kubectl, namespace: str) -> None:
    # Restricted, so that a pod template that would violate it shows as a warning.
    kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    for name in [*ROGER, "rabbitmq-dev.yaml"]:
        proc = kubectl.run("-n", namespace, "apply", "--dry-run=server", "-f", str(EXAMPLES / name))
        assert "created (server dry run)" in proc.stdout, (name, proc.stdout)
        assert "PodSecurity" not in proc.stderr, (name, proc.stderr)
    # The schema really applies: a broken copy is refused with a message.
    bad = (
        (EXAMPLES / "partition-tenant-a.yaml")
        .read_text()
        .replace("maxWorkers: 10", "maxWorkers: -1")
    )
    proc = kubectl.run(
        "-n", namespace, "apply", "--dry-run=server", "-f", "-", stdin=bad, check=False
    )
    assert proc.returncode != 0 and "maxWorkers" in proc.stderr, proc.stderr
