"""``helm upgrade`` from the previous chart version upgrades the CRDs.

Chart 0.1.0 (tests/e2e/fixtures/roger-chart-0.1.0.tgz, the chart as released) shipped its
CRDs in crds/, which Helm installs once and never upgrades. This chart templates them: the
first upgrade adopts them (``--take-ownership``), the new schema (descriptions, defaults,
a new field) reaches the API server, a Partition created under the old schema reads with
the new defaults, and ``helm uninstall`` keeps the CRDs and the Partition.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from roger_devtools.polling import eventually
from tests.chart import CHART, HELM
from tests.e2e.observe_support import partition_manifest
from tests.helpers import Kubectl, install_crds

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.exclusive("puts back chart 0.1.0's CRDs: every e2e test's objects go through them"),
]

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS = ROOT / "tests" / "e2e" / "fixtures" / "roger-chart-0.1.0.tgz"
CRDS = ("partitions.roger.dev", "callbacks.roger.dev")


def helm(kubeconfig: str, *args: str) -> str:
    proc = subprocess.run(
        [str(HELM), "--kubeconfig", kubeconfig, *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture
def previous_chart(tmp_path: Path) -> Path:
    if not HELM.exists():
        pytest.skip("helm not built: run `make tools`")
    with tarfile.open(PREVIOUS) as tar:
        tar.extractall(tmp_path, filter="data")
    chart = tmp_path / "roger"
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["version"] == "0.1.0"
    return chart


@pytest.fixture
def release(kubeconfig: str, namespace: str) -> Iterator[str]:
    name = f"u{uuid.uuid4().hex[:6]}"
    yield name
    subprocess.run(
        [str(HELM), "--kubeconfig", kubeconfig, "uninstall", name, "-n", namespace, "--wait"],
        capture_output=True,
    )


@pytest.fixture
def current_crds_after(kubectl: Kubectl) -> Iterator[None]:
    """The test puts back chart 0.1.0's CRDs; the session shares the current ones (the
    ``kubectl`` fixture installs them once), so they are installed again afterwards, even
    when the test failed before its upgrade."""
    yield
    install_crds(kubectl)


def _put_back_old_crds(kubectl: Kubectl, chart: Path) -> None:
    """The CRDs exactly as chart 0.1.0 created them: unowned, the old schema (a PUT, so
    nothing of a newer schema or of Helm's ownership is left over)."""
    for path in sorted((chart / "crds").glob("*.yaml")):
        old = yaml.safe_load(path.read_text())
        name = old["metadata"]["name"]
        live = kubectl.run("get", "crd", name, check=False)
        if live.returncode != 0:
            kubectl.run("create", "-f", str(path))
        else:
            old["metadata"]["resourceVersion"] = kubectl.get_json("crd", name)["metadata"][
                "resourceVersion"
            ]
            kubectl.run("replace", "-f", "-", stdin=json.dumps(old))
        kubectl.run("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def _worker_schema(kubectl: Kubectl) -> dict[str, Any]:
    crd = kubectl.get_json("crd", "partitions.roger.dev")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return dict(spec["properties"]["worker"]["properties"])


@pytest.mark.usefixtures("current_crds_after")
def test_helm_upgrade_from_the_previous_chart_upgrades_the_crds(
    kubeconfig: str, kubectl: Kubectl, namespace: str, release: str, previous_chart: Path
) -> None:
    _put_back_old_crds(kubectl, previous_chart)
    assert "default" not in _worker_schema(kubectl)["shutdownTimeout"]
    helm(kubeconfig, "install", release, str(previous_chart), "-n", namespace, "--wait")
    kubectl.apply(partition_manifest("month-old", namespace))
    before = kubectl.get_json("-n", namespace, "partition", "month-old")
    assert "shutdownTimeout" not in before["spec"]["worker"]

    out = helm(
        kubeconfig, "upgrade", release, str(CHART), "-n", namespace,
        "--take-ownership", "--wait",
    )  # fmt: skip
    assert "STATUS: deployed" in out and "REVISION: 2" in out

    for name in CRDS:
        meta = kubectl.get_json("crd", name)["metadata"]
        assert meta["annotations"]["meta.helm.sh/release-name"] == release
        assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    worker = _worker_schema(kubectl)
    assert worker["shutdownTimeout"]["default"] == 10
    assert worker["logFormat"]["enum"] == ["text", "json"]
    # The Partition stored under the old schema reads with the new defaults.
    after = kubectl.get_json("-n", namespace, "partition", "month-old")
    assert after["spec"]["worker"]["shutdownTimeout"] == 10
    assert after["spec"]["events"]["hooks"][-1] == "on_buried"
    # kubectl explain serves the new descriptions (the OpenAPI is republished shortly).
    eventually(
        lambda: (
            "Ready, Progressing, Degraded"
            in kubectl.run("explain", "partitions.status.conditions", check=False).stdout
        ),
        timeout=60,
        message="kubectl explain shows the new descriptions",
    )

    helm(kubeconfig, "uninstall", release, "-n", namespace, "--wait")
    for name in CRDS:
        assert kubectl.run("get", "crd", name, check=False).returncode == 0, name
    assert kubectl.get_json("-n", namespace, "partition", "month-old")["metadata"]["name"]
