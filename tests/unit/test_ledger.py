"""``roger.worker.ledger.Ledger``: acks of out-of-order settlements, held up to their
hold so that a gap that closes soon costs one ``multiple`` ack, never more than that; and
``Link`` sends them before it drops a connection itself."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from roger.worker.ledger import ACK_HOLD_SECONDS, Ledger
from roger.worker.link import Link
from tests.unit.runtime_fakes import FakeChannel, FakeLoop

pytestmark = pytest.mark.unit


def ledger_on(loop: FakeLoop, deliveries: int) -> tuple[Ledger, FakeChannel, object]:
    ledger = Ledger(loop.call_later, clock=lambda: loop.now)
    channel = FakeChannel("p-default")
    epoch = ledger.open(channel)
    for tag in range(1, deliveries + 1):
        epoch.delivered(tag)
    return ledger, channel, epoch


def test_a_gap_that_closes_within_the_hold_costs_one_multiple_ack() -> None:
    loop = FakeLoop()
    ledger, channel, epoch = ledger_on(loop, 8)
    for tag in (2, 3, 4):
        ledger.settle(epoch, tag)  # type: ignore[arg-type]
    loop.run()
    assert channel.acks == []  # held behind 1
    loop.run(ACK_HOLD_SECONDS / 2)
    ledger.settle(epoch, 1)  # type: ignore[arg-type]
    loop.run()
    assert channel.acks == [(4, True)]
    loop.run(ACK_HOLD_SECONDS * 2)  # the hold's timer finds nothing left
    assert channel.acks == [(4, True)]


def test_a_gap_that_stays_open_holds_the_acks_behind_it_only_for_the_hold() -> None:
    loop = FakeLoop()
    ledger, channel, epoch = ledger_on(loop, 8)
    ledger.settle(epoch, 3)  # type: ignore[arg-type]
    loop.run()
    assert channel.acks == []
    loop.run(ACK_HOLD_SECONDS)
    assert channel.acks == [(3, False)]  # 1 and 2 run long: 3 is not held for them


def test_stopping_and_dropping_the_connection_send_every_held_ack_first() -> None:
    loop = FakeLoop()
    ledger, channel, epoch = ledger_on(loop, 8)
    ledger.settle(epoch, 5)  # type: ignore[arg-type]
    loop.run()
    assert channel.acks == []
    ledger.flush(final=True)
    assert channel.acks == [(5, False)]

    link = Link("amqp://guest:guest@127.0.0.1:1/%2F", loop, [], lambda: None, lambda: None, print)
    order: list[str] = []
    link.flush_acks = lambda: order.append("acks")
    link.conn = SimpleNamespace(is_open=True, close=lambda: order.append("close"))  # type: ignore[assignment]
    link._cancelled_by_broker("p-default")  # the broker cancelled a consumer: start over
    assert order == ["acks", "close"]
