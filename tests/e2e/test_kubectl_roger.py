"""``kubectl roger`` through kubectl's own plugin lookup (the ``kubectl-roger`` console script
on PATH), on the local cluster and broker: a tenant allowed by the chart's roles (``edit``)
acts on a Partition by name; an auditor (``view``: Partitions, never Secrets) is refused in
one line; ``top --once`` shows the queues."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from roger.core import naming
from roger_devtools.polling import eventually
from tests.e2e.observe_support import secret_manifest
from tests.e2e.rbac_support import can, tenant_roles
from tests.helpers import Kubectl
from tests.integration.support import Broker, bury_legacy, declare

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TENANTS = "roger-tenants"  # a group: the tenant acts as --as someone --as-group roger-tenants


@dataclass
class Setup:
    namespace: str
    partition_id: str  # spec.partitionId, not the object's name: the plugin must resolve it
    kubeconfig: str
    kubectl_bin: str
    broker: Broker

    def roger(self, *args: str, who: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        """``kubectl roger ARGS -n NS --kubeconfig ... WHO``, found by kubectl on PATH."""
        bins = [Path(sys.executable).parent, Path(self.kubectl_bin).parent]
        path = os.pathsep.join([*map(str, bins), os.environ.get("PATH", "")])
        cmd = [self.kubectl_bin, "roger", *args, "-n", self.namespace]
        cmd += ["--kubeconfig", self.kubeconfig, *who]
        env = {**os.environ, "PATH": path, "KUBECTL": self.kubectl_bin}
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)


TENANT = ("--as", "alice", "--as-group", TENANTS)
AUDITOR = ("--as", "auditor")


@pytest.fixture
def setup(
    kubeconfig: str,
    kubectl_bin: str,
    kubectl: Kubectl,
    namespace: str,
    unique_name: str,
    amqp_url: str,
) -> Iterator[Setup]:
    kubectl.apply(secret_manifest(namespace, amqp_url))
    partition = {
        "apiVersion": "roger.dev/v1alpha1",
        "kind": "Partition",
        "metadata": {"name": "tenant-a", "namespace": namespace},
        "spec": {
            "partitionId": f"{unique_name}-p",
            "amqp": {"secretRef": {"name": "rabbitmq", "key": "url"}},
            "worker": {"image": "example/jobs-worker:1.0", "replicas": 0},
            "jobs": ["tests.jobs.basic"],
            "queues": [{"name": "default", "maxWorkers": 1}],
        },
    }
    kubectl.apply(json.dumps(partition))
    broker = Broker(amqp_url)
    with tenant_roles(kubectl):
        kubectl.run("-n", namespace, "create", "rolebinding", "tenants", "--clusterrole=edit",
                    f"--group={TENANTS}")  # fmt: skip
        kubectl.run("-n", namespace, "create", "rolebinding", "auditor", "--clusterrole=view",
                    "--user=auditor")  # fmt: skip
        eventually(
            lambda: can(kubectl, "auditor", "get", "partitions.roger.dev", namespace),
            timeout=30,
            message="the chart's view role aggregated",
        )
        try:
            yield Setup(namespace, f"{unique_name}-p", kubeconfig, kubectl_bin, broker)
        finally:
            broker.delete_partition(f"{unique_name}-p")
            broker.close()


def test_a_tenant_acts_on_a_partition_by_name(setup: Setup) -> None:
    pid = setup.partition_id
    declare(setup.broker, pid)
    bury_legacy(setup.broker, pid, ["buried-1"], kind="KeyError")

    listed = setup.roger("buried", "list", "tenant-a", "-o", "json", who=TENANT)
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout)] == ["buried-1"]
    assert json.loads(listed.stdout)[0]["error_kind"] == "KeyError"

    shown = setup.roger("buried", "show", "tenant-a", "buried-1", who=TENANT)
    assert shown.returncode == 0 and '"buried-1"' in shown.stdout, shown.stderr
    replayed = setup.roger("buried", "replay", "tenant-a", "--id", "buried-1", who=TENANT)
    assert replayed.returncode == 0, replayed.stderr
    assert "1 replayed, 0 refused" in replayed.stdout
    main = naming.queue_name(pid, "default")
    eventually(lambda: setup.broker.count(main) == 1, 20, message="replayed into its queue")

    enqueued = setup.roger("enqueue", "tenant-a", "tests.jobs.basic:ok", '{"n": 1}', "--id",
                           "from-kubectl", who=TENANT)  # fmt: skip
    assert enqueued.returncode == 0 and enqueued.stdout.strip() == "from-kubectl", enqueued.stderr
    jobs = setup.roger("jobs", "tenant-a", "--json", who=TENANT)
    assert jobs.returncode == 0, jobs.stderr
    assert {r["id"] for r in json.loads(jobs.stdout)["queued"]["default"]} == {
        "buried-1",
        "from-kubectl",
    }
    info = setup.roger("info", "tenant-a", "--json", who=TENANT)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["partition"] == pid  # spec.partitionId, not the name

    top = setup.roger("top", "--once", who=TENANT)
    assert top.returncode == 0, top.stderr
    row = next(ln.split() for ln in top.stdout.splitlines() if ln.startswith(setup.namespace))
    assert row[:4] == [setup.namespace, "tenant-a", "default", "2"], top.stdout  # READY 2


def test_a_user_who_may_not_read_the_secret_is_refused_in_one_line(
    setup: Setup, kubectl: Kubectl
) -> None:
    assert can(kubectl, "auditor", "get", "partitions.roger.dev", setup.namespace)
    assert not can(kubectl, "auditor", "get", "secrets", setup.namespace)
    for args in (("buried", "list", "tenant-a"), ("jobs", "tenant-a"), ("purge", "tenant-a",
                 "--queue", "default", "--yes")):  # fmt: skip
        out = setup.roger(*args, who=AUDITOR)
        assert out.returncode == 6, (args, out.stdout, out.stderr)
        assert out.stdout == ""
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith(f"kubectl roger: cannot read Secret {setup.namespace}/rabbitmq")
        assert "RBAC forbids it" in line and 'User "auditor"' in line
    top = setup.roger("top", "--once", who=AUDITOR)
    assert top.returncode == 1
    assert "RBAC forbids it" in top.stdout and "Traceback" not in top.stderr
    nobody = setup.roger("buried", "list", "tenant-a", who=("--as", "nobody"))
    assert nobody.returncode == 6
    assert "cannot read Partition tenant-a" in nobody.stderr and "RBAC" in nobody.stderr
