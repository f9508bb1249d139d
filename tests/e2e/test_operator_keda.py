"""spec.autoscaling.engine keda on the local cluster, against KEDA's own CRDs.

The CRDs come from the Go module github.com/kedacore/keda/v2 pinned in hack/tools/keda
(``hack/keda.sh crds``): the rendered ScaledObjects pass KEDA's real schema in a server-side
dry run (strict field validation: nothing dropped), and the operator creates, owns and
removes them. Every operator test is named ``test_operator_keda_*`` so this module's
operator (namespace glob) sees only its namespaces.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

import roger
from roger_devtools.polling import eventually
from roger_operator.builders import autoscale as a
from roger_operator.builders.keda import keda_manifests, keda_settings
from roger_operator.builders.model import parse_partition
from tests.e2e import autoscale_support as support
from tests.e2e.autoscale_support import apply_partition, replicas
from tests.e2e.operator_support import (
    ROOT,
    OperatorProcess,
    get_or_none,
    partition_manifest,
    short_id,
    wait_gone,
)
from tests.helpers import TEST_TAG, Kubectl

pytestmark = pytest.mark.e2e
# The shared fixtures (autoscale_support), used by name.
kubectl, ns, autoscaling_fields = support.kubectl, support.ns, support.autoscaling_fields


@pytest.fixture(scope="module")
def keda_crds(kubectl: Kubectl, kubeconfig: str) -> str:
    """KEDA's CRDs applied to the local API server; their version."""
    env = {**os.environ, "KUBECONFIG": kubeconfig, "KUBECTL": kubectl.base[0]}
    subprocess.run(["bash", str(ROOT / "hack" / "keda.sh"), "crds"], env=env, check=True)
    return subprocess.run(
        ["bash", str(ROOT / "hack" / "keda.sh"), "version"], env=env, check=True, text=True,
        capture_output=True,
    ).stdout.strip()  # fmt: skip


def rendered(namespace: str, autoscaling: dict[str, Any], queues: Any) -> list[dict[str, Any]]:
    body = {
        "metadata": {"name": "p", "namespace": namespace, "uid": "0000-u", "generation": 1},
        "spec": {
            "amqp": {"secretRef": {"name": "rabbitmq", "key": "url"}},
            "worker": {"image": "i"},
            "queues": queues,
            "autoscaling": {"engine": "keda", **autoscaling},
        },
    }
    auto = a.parse_autoscaling(body)
    assert auto is not None
    return keda_manifests(parse_partition(body), auto, keda_settings(body))


SPECS = [  # (autoscaling, queues): the shapes the builder renders differently
    ({"maxReplicas": 4}, [{"name": "default", "maxWorkers": 2}]),
    (
        {
            "minReplicas": 0,
            "maxReplicas": 10,
            "targetBacklogPerReplica": 2.5,
            "scaleToZeroCooldownSeconds": 60,
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 15},
                "scaleDown": {"stabilizationWindowSeconds": 120},
            },
            "keda": {"authenticationRef": {"name": "rabbit-management"}},
        },
        [
            {"name": "fast", "maxWorkers": 8},
            {"name": "held", "maxWorkers": 2, "paused": True},
            {"name": "off", "maxWorkers": 0},
        ],
    ),
    (
        {
            "minReplicas": 0,
            "maxReplicas": 1,
            "keda": {"authenticationRef": {"name": "m", "kind": "ClusterTriggerAuthentication"}},
        },
        [{"name": "held", "maxWorkers": 1, "paused": True}],
    ),
]


def dry_run(k: Kubectl, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return k.run(
        "apply", "--dry-run=server", "--validate=strict", "--server-side", "-o", "json",
        "-f", "-", stdin=json.dumps(manifest), check=False,
    )  # fmt: skip


@pytest.mark.parametrize(("autoscaling", "queues"), SPECS)
def test_keda_scaled_object_passes_kedas_own_schema(
    kubectl: Kubectl, keda_crds: str, namespace: str, autoscaling: Any, queues: Any
) -> None:
    for manifest in rendered(namespace, autoscaling, queues):
        done = dry_run(kubectl, manifest)
        assert done.returncode == 0, f"KEDA {keda_crds} refused {manifest['kind']}: {done.stderr}"
        # Nothing pruned or rewritten: what the operator renders is what KEDA reads.
        assert json.loads(done.stdout)["spec"] == manifest["spec"], manifest["kind"]


def test_keda_schema_refuses_what_it_does_not_know(
    kubectl: Kubectl, keda_crds: str, namespace: str
) -> None:
    """The dry run can fail: KEDA's schema refuses a misspelt field and a negative count."""
    so = rendered(namespace, *SPECS[0])[-1]
    typo = copy.deepcopy(so)
    typo["spec"]["advanced"]["scalingModifier"] = typo["spec"]["advanced"].pop("scalingModifiers")
    assert "scalingModifier" in dry_run(kubectl, typo).stderr
    negative = copy.deepcopy(so)
    negative["spec"]["minReplicaCount"] = -1
    assert "minReplicaCount" in dry_run(kubectl, negative).stderr


@pytest.fixture(scope="module")
def operator(
    kubectl: Kubectl, keda_crds: str, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(
        kubeconfig,
        log,
        extra_args=("--autoscale-interval", "1"),
        namespace=f"{TEST_TAG}-test-operator-keda*",
    )
    op.start()
    yield op
    op.stop()


def keda_partition(name: str, namespace: str, engine: str) -> str:
    return partition_manifest(
        name,
        namespace,
        worker={"replicas": 0},
        queues=[{"name": "default", "maxWorkers": 4}],
        autoscaling={"engine": engine, "minReplicas": 0, "maxReplicas": 3},
    )


def set_engine(k: Kubectl, namespace: str, name: str, engine: str) -> None:
    """Through apply_partition, so the shared CRD keeper restores spec.autoscaling if an
    other session's CRD apply pruned it meanwhile."""
    apply_partition(k, keda_partition(name, namespace, engine))


def test_operator_keda_engine_renders_owned_scaled_object_and_builtin_stands_aside(
    operator: OperatorProcess, kubectl: Kubectl, ns: str, amqp_url: str
) -> None:
    k, name = kubectl, short_id()
    child = f"roger-{name}"
    set_engine(k, ns, name, "keda")
    so = eventually(
        lambda: get_or_none(k, "-n", ns, "scaledobject", child),
        timeout=60,
        message="ScaledObject created",
    )
    uid = k.get_json("-n", ns, "partition", name)["metadata"]["uid"]
    owner = so["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Partition", uid, True)
    assert so["spec"]["scaleTargetRef"] == {
        "apiVersion": "roger.dev/v1alpha1",
        "kind": "Partition",
        "name": name,
    }
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (0, 3)
    assert so["spec"]["advanced"]["scalingModifiers"]["formula"] == "q0 / 4"
    auth = k.get_json("-n", ns, "triggerauthentication", child)
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "host", "name": "rabbitmq", "key": "url"}
    ]

    # A backlog the built-in loop would scale up for at once (8 jobs / 4 per pod = 2 pods):
    # with engine keda it does not act, and writes no status.autoscaling.
    with roger.Client(amqp_url) as client:
        for n in range(8):
            client.enqueue(name, "tests.jobs.basic:slow", {"out": os.devnull, "n": n, "sleep": 0})
    for _ in range(6):
        spec_n, _pods, status = replicas(k, ns, name)
        assert spec_n == 0 and not status, (spec_n, status)
        time.sleep(1)

    # Back to builtin: the KEDA objects go, and the built-in loop scales for the backlog.
    set_engine(k, ns, name, "builtin")
    wait_gone(k, "-n", ns, "scaledobject", child, timeout=60)
    wait_gone(k, "-n", ns, "triggerauthentication", child, timeout=60)
    eventually(lambda: replicas(k, ns, name)[0] == 2, timeout=60, message="builtin scaled up")

    # keda again, then the Partition goes: garbage collection takes its ScaledObject.
    set_engine(k, ns, name, "keda")
    eventually(
        lambda: get_or_none(k, "-n", ns, "scaledobject", child),
        timeout=60,
        message="ScaledObject again",
    )
    k.run("-n", ns, "delete", "partition", name, "--timeout=90s")
    wait_gone(k, "-n", ns, "scaledobject", child, timeout=90)
    wait_gone(k, "-n", ns, "triggerauthentication", child, timeout=90)
