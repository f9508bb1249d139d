"""``Client.info`` learns a partition's queues and retry levels from its workers' status
records; the worker exports ``roger_queue_paused`` and its reconnect counter from the start."""

from __future__ import annotations

import urllib.request

import pytest

import roger
from roger.broker.client import PartitionInfo
from roger.core import metric_names as names
from roger.core import naming
from roger_devtools.polling import eventually
from roger_devtools.workers import Workers

pytestmark = pytest.mark.integration


def _metric(port: int, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_info_learns_queues_and_retry_levels_from_the_workers(
    partition_workers: Workers, client: roger.Client, unique_name: str
) -> None:
    p = unique_name
    before = client.info(p)  # no worker: the default queue and Roger's default levels
    assert list(before.queues) == ["default"]
    assert sorted(before.queues["default"].retry) == sorted(naming.DEFAULT_RETRY_LEVELS)

    partition_workers.start_consuming(
        ["default=1", "email=1", "idle=0"], extra=("--retry-levels", "2,7")
    )

    def learned() -> PartitionInfo | None:
        info = client.info(p)
        return info if set(info.queues) == {"default", "email", "idle"} else None

    info = eventually(learned, timeout=15, message="queues learned from the status records")
    assert info is not None
    assert sorted(info.queues["email"].retry) == [2, 7]
    assert info.queues["email"].exists and info.queues["email"].consumers == 1
    assert info.queues["idle"].exists and info.queues["idle"].consumers == 0
    assert len(info.workers) == 1
    # what the caller names still wins
    named = client.info(p, queues=("email",), retry_levels=(5,))
    assert list(named.queues) == ["email"] and list(named.queues["email"].retry) == [5]


def test_paused_gauge_and_reconnect_counter(
    partition_workers: Workers, client: roger.Client, unique_name: str
) -> None:
    p = unique_name
    [w] = partition_workers.start_consuming(["default=1", "email=1"])
    port = w.port
    paused, reconnects = names.QUEUE_PAUSED, names.BROKER_RECONNECTS + "_total"
    assert _metric(port, reconnects, partition=p) == 0  # at 0 before any reconnection
    for q in ("default", "email"):
        assert _metric(port, paused, partition=p, queue=q) == 0

    client.pause(p, "email")
    eventually(lambda: _metric(port, paused, partition=p, queue="email") == 1, timeout=15)
    assert _metric(port, paused, partition=p, queue="default") == 0
    client.resume(p, "email")
    eventually(lambda: _metric(port, paused, partition=p, queue="email") == 0, timeout=15)
