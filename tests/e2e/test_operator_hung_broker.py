"""A Partition whose broker hangs never delays the others (issue 18, the operator at scale).

Hung brokers (they accept connections and never answer: ``roger_devtools.silent_server``)
are worse than dead ones: every call to them waits for its timeouts. The operator runs
broker work in one lane per broker (``roger_operator.rabbit.lanes``), and a caller waits
for a lane only a bounded time, so the hung brokers' Partitions report
``BrokerUnavailable`` while every other Partition becomes Ready as quickly as without them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from roger_devtools.polling import eventually
from roger_devtools.silent_server import SilentServer, silent_server
from tests.e2e.operator_support import (
    OperatorProcess,
    condition,
    partition_manifest,
    secret_manifest,
    short_id,
    wait_condition,
)
from tests.e2e.test_operator_flows import ns, operator  # noqa: F401  (fixtures)
from tests.helpers import Kubectl

pytestmark = pytest.mark.e2e

HUNG = 4  # Partitions, each on a broker of its own that hangs
HEALTHY = 20
READY_WITHIN = 240.0  # seconds: a bound for a machine under heavy load, not the claim


@pytest.fixture
def hung_brokers() -> Iterator[list[SilentServer]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(silent_server()) for _ in range(HUNG)]


def ready_count(k: Kubectl, namespace: str, names: list[str]) -> int:
    items = k.get_json("-n", namespace, "partitions")["items"]
    ready = {
        p["metadata"]["name"]
        for p in items
        if condition(p, "Ready").get("status") == "True"
        and (p.get("status") or {}).get("observedGeneration") == p["metadata"]["generation"]
    }
    return len(ready & set(names))


def time_to_ready(k: Kubectl, namespace: str, prefix: str) -> float:
    """Apply HEALTHY Partitions at once; seconds until all are Ready."""
    names = [f"{prefix}-{i}" for i in range(HEALTHY)]
    started = time.monotonic()
    k.apply("---\n".join(partition_manifest(n, namespace, partitionId=short_id()) for n in names))
    eventually(
        lambda: ready_count(k, namespace, names) == HEALTHY,
        READY_WITHIN,
        interval=1.0,
        message=f"{HEALTHY} Partitions {prefix}-* Ready",
    )
    return time.monotonic() - started


@pytest.mark.timeout(900)
def test_operator_hung_brokers_do_not_delay_other_partitions(
    kubectl: Kubectl,
    operator: OperatorProcess,  # noqa: F811
    ns: str,  # noqa: F811
    hung_brokers: list[SilentServer],
) -> None:
    usual = time_to_ready(kubectl, ns, "before")  # the usual time, on this machine, now
    print(f"{HEALTHY} Partitions Ready in {usual:.1f}s alone", flush=True)

    hung = [f"hung-{i}" for i in range(HUNG)]
    try:
        for name, server in zip(hung, hung_brokers, strict=True):
            kubectl.apply(secret_manifest(ns, server.amqp_url, name=name))
            kubectl.apply(
                partition_manifest(
                    name,
                    ns,
                    amqp={"secretRef": {"name": name, "key": "url"}},
                    partitionId=short_id(),
                )
            )
        # The operator is now waiting on every hung broker.
        eventually(lambda: all(s.accepted for s in hung_brokers), 30, message="operator connects")

        beside_hung = time_to_ready(kubectl, ns, "beside")
        print(f"{HEALTHY} Ready in {usual:.1f}s alone, {beside_hung:.1f}s beside {HUNG} hung")
        assert beside_hung < 2 * usual + 15, (usual, beside_hung)

        for name in hung:  # the hung ones say why, and name no credentials
            obj = wait_condition(
                kubectl, ns, name, "Ready", "False", "BrokerUnavailable", timeout=60
            )
            assert "guest" not in condition(obj, "Ready")["message"]
    finally:
        # Their brokers go with this test: nothing could ever answer their finalizers
        # (which delete the queues), and every later operator watching this namespace glob
        # would wait on them. There are no queues to delete: deleted (so that the operator
        # does not put its finalizer back), then the finalizers go.
        kubectl.run("-n", ns, "delete", "partition", *hung, "--wait=false", check=False)
        for name in hung:
            kubectl.drop_finalizers(ns, "partition", name)
