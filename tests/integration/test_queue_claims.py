"""Queue-name claims on the real broker: the first Partition to claim ``<id>-<queue>`` owns
it, atomically; the other learns the owner; release and ``owned`` never touch another's."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pika
import pytest

from roger.core import naming
from roger_operator.builders.model import PartitionSpec
from roger_operator.rabbit.broker import Broker
from roger_operator.rabbit.claims import QueueNameConflict, claim_queues, owned, release_queues
from tests.integration.support import operator_spec

pytestmark = pytest.mark.integration


def spec(partition_id: str, *queues: str) -> PartitionSpec:
    return operator_spec(partition_id, queues)


@pytest.fixture
def broker(amqp_url: str, unique_name: str) -> Iterator[Broker]:
    b = Broker(management_port=None)
    yield b
    b.close()
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    for stem in (f"{unique_name}-b-c", f"{unique_name}-x"):
        conn.channel().exchange_delete(f"roger.claim.queue.{stem}")
    conn.close()


def test_the_ambiguous_stem_has_one_owner(broker: Broker, amqp_url: str, unique_name: str) -> None:
    first = spec(unique_name, "b-c", "x")
    second = spec(f"{unique_name}-b", "c")
    claim_queues(broker, amqp_url, first, "team-a/first")
    claim_queues(broker, amqp_url, first, "team-a/first")  # idempotent for the owner
    with pytest.raises(QueueNameConflict) as info:
        claim_queues(broker, amqp_url, second, "team-b/second")
    assert (info.value.queue, info.value.stem) == ("c", f"{unique_name}-b-c")
    assert info.value.owner == "team-a/first"
    # The refused one owns nothing, releases nothing, would delete nothing.
    assert owned(broker, amqp_url, second, "team-b/second").queues == ()
    assert release_queues(broker, amqp_url, second, "team-b/second") == []
    with pytest.raises(QueueNameConflict):
        claim_queues(broker, amqp_url, second, "team-b/second")
    # The owner releases; then the other may claim.
    kept = owned(broker, amqp_url, first, "team-a/first")
    assert [q.name for q in kept.queues] == ["b-c", "x"]
    assert len(release_queues(broker, amqp_url, first, "team-a/first")) == 2
    claim_queues(broker, amqp_url, second, "team-b/second")
    release_queues(broker, amqp_url, second, "team-b/second")


def test_racing_claimants_get_exactly_one_winner(
    broker: Broker, amqp_url: str, unique_name: str
) -> None:
    """Eight operators' worth of claimants at once, one stem: one wins, seven learn who."""
    one = spec(unique_name, "x")

    def attempt(i: int) -> str:
        b = Broker(management_port=None)
        try:
            claim_queues(b, amqp_url, dataclasses.replace(one, name=f"p{i}"), f"ns/p{i}")
            return f"ns/p{i}"
        except QueueNameConflict as exc:
            return f"lost to {exc.owner}"
        finally:
            b.close()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    winners = [r for r in results if not r.startswith("lost")]
    assert len(winners) == 1, results
    assert all(r == f"lost to {winners[0]}" for r in results if r.startswith("lost"))
    assert (
        naming.queue_claim_exchange_name(unique_name, "x") == f"roger.claim.queue.{unique_name}-x"
    )
