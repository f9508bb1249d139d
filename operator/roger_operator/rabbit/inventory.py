"""Read what a partition has in RabbitMQ, for its deletion (the decision is
``builders.cleanup``; this module only gathers facts and deletes what it decided).

Ready counts and consumers come from a passive declare (live); unacked counts only from
the management API, whose numbers are a sample: one taken while consumers were still
there may miss a delivery made since, so it counts as unknown.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import pika.exceptions

from roger.core import delay, naming
from roger_operator.builders import cleanup
from roger_operator.builders.model import PartitionSpec
from roger_operator.rabbit.broker import Broker, BrokerError
from roger_operator.rabbit.redaction import redact

_LIVE = tuple[int, int] | None | str  # (ready, consumers), missing, or "exclusive"
LISTING_TIMEOUT = 20.0
SAMPLE_COLUMNS = "name,messages_unacknowledged,consumers"


def _passive(broker: Broker, url: str, name: str) -> _LIVE:
    try:
        ok = broker.run(url, lambda ch: ch.queue_declare(name, passive=True))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        if exc.reply_code == 405:  # RESOURCE_LOCKED: another connection's exclusive queue
            return "exclusive"
        raise BrokerError(redact(str(exc.reply_text), url)) from None
    return int(ok.method.message_count), int(ok.method.consumer_count)


def _unacked(sample: Mapping[str, Any] | None, consumers: int) -> int | None:
    if sample is None or sample.get("messages_unacknowledged") is None:
        return None
    if consumers or int(sample.get("consumers") or 0):
        return None  # consumers may have taken more since the sample
    return int(sample["messages_unacknowledged"])


def partition_facts(
    broker: Broker, url: str, spec: PartitionSpec
) -> tuple[list[cleanup.QueueFacts], bool]:
    """Facts about every existing queue and stream of the partition; and whether every
    unacked count was sampled (management API on and answering).

    Waiting rooms and key queues are found by a filtered listing, which a broker with
    thousands of queues may answer slowly: without it, only the spec's names are looked at.
    """
    pid = spec.partition_id
    listed = broker.management_list(
        url, "queues", f"^{re.escape(pid)}[-.]", "name", timeout=LISTING_TIMEOUT
    )
    claims = broker.management_list(
        url, "exchanges", f"^{re.escape(naming.claim_exchange_name(pid))}-", "name"
    )
    prefix = naming.claim_exchange_name("")
    names = cleanup.attribute(
        pid,
        [naming.queue_name(pid, q.name) for q in spec.queues],
        [n for n, _ in broker.declarations(spec)],
        [q.name for q in spec.queues],
        [str(i.get("name")) for i in listed or ()],
        [str(i.get("name"))[len(prefix) :] for i in claims or ()],
    )
    facts = []
    sampled = broker.management_port is not None
    for name in names:
        live = _passive(broker, url, name.name)
        if live is None:
            continue
        if live == "exclusive":
            facts.append(cleanup.QueueFacts(name, 0, 0, 0, exclusive=True))
            continue
        assert isinstance(live, tuple)
        ready, consumers = live
        if not cleanup.consumed(name):  # nobody takes deliveries from it: none unacked
            facts.append(cleanup.QueueFacts(name, ready, consumers, 0 if not consumers else None))
            continue
        sample = broker.management_get(url, "queues", name.name, SAMPLE_COLUMNS)
        if sample is None and broker.management_port:
            sampled = False
        facts.append(cleanup.QueueFacts(name, ready, consumers, _unacked(sample, consumers)))
    return facts, sampled


def delete(
    broker: Broker, url: str, verdicts: list[cleanup.Verdict], partition_id: str = ""
) -> None:
    """Delete the queues and streams decided so, job queues before the state they need;
    the delay ladder's exchanges once none of its queues is kept."""
    for v in sorted(verdicts, key=lambda v: v.name.endswith((".control", ".checkpoint"))):
        if v.delete:
            broker.delete_queue(url, v.name)
    if partition_id and cleanup.ladder_deleted(verdicts, partition_id):
        for name in delay.ladder(partition_id).exchanges:  # one at a time: see Broker.run
            broker.run(url, functools.partial(_delete_exchange, name=name))


def _delete_exchange(channel: Any, name: str) -> None:
    channel.exchange_delete(name)
