"""``kubectl roger``'s pure parts: kubectl's flags taken out of the line, a refusal in one
line, the Partition resolved as the operator resolves it, and the ``top`` screen."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from roger.cli.common import UsageError
from roger.cli.kube_access import refusal, split_kube_flags
from roger.cli.top import PartitionView, QueueRow, render
from roger.core.inventory import QueueActivity, queue_activity
from roger.core.partition_ref import PartitionRefError, broker_ref, secret_value, with_address
from roger_operator.builders.model import parse_partition

pytestmark = pytest.mark.unit


def test_kubectl_flags_are_taken_from_anywhere_on_the_line() -> None:
    flags, rest = split_kube_flags(
        [
            "buried",
            "list",
            "tenant-a",
            "-n",
            "demo",
            "--as=alice",
            "--as-group",
            "g1",
            "--as-group=g2",
            "--context",
            "kind",
            "-o",
            "json",
            "--kubeconfig=/k",
        ]
    )
    assert rest == ["buried", "list", "tenant-a", "-o", "json"]
    assert flags.namespace == "demo"
    assert flags.passed == [
        "--as",
        "alice",
        "--as-group",
        "g1",
        "--as-group",
        "g2",
        "--context",
        "kind",
        "--kubeconfig",
        "/k",
    ]
    for short in (["-ndemo"], ["-n=demo"], ["--namespace=demo"]):
        assert split_kube_flags(["top", *short])[0].namespace == "demo"
    flags, rest = split_kube_flags(["top", "-A", "--broker-address", "127.0.0.1:5672"])
    assert flags.all_namespaces and flags.broker_address == "127.0.0.1:5672" and rest == ["top"]
    assert split_kube_flags(["enqueue", "p", "--", "-n"])[1] == ["enqueue", "p", "-n"]
    with pytest.raises(UsageError, match="--context needs a value"):
        split_kube_flags(["jobs", "p", "--context"])


def test_a_forbidden_read_is_one_line_naming_the_object() -> None:
    stderr = (
        'Error from server (Forbidden): secrets "rabbitmq" is forbidden: User "auditor" cannot '
        'get resource "secrets" in API group "" in the namespace "demo"\n'
    )
    line = refusal(stderr, "Secret demo/rabbitmq")
    assert line == (
        'cannot read Secret demo/rabbitmq: Kubernetes RBAC forbids it (User "auditor" cannot '
        'get resource "secrets" in API group "" in the namespace "demo")'
    )
    missing = 'Error from server (NotFound): partitions.roger.dev "x" not found'
    assert refusal(missing, "Partition x") == "Partition x not found"
    assert refusal("", "Partition x") == "cannot read Partition x: kubectl failed"


def _partition(**spec: Any) -> dict[str, Any]:
    base = {
        "amqp": {"secretRef": {"name": "rabbitmq"}},
        "worker": {"image": "img"},
        "queues": [{"name": "default"}],
    }
    return {"metadata": {"name": "tenant-a", "namespace": "demo"}, "spec": {**base, **spec}}


def test_the_plugin_resolves_a_partition_as_the_operator_does() -> None:
    for obj in (
        _partition(),
        _partition(partitionId="acme-prod"),
        _partition(amqp={"secretRef": {"name": "broker", "key": "amqp"}}),
    ):
        ref, spec = broker_ref(obj), parse_partition(obj)
        assert (ref.partition_id, ref.secret_name, ref.secret_key) == (
            spec.partition_id,
            spec.secret_name,
            spec.secret_key,
        )
    assert broker_ref(_partition()).partition_id == "tenant-a"
    assert broker_ref(_partition()).secret_key == "url"
    with pytest.raises(PartitionRefError, match=r"secretRef\.name"):
        broker_ref(_partition(amqp={}))


def test_secret_value_and_the_port_forward_address() -> None:
    url = "amqp://u:p%40ss@rabbitmq.infra.svc:5672/jobs?heartbeat=30"
    secret = {"data": {"url": base64.b64encode(f"{url}\n".encode()).decode()}}
    assert secret_value(secret, "url") == url
    assert secret_value(secret, "other") is None
    with pytest.raises(PartitionRefError, match="not a valid text"):
        secret_value({"data": {"url": "%%%"}}, "url")
    assert with_address(url, "127.0.0.1:15672") == (
        "amqp://u:p%40ss@127.0.0.1:15672/jobs?heartbeat=30"
    )
    two = "amqp://u:p@node1:5672/%2F,amqp://u:p@node2:5672/%2F"
    assert with_address(two, "localhost:5672") == "amqp://u:p@localhost:5672/%2F"
    with pytest.raises(PartitionRefError, match="HOST:PORT"):
        with_address(url, "localhost")


def test_top_shows_queues_rates_and_running_jobs() -> None:
    activity = queue_activity(
        [
            {
                "name": "p-default",
                "messages_unacknowledged": 3,
                "message_stats": {"publish_details": {"rate": 2.5}, "ack_details": {"rate": 2.0}},
            },
            {"name": "p-email", "messages_unacknowledged": 0},
        ]
    )
    assert activity["p-email"] == QueueActivity(0, 0.0, 0.0)
    view = PartitionView(
        "demo",
        "tenant-a",
        "p",
        [
            QueueRow("default", True, 7, 2, 1, 4, False, activity["p-default"]),
            QueueRow("email", True, 0, 1, 0, 0, True, None),
            QueueRow("bulk", False, 0, 0, 0, 0, False, None),
        ],
        [
            {
                "worker": "host:12",
                "at": 95.0,
                "running": [{"id": "j1", "name": "app:send", "queue": "default"}],
            }
        ],
    )
    lines = render([view, PartitionView("ops", "broken", error="cannot read Secret")], 100.0)
    rows = [ln.split() for ln in lines.splitlines()]
    assert ["demo", "tenant-a", "default", "7", "3", "1", "4", "2", "2.5", "2.0", "no"] in rows
    assert ["demo", "tenant-a", "email", "0", "-", "0", "0", "1", "-", "-", "yes"] in rows
    assert "(not declared yet)" in lines
    assert ["demo", "tenant-a", "host:12", "5s", "1:", "app:send", "j1", "(default)"] in rows
    assert "ops              broken               error: cannot read Secret" in lines
