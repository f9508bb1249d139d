"""The client's own publish frames are the bytes pika would have sent."""

from __future__ import annotations

from typing import Any

import pika
import pytest
from pika import frame, spec

from roger.broker import wire
from roger.broker.publishes import Batch, Publish, batch
from roger.core import message

pytestmark = pytest.mark.unit


def pika_frames(
    channel: int, queue: str, body: bytes, props: Any, body_max: int, exchange: str = ""
) -> bytes:
    publish = spec.Basic.Publish(exchange=exchange, routing_key=queue, mandatory=True)
    out = [
        frame.Method(channel, publish),
        frame.Header(channel, len(body), props),
    ]
    out += [frame.Body(channel, body[i : i + body_max]) for i in range(0, len(body), body_max)]
    return b"".join(f.marshal() for f in out)


@pytest.mark.parametrize("size", [0, 1, 100, 4088, 4089, 3 * 4088 + 5])
def test_job_publish_frames_equal_pikas_for_every_body_size(size: int) -> None:
    msg = message.JobMessage(id="j-é1", name="mod:fn", args=None, queue="q", queued_at=1.5e9)
    fields = message.properties(msg, "part")
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    ours = wire.publish(7, "part-q", body, wire.properties(fields), 4088)
    assert ours == pika_frames(7, "part-q", body, pika.BasicProperties(**fields), 4088)


def test_a_delayed_job_goes_to_its_ladder_exchange_with_its_due_header() -> None:
    fields = {"delivery_mode": 2, "message_id": "a", "headers": {"x-roger-due-at-ms": 17}}
    props = wire.properties(fields)
    ours = wire.publish(3, "1.0.1", b"{}", props, 4088, exchange="p.delay.x")
    theirs = pika_frames(3, "1.0.1", b"{}", pika.BasicProperties(**fields), 4088, "p.delay.x")
    assert ours == theirs
    assert ours != wire.publish(3, "1.0.1", b"{}", props, 4088)  # not cached per key alone


def test_properties_roger_does_not_set_itself_go_through_pika() -> None:
    fields = {"delivery_mode": 2, "headers": {"x-roger-record": "m"}, "message_id": "a"}
    assert wire.properties(fields) == b"".join(pika.BasicProperties(**fields).encode())
    assert wire.properties({}) == b"".join(pika.BasicProperties().encode())


def test_a_name_over_255_bytes_is_refused_not_truncated() -> None:
    with pytest.raises(ValueError, match="255 bytes"):
        wire.publish(1, "q" * 256, b"", wire.properties({}), 4088)


def test_a_batch_wakes_its_waiter_once_the_last_publish_is_settled() -> None:
    woken: list[str] = []
    ps = [Publish("q", b"", b"\x00\x00") for _ in range(3)]
    group = batch(ps, lambda: woken.append("done"))
    ps[0].settle()
    ps[2].settle(RuntimeError("nacked"))
    ps[2].settle()  # settled once: a second outcome is ignored
    assert not group.done and not group.wait(0.01) and woken == []
    ps[1].settle()
    assert group.wait(0) and group.wait(0) and woken == ["done"]
    assert [p.outcome() for p in ps][:2] == [None, None]
    assert isinstance(ps[2].outcome(), RuntimeError)
    assert Batch(0).wait(0)
