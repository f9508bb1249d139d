"""Growth of partition state: start-up reads the last checkpoint, not the whole history,
and no amount of waiting keys makes a worker open more than a fixed number of channels."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from roger.broker.channels import MAX_ONE_SHOT
from roger.broker.state import control as control_mod
from roger.broker.state import locks
from roger.core import naming
from roger.core import state as st
from roger_devtools.polling import eventually
from tests.integration.state_loop import StateLoop
from tests.integration.support import delete_queues

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(amqp_url: str, unique_name: str) -> Iterator[pika.BlockingConnection]:
    c = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield c
    p = unique_name
    names = [naming.control_stream_name(p), naming.workers_stream_name(p)]
    names += [naming.checkpoint_stream_name(p), naming.pause_stream_name(p, "default")]
    delete_queues(c, names)
    c.close()


def _publish_events(conn: pika.BlockingConnection, p: str, events: list[st.ControlEvent]) -> None:
    ch = conn.channel()
    name = naming.control_stream_name(p)
    ch.queue_declare(name, durable=True, arguments=st.control_stream_arguments())
    for ev in events:
        ch.basic_publish("", name, st.encode(ev))
    ch.confirm_delivery()
    ch.basic_publish("", name, st.encode(st.wait("last-of-batch", time.time())))
    ch.close()


def _checkpoints(conn: pika.BlockingConnection, p: str) -> list[int]:
    """The control offsets of the checkpoints in the stream, oldest first."""
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    out = []
    for method, props, _body in ch.consume(
        naming.checkpoint_stream_name(p),
        arguments={"x-stream-offset": "first"},
        inactivity_timeout=1,
    ):
        if method is None:
            break
        out.append(int(props.headers[control_mod.OFFSET_HEADER]))
        ch.basic_ack(method.delivery_tag)
    ch.close()
    return out


def test_start_up_reads_from_the_last_checkpoint_not_from_the_horizon(
    amqp_url: str, unique_name: str, conn: pika.BlockingConnection
) -> None:
    """History: 2,000 events, among them a cancel the checkpoint leaves out on purpose; a
    checkpoint covering that history; then two more cancels. A worker that starts knows the
    checkpoint's cancels and the later ones, but not the one only the old history holds:
    it read from the checkpoint's offset on, not the 2,000 events."""
    p, now = unique_name, time.time()
    history = [st.cancel("only-in-history", now)]
    history += [st.wait(f"user-{i}", now) for i in range(1999)]
    _publish_events(conn, p, history)  # offsets 0..2000 (with the batch's last event)
    folded = st.ControlState()
    folded.apply(st.cancel("in-checkpoint", now), now)
    folded.apply(st.wait("user-7", now), now)
    ch = conn.channel()
    ch.queue_declare(
        naming.checkpoint_stream_name(p), durable=True, arguments=st.checkpoint_stream_arguments()
    )
    ch.confirm_delivery()
    props = pika.BasicProperties(headers={control_mod.OFFSET_HEADER: 2001})
    ch.basic_publish("", naming.checkpoint_stream_name(p), st.encode_checkpoint(folded), props)
    ch.close()
    _publish_events(conn, p, [st.cancel("after-1", now), st.cancel("after-2", now)])
    loop = StateLoop(amqp_url, p, ["default"])
    try:
        s = loop.state
        assert s.is_cancelled("in-checkpoint") and s.is_cancelled("after-1")
        assert s.is_cancelled("after-2") and "user-7" in s.control.waiting
        assert not s.is_cancelled("only-in-history")
        assert "user-8" not in s.control.waiting
        assert "in-checkpoint" in loop.cancels  # a checkpoint's cancels reach the runtime
    finally:
        loop.close()


def test_a_checkpoint_read_late_still_ends_the_replay_from_the_horizon(
    amqp_url: str, unique_name: str, conn: pika.BlockingConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loaded broker delivers the last checkpoint after the worker stopped waiting for it
    (here: it waits 0 s) and began replaying 20,000 events from the horizon. The follower
    folds the checkpoint anyway and continues from its offset: it knows what only the
    checkpoint holds, and the events after it. Before, the late checkpoint was ignored and
    the whole history replayed (~700 events/s on a loaded machine)."""
    monkeypatch.setattr(control_mod, "CHECKPOINT_READ_TIMEOUT", 0.0)
    p, now = unique_name, time.time()
    _publish_events(conn, p, [st.wait(f"user-{i}", now) for i in range(19_999)])
    folded = st.ControlState()
    folded.apply(st.cancel("only-in-checkpoint", now), now)
    ch = conn.channel()
    ch.queue_declare(
        naming.checkpoint_stream_name(p), durable=True, arguments=st.checkpoint_stream_arguments()
    )
    ch.confirm_delivery()
    props = pika.BasicProperties(headers={control_mod.OFFSET_HEADER: 20_000})
    ch.basic_publish("", naming.checkpoint_stream_name(p), st.encode_checkpoint(folded), props)
    ch.close()
    _publish_events(conn, p, [st.cancel("after", now)])
    loop = StateLoop(amqp_url, p, ["default"])
    try:
        s = loop.state
        assert s.is_cancelled("only-in-checkpoint") and s.is_cancelled("after")
        assert s.controls._start_offset == 20_000
    finally:
        loop.close()


def test_ready_workers_write_checkpoints_that_later_workers_start_from(
    amqp_url: str,
    unique_name: str,
    conn: pika.BlockingConnection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(st, "CHECKPOINT_INTERVAL", 0.5)
    monkeypatch.setattr(st, "CHECKPOINT_MIN_EVENTS", 100)
    p, now = unique_name, time.time()
    _publish_events(conn, p, [st.cancel(f"job-{i}", now) for i in range(300)])
    a = StateLoop(amqp_url, p, ["default"])  # no checkpoint yet: replays 301 events
    try:
        assert len(a.state.control.cancelled) == 300
        offsets = eventually(lambda: _checkpoints(conn, p), 15, message="a checkpoint")
        assert offsets[-1] >= 301
        _publish_events(conn, p, [st.cancel("late", now)])
        b = StateLoop(amqp_url, p, ["default"])
        try:
            assert b.state.controls._start_offset is not None  # started from a checkpoint
            assert len(b.state.control.cancelled) == 301 and b.state.is_cancelled("late")
        finally:
            b.close()
    finally:
        a.close()


def test_thousands_of_waiting_keys_never_open_more_than_a_fixed_number_of_channels(
    amqp_url: str,
    unique_name: str,
    conn: pika.BlockingConnection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """3,000 keys announced as waiting (their waiting rooms long gone): sweeps check every
    one of them and forget them, with at most ``MAX_ONE_SHOT`` one-shot channels open."""
    monkeypatch.setattr(locks, "SWEEP_INTERVAL", 0.3)
    p, now = unique_name, time.time()
    _publish_events(conn, p, [st.wait(f"user-{i}", now) for i in range(3000)])
    loop = StateLoop(amqp_url, p, ["default"])
    peak = [0]
    done = threading.Event()

    def sample(c: Any = loop.conn) -> None:
        peak[0] = max(peak[0], len(c._channels))
        if not done.is_set():
            loop.ioloop.call_later(0.005, sample)

    try:
        assert len(loop.state.control.waiting) > 2000  # sweeps started already
        loop.ioloop.add_callback_threadsafe(sample)
        eventually(lambda: not loop.state.control.waiting, 60, message="every key swept")
        done.set()
        assert loop.conn.is_open
        assert 0 < peak[0] <= MAX_ONE_SHOT + 2, peak[0]  # + the publish and stream channels
    finally:
        loop.close()
