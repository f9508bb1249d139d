"""Session-scoped services and per-test isolation shared by every test tier.

Services are started by the project's own scripts (the same ones `make` uses), once per
session. A test marked ``integration`` gets RabbitMQ; ``e2e`` gets the cluster too.

`make test` runs the suite in two phases: everything not marked ``exclusive`` in three pytest
sessions side by side, the kube, broker and clock streams (roger_devtools/test_streams.py,
each with its own name tag), then the ``exclusive`` tests alone.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from roger_devtools.test_streams import STREAM_ENV
from tests.brokers import BROKER
from tests.helpers import TEST_TAG, Kubectl, install_crds

ROOT = Path(__file__).resolve().parents[1]
AMQP_URL = os.environ.get("ROGER_TEST_AMQP_URL", BROKER.amqp_url)


def _run(*cmd: str) -> None:
    subprocess.run(cmd, cwd=ROOT, check=True)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """A running local RabbitMQ (3.10, or 4.0: tests/brokers.py); started once per session."""
    _run("bash", BROKER.script, "up")
    return AMQP_URL


@pytest.fixture(scope="session")
def kubeconfig(amqp_url: str) -> str:
    """A running local control plane (etcd, apiserver, controllers, kwok) via hack/cluster.sh."""
    _run("bash", "hack/cluster.sh", "up")
    path = str(ROOT / ".cluster" / "kubeconfig")
    os.environ["KUBECONFIG"] = path
    return path


@pytest.fixture(scope="session")
def kubectl_bin(kubeconfig: str) -> str:
    return str(ROOT / ".cluster" / "bin" / "kubectl")


@pytest.fixture(scope="session")
def kubectl(kubectl_bin: str, kubeconfig: str) -> Kubectl:
    """kubectl against the local cluster, with the project's CRDs installed once per session:
    nearly every e2e test needs them, and applying them per module only re-did the same work
    (a module that changes them, like test_chart_upgrade, puts them back itself)."""
    k = Kubectl(kubectl_bin, kubeconfig)
    install_crds(k)
    return k


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A short name no other test uses: for partitions, namespaces, queues."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:30].strip("-")
    return f"{TEST_TAG}-{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(kubeconfig: str, kubectl_bin: str, unique_name: str) -> Iterator[str]:
    """A namespace of the test's own, deleted afterwards (without waiting)."""
    subprocess.run(
        [kubectl_bin, "--kubeconfig", kubeconfig, "create", "namespace", unique_name],
        check=True,
        capture_output=True,
    )
    yield unique_name
    subprocess.run(
        [
            kubectl_bin,
            "--kubeconfig",
            kubeconfig,
            "delete",
            "namespace",
            unique_name,
            "--wait=false",
        ],
        check=False,
        capture_output=True,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test declares its tier; an unmarked test is a mistake, not a unit test."""
    tiers = {"unit", "integration", "e2e"}
    for item in items:
        if not tiers & {m.name for m in item.iter_markers()}:
            raise pytest.UsageError(f"{item.nodeid} has no tier marker (unit/integration/e2e)")
        exclusive = item.get_closest_marker("exclusive")
        if exclusive is not None and not (exclusive.args and isinstance(exclusive.args[0], str)):
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.exclusive(why) needs why")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """An ``exclusive`` test never runs beside others: in a stream of `make test`'s first
    phase it fails at once, saying why (the second phase runs the exclusive ones alone)."""
    exclusive = item.get_closest_marker("exclusive")
    if exclusive is not None and STREAM_ENV in os.environ:
        pytest.fail(
            f"exclusive ({exclusive.args[0]}): run it alone, not in a stream beside another "
            "(select the others with -m 'not exclusive')",
            pytrace=False,
        )


SKIPS_ALLOWED_ENV = "ROGER_ALLOW_SKIPS"  # a developer's partial run, never `make test`


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped or xfailed test is a test that did not run: the session fails, so it is
    never counted as a pass (helm not built, say). ``ROGER_ALLOW_SKIPS=1`` for a local
    run that knows what it leaves out."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0 or os.environ.get(SKIPS_ALLOWED_ENV):
        return
    missed = [r.nodeid for kind in ("skipped", "xfailed") for r in reporter.stats.get(kind, ())]
    if missed:
        reporter.write_line(
            f"{len(missed)} test(s) skipped or xfailed count as failures "
            f"(set {SKIPS_ALLOWED_ENV}=1 to allow): {', '.join(missed[:10])}",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
