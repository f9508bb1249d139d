"""The operator's queue stats from a listing shared by the Partitions asking at once
(``roger_operator.rabbit.listing``), on the real management API: each Partition gets its
own queues' numbers, and callers that come together cost fewer listings than calls."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pytest

from roger.core import naming
from roger_devtools.polling import eventually
from roger_operator.rabbit.broker import Broker
from tests.brokers import selected
from tests.integration.support import delete_queues, operator_spec

pytestmark = pytest.mark.integration
PARTITIONS = 6


@pytest.fixture
def broker(amqp_url: str, unique_name: str) -> Iterator[Broker]:
    b = Broker(selected().management_port, timeout=30.0, wait=120.0)  # a loaded machine
    yield b
    b.close()
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        for i in range(PARTITIONS):
            spec = operator_spec(f"{unique_name}-{i}")
            delete_queues(conn, [name for name, _ in Broker.declarations(spec)])


def test_concurrent_stats_share_listings_and_each_gets_its_own_queues(
    broker: Broker, amqp_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = [operator_spec(f"{unique_name}-{i}") for i in range(PARTITIONS)]
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        for i, spec in enumerate(specs):
            assert broker.declare(amqp_url, spec) == []
            for _ in range(i):
                ch.basic_publish("", naming.queue_name(spec.partition_id, "q"), b"{}")
    listings: list[str] = []
    real_list = broker.management_list

    def slow_list(url: str, kind: str, pattern: str, columns: str, **kw: Any) -> Any:
        listings.append(pattern)
        time.sleep(0.3)  # as on a broker with thousands of queues: callers meet
        return real_list(url, kind, pattern, columns, **kw)

    monkeypatch.setattr(broker, "management_list", slow_list)

    def all_at_once() -> list[int]:
        with ThreadPoolExecutor(PARTITIONS) as pool:
            stats = list(pool.map(lambda s: broker.stats(amqp_url, s), specs))
        return [int(s[0].get("ready", -1)) for s in stats]

    # the management API's numbers lag by its statistics interval
    eventually(lambda: all_at_once() == list(range(PARTITIONS)), 60, message="each its own")
    listings.clear()
    assert all_at_once() == list(range(PARTITIONS))
    # the first caller alone, the others (as many as the lane runs at once) together
    assert 1 < len(listings) < PARTITIONS, listings
