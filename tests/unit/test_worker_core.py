"""Pure rules of the worker: messages, acks, topology, job registry (frames and fates
have their own test modules)."""

from __future__ import annotations

import json
import types

import pytest

import roger
from roger.core import message, topology
from roger.core.config import split_slots
from roger.core.jobs import JobDefinition, JobRegistry, module_jobs
from roger.core.settle import AckTracker

pytestmark = pytest.mark.unit


def body(**fields: object) -> bytes:
    base: dict[str, object] = {"id": "j1", "name": "m.x:f", "args": {"a": 1}, "queue": "default"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_message_round_trip() -> None:
    msg = message.JobMessage(
        id="abc",
        name="pkg.mod:fn",
        args=[1, {"x": None}],
        queue="q",
        queue_key="k",
        retry_count=2,
        queued_at=12.5,
        max_execution_time=3,
    )
    assert message.decode(message.encode(msg)) == msg
    assert msg.retried().retry_count == 3
    props = message.properties(msg, "part")
    assert props["delivery_mode"] == 2 and props["message_id"] == "abc"
    assert props["app_id"] == "part" and props["type"] == "pkg.mod:fn"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", message.NOT_JSON),
        (b"{", message.NOT_JSON),
        (b'{"id":"a","name":"m:f","args":NaN,"queue":"q"}', message.NOT_JSON),
        (b'{"id":"a","name":"m:f","args":Infinity,"queue":"q"}', message.NOT_JSON),
        (b"[1]", message.NOT_OBJECT),
        (b'"s"', message.NOT_OBJECT),
        (body(args=...), message.MISSING_FIELD),
        (body(id=...), message.MISSING_FIELD),
        (body(id=""), message.INVALID_FIELD),
        (body(id="x" * 200), message.INVALID_FIELD),
        (body(name="os.system"), message.INVALID_FIELD),
        (body(name="a b:c"), message.INVALID_FIELD),
        (body(queue=3), message.INVALID_FIELD),
        (body(retry_count=-1), message.INVALID_FIELD),
        (body(retry_count=True), message.INVALID_FIELD),
        (body(queued_at="now"), message.INVALID_FIELD),
        (body(max_execution_time=0.5), message.INVALID_FIELD),
        (body(queue_key=5), message.INVALID_FIELD),
    ],
)
def test_decode_rejects_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(message.InvalidMessage) as exc:
        message.decode(raw)
    assert exc.value.reason == reason


def test_decode_reads_json_in_any_of_its_encodings() -> None:
    text = body().decode()
    for raw in (text.encode("utf-8-sig"), text.encode("utf-16"), text.encode("utf-32-le")):
        assert message.decode(raw).id == "j1"


def test_decode_ignores_unknown_fields() -> None:
    assert message.decode(body(future="x")).id == "j1"


@pytest.mark.parametrize(
    ("max_workers", "processes", "split"),
    [
        (10, 3, [4, 3, 3]),
        (16, 2, [8, 8]),
        (3, 8, [1, 1, 1]),  # never more processes than slots
        (1, 1, [1]),
        (5, 0, [5]),  # at least one process
        (0, 4, []),  # a declared-only queue runs nothing
    ],
)
def test_split_slots(max_workers: int, processes: int, split: list[int]) -> None:
    assert split_slots(max_workers, processes) == split
    assert sum(split) == max_workers


def test_ack_tracker_batches_the_settled_prefix() -> None:
    t = AckTracker()
    for tag in range(1, 6):
        t.delivered(tag)
    t.settled(2)
    t.settled(1)
    t.settled(3)
    assert t.flush() == [(3, True)]
    t.settled(5)  # 4 is still running: 5 is acked alone, the window is not held back
    assert t.flush() == [(5, False)]
    assert t.pending() == 1
    t.settled(4)
    assert t.flush() == [(4, True)]
    assert t.flush() == [] and t.pending() == 0


def test_ack_tracker_holds_acks_behind_a_gap_until_it_closes() -> None:
    """Outcomes of two job processes interleave: the tags one settles sit behind the
    other's. Held, one ``multiple`` ack covers them once the gap closes."""
    t = AckTracker()
    for tag in range(1, 33):
        t.delivered(tag)
    for tag in range(1, 16, 2):  # one process's group: 1, 3, ..., 15
        t.settled(tag, now=10.0)
    assert t.flush(now=10.0, hold=0.003) == [(1, True)]  # 3..15 held behind 2
    assert t.held_until(0.003) == 10.003
    for tag in range(2, 17, 2):  # the other's: the gap closes
        t.settled(tag, now=10.001)
    assert t.flush(now=10.001, hold=0.003) == [(16, True)]
    assert t.held_until(0.003) is None and t.pending() == 16


def test_ack_tracker_holds_no_ack_past_its_hold_or_half_the_window() -> None:
    t = AckTracker()
    for tag in range(1, 11):
        t.delivered(tag)
    t.settled(3, now=5.0)  # 1 and 2 run long
    assert t.flush(now=5.0, hold=0.003) == []
    assert t.flush(now=5.003, hold=0.003) == [(3, False)]  # its hold is over: alone
    for tag in (4, 5, 6, 7):
        t.settled(tag, now=6.0)
    assert t.flush(now=6.0, hold=0.003) == []  # 4 held of 9 unacked
    t.settled(8, now=6.0)  # 5 held of 9: they would take half the prefetch window
    assert t.flush(now=6.0, hold=0.003) == [
        (4, False),
        (5, False),
        (6, False),
        (7, False),
        (8, False),
    ]
    t.settled(9, now=7.0)
    assert t.flush(now=7.0) == [(9, False)]  # no hold (the worker stopping): at once
    t.settled(1, now=8.0)
    t.settled(2, now=8.0)
    # 3..9 were acked alone: the multiple ack stops before them (acking one twice is a
    # channel error)
    assert t.flush(now=8.0, hold=0.003) == [(2, True)] and t.pending() == 1


def test_ack_tracker_never_acks_forgotten_tags() -> None:
    t = AckTracker()
    for tag in (1, 2, 3):
        t.delivered(tag)
    t.forget(1)  # nacked elsewhere
    t.settled(2)
    t.settled(3)
    assert t.flush() == [(3, True)]


def test_retry_queue_dead_letters_back_to_the_main_queue() -> None:
    args = topology.retry_queue_arguments("p", "q", 3)
    assert args["x-message-ttl"] == 3000 and args["x-dead-letter-routing-key"] == "p-q"
    assert args["x-queue-type"] == "quorum"
    names = [n for n, _ in topology.declarations("p", "q", (1, 3))]
    assert names == ["p-q", "p-q.retry.1", "p-q.retry.3", "p-q.buried", "p-q.invalid"]


def test_job_decorator_and_registry() -> None:
    mod = types.ModuleType("fake_jobs")

    def f(args: object) -> object:
        return args

    f.__module__, f.__qualname__ = "fake_jobs", "f"
    mod.plain = roger.job(f)
    mod.tuned = roger.job(
        queue="mail", retryable=True, max_execution_time=5, queue_key=lambda a: f"k{a}"
    )(f)
    mod.imported = JobDefinition(func=f, name="other:f")  # not defined here: not runnable
    assert mod.plain(7) == 7 and mod.plain.name == "fake_jobs:f"
    assert mod.tuned.queue == "mail" and mod.tuned.keys(3) == ("k3", None)
    assert set(module_jobs(mod)) == {"fake_jobs:f"}
    reg = JobRegistry([mod])
    assert isinstance(reg.lookup("fake_jobs:f"), JobDefinition)
    assert reg.lookup("fake_jobs:g") == "unknown_job"
    assert reg.lookup("os:system") == "job_not_allowed"
    with pytest.raises(ValueError):
        roger.job(max_execution_time=0.5)(f)
