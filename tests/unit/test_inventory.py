"""Partitions and queues made of a broker's queue names (roger info without a partition)."""

from __future__ import annotations

import pytest

from roger.core.inventory import management_target, partitions

pytestmark = pytest.mark.unit


def row(name: str, ready: int = 0, unacked: int = 0, consumers: int = 0) -> dict[str, object]:
    return {
        "name": name,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "consumers": consumers,
    }


def test_partitions_from_state_streams_and_queue_families() -> None:
    rows = [
        row("tenant-a.workers"),
        row("tenant-a-default", 3, 1, 2),
        row("tenant-a-default.retry.1", 4),
        row("tenant-a-default.retry.5", 1),
        row("tenant-a-default.buried", 2),
        row("tenant-a-default.buried.log", 99),
        row("tenant-a-default.invalid", 1),
        row("tenant-a-mail-out"),
        row("tenant-a-mail-out.buried"),
        row("solo-default"),
        row("solo-default.buried"),
        row("idle.control"),
        row("unrelated"),
    ]
    found = {p.partition: p for p in partitions(rows)}
    assert set(found) == {"idle", "solo", "tenant-a"}
    a = found["tenant-a"].queues
    assert set(a) == {"default", "mail-out"}  # split at the known partition, not a "-"
    d = a["default"]
    assert (d.ready, d.unacked, d.consumers, d.retrying, d.buried, d.invalid) == (3, 1, 2, 5, 2, 1)
    assert found["idle"].queues == {}
    assert list(found["solo"].queues) == ["default"]


def test_unknown_partition_is_split_at_the_last_dash() -> None:
    [p] = partitions([row("tenant-b-default"), row("tenant-b-default.buried")])
    assert p.partition == "tenant-b" and list(p.queues) == ["default"]


def test_management_target_from_the_amqp_url() -> None:
    t = management_target("amqp://u%40x:p%3Aw@broker.local:5672/my%2Fvhost")
    assert t.base == "http://broker.local:15672/api" and t.vhost == "my/vhost"
    assert (t.user, t.password) == ("u@x", "p:w")
    assert management_target("amqps://h/").base == "https://h:15671/api"
    assert management_target("amqp://h", "http://m:1/api/").base == "http://m:1/api"
    assert management_target("amqp://h").vhost == "/"
