"""Two operator processes with leader election (``--leader-election``): only the Lease
holder reconciles; SIGKILL it in the middle of 20 Partitions and the standby takes over
within 15 s, finishes them all, and no side effect is doubled.

Named ``test_ha_*``: its namespace (``t-test-ha-*``) matches no other operator's glob, and
its two operators watch only that namespace.
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from roger.core import naming
from roger_devtools.polling import eventually
from tests.e2e.operator_support import (
    OperatorProcess,
    get_or_none,
    leader_elected_operators,
    partition_manifest,
    short_id,
    wait_condition,
    wait_gone,
)

# The operator e2e fixtures (one definition, in test_operator_flows):
from tests.e2e.test_operator_flows import ns  # noqa: F401 - fixture
from tests.helpers import Kubectl

pytestmark = pytest.mark.e2e
PARTITIONS = 20
LEASE = "roger-operator-ha-test"
TAKEOVER_LIMIT = 15.0


@pytest.fixture
def operators(
    kubectl: Kubectl,
    ns: str,  # noqa: F811
    kubeconfig: str,
    tmp_path: Path,
) -> Iterator[list[OperatorProcess]]:
    ops = leader_elected_operators(kubeconfig, ns, LEASE, tmp_path)
    yield ops
    try:
        for p in kubectl.get_json("-n", ns, "partitions")["items"]:
            kubectl.run("-n", ns, "delete", "partition", p["metadata"]["name"], "--wait=false")
        eventually(
            lambda: not kubectl.get_json("-n", ns, "partitions")["items"],
            timeout=120,
            message="test Partitions gone",
        )
    finally:
        for p in kubectl.get_json("-n", ns, "partitions")["items"]:  # let the namespace go
            kubectl.drop_finalizers(ns, "partition", p["metadata"]["name"])
        for op in ops:
            if op.proc is not None and op.proc.poll() is None:
                assert op.stop(timeout=120) == 0, op.tail()


def holder(k: Kubectl, where: str) -> str:
    lease = get_or_none(k, "-n", where, "lease", LEASE)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def leader_of(ops: list[OperatorProcess], identity: str) -> OperatorProcess | None:
    for op in ops:
        assert op.proc is not None
        if identity.endswith(f"-{op.proc.pid}"):
            return op
    return None


def pause_events(amqp_url: str, partition: str, queue: str) -> int:
    """How many pause/resume events the queue's pause stream holds."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=100)
        count = 0
        for method, _props, _body in ch.consume(
            naming.pause_stream_name(partition, queue),
            arguments={"x-stream-offset": "first"},
            inactivity_timeout=1,
        ):
            if method is None:
                break
            count += 1
            ch.basic_ack(method.delivery_tag)
        ch.close()  # closing the channel ends the consumer (a cancel would nack: refused)
        return count
    finally:
        conn.close()


def operator_events(k: Kubectl, where: str) -> collections.Counter[tuple[str, str]]:
    items: list[dict[str, Any]] = k.get_json("-n", where, "events.events.k8s.io")["items"]
    return collections.Counter(
        (e["regarding"]["name"], e["reason"])
        for e in items
        if e.get("reportingController") == "roger.dev/operator"
    )


@pytest.mark.timeout(900)  # 20 Partitions created and deleted on a shared 2-core machine
def test_ha_standby_takes_over_a_killed_leader_without_doubling_anything(
    operators: list[OperatorProcess],
    kubectl: Kubectl,
    ns: str,  # noqa: F811
    amqp_url: str,
) -> None:
    k = kubectl
    first = eventually(lambda: leader_of(operators, holder(k, ns)), message="a leader")
    assert first is not None
    standby = next(op for op in operators if op is not first)
    names = [f"{short_id()}-{i:02d}" for i in range(PARTITIONS)]
    # Light on the shared broker: one (paused) queue, one retry level: 4 quorum queues each.
    spec: dict[str, Any] = {
        "queues": [{"name": "default", "paused": True}],
        "retry": {"levels": [1], "buriedMaxLength": 10},
    }
    k.apply("---\n".join(partition_manifest(n, ns, **spec) for n in names))

    def reconciled() -> int:
        items = k.get_json("-n", ns, "partitions")["items"]
        return sum(1 for p in items if (p.get("status") or {}).get("observedGeneration"))

    eventually(  # its first writes: the leader is in the middle of it
        lambda: k.get_json("-n", ns, "deployments")["items"],
        timeout=180,
        interval=0.1,
        message="reconciling started",
    )
    done = reconciled()
    started = len(k.get_json("-n", ns, "deployments")["items"])
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    first.proc.wait()
    assert done < PARTITIONS, "all were done before the kill: not in the middle"

    eventually(
        lambda: leader_of(operators, holder(k, ns)) is standby,
        timeout=TAKEOVER_LIMIT + 5,
        interval=0.2,
        message="the standby holds the Lease",
    )
    takeover = time.monotonic() - killed
    print(
        f"\nkilled with {started} Deployments applied, {done}/{PARTITIONS} statuses written;"
        f" takeover in {takeover:.1f}s"
    )
    assert takeover <= TAKEOVER_LIMIT, takeover

    for n in names:
        wait_condition(k, ns, n, "Ready", "True", timeout=180)
    print(f"all {PARTITIONS} Ready {time.monotonic() - killed:.1f}s after the kill")

    # No side effect doubled: one Deployment and ReplicaSet each, never re-rolled; one
    # pause event per paused queue; no operator Event twice for one Partition.
    deployments = k.get_json("-n", ns, "deployments")["items"]
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(f"roger-{n}" for n in names)
    assert {d["metadata"]["generation"] for d in deployments} == {1}
    assert len(k.get_json("-n", ns, "replicasets")["items"]) == PARTITIONS
    assert [pause_events(amqp_url, n, "default") for n in names] == [1] * PARTITIONS
    doubled = {key: c for key, c in operator_events(k, ns).items() if c > 1}
    assert not doubled, doubled

    # The new leader deletes them: one QueuesDeleted each, nothing left behind.
    for n in names:
        k.run("-n", ns, "delete", "partition", n, "--wait=false")
    for n in names:
        wait_gone(k, "-n", ns, "partition", n, timeout=300)
    counts = operator_events(k, ns)
    assert [counts[(n, "QueuesDeleted")] for n in names] == [1] * PARTITIONS, counts
    assert not {key: c for key, c in counts.items() if c > 1}
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for n in names:
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                ch.queue_declare(naming.queue_name(n, "default"), passive=True)
    finally:
        conn.close()
