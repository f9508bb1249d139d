"""Pure partition-state pieces: event codec and validation, folding, names, status."""

from __future__ import annotations

import zlib

import pytest

from roger.core import naming
from roger.core import state as st
from roger.core import worker_status as ws

pytestmark = pytest.mark.unit


def test_events_round_trip_and_reject_garbage() -> None:
    for ev in (
        st.cancel("j1", 10.0, "me"),
        st.cancel_done("j1", 11.0),
        st.wait("any key é", 12.0),
        st.pause("mail", 13.0),
        st.resume("mail", 14.0),
    ):
        assert st.decode(st.encode(ev)) == ev
    for bad in (
        b"nope",
        b"[]",
        b'{"type":"explode","at":1}',
        b'{"type":"cancel","at":1}',
        b'{"type":"cancel","at":"x","job_id":"j"}',
        b'{"type":"cancel","at":1,"job_id":""}',
        b'{"type":"pause","at":1,"queue":"Bad Name"}',
        b'{"type":"cancel","at":NaN,"job_id":"j"}',
    ):
        with pytest.raises(st.InvalidEvent):
            st.decode(bad)


def test_control_state_folds_and_expires() -> None:
    s = st.ControlState(horizon=100)
    assert s.apply(st.cancel("a", 1000), now=1000)
    assert not s.apply(st.cancel("a", 1001), now=1001)  # known already: not new
    assert not s.apply(st.cancel("old", 850), now=1000)  # beyond the horizon
    s.apply(st.cancel_done("a", 1002), now=1002)
    s.apply(st.wait("k", 1003), now=1003)
    assert s.is_cancelled("a") and s.cancel_handled("a") and "k" in s.waiting
    assert not s.is_cancelled("old")
    assert s.expire(now=1104) == 3
    assert not s.is_cancelled("a") and not s.waiting


def test_pause_state_last_event_wins() -> None:
    p = st.PauseState()
    assert p.apply(st.pause("q", 1))
    assert not p.apply(st.pause("q", 2))
    assert p.paused_queues() == ["q"]
    assert p.apply(st.resume("q", 3)) and not p.is_paused("q")
    assert st.last_pause_state([st.pause("q", 1), st.resume("q", 2), st.pause("q", 3)])
    assert not st.last_pause_state([])


def test_key_names_are_safe_and_distinct() -> None:
    assert naming.execution_waiting_queue_name("p", "user-1") == "p-execution-waiting-user-1"
    weird = naming.execution_waiting_queue_name("p", "a/b c")
    assert weird.startswith("p-execution-waiting-sha256.") and " " not in weird
    assert naming.key_label("x" * 101).startswith("sha256.")
    a, b = naming.queue_key_queue_name("p", "k1"), naming.queue_key_queue_name("p", "k2")
    assert a != b and a.startswith("p.qkey.") and len(a) < 255
    assert naming.execution_lock_queue_name("p", "k1").startswith("p.xkey.")
    assert naming.control_stream_name("p") == "p.control"
    assert naming.pause_stream_name("p", "mail") == "p.pause.mail"


def test_queue_key_queue_is_classic_and_bounded() -> None:
    args = st.queue_key_arguments()
    assert args["x-queue-type"] == "classic"  # quorum admits several concurrent publishers
    assert args["x-max-length"] == 1 and args["x-overflow"] == "reject-publish"
    assert args["x-message-ttl"] == st.QUEUE_KEY_MAX_HOLD * 1000


def test_status_records_and_liveness() -> None:
    rec = ws.WorkerStatus(
        "h:1",
        100.0,
        {"default": 2},
        ("mail",),
        (ws.RunningJob("j", "m:f", "default", 99.0, "k"),),
    )
    assert ws.decode_status(ws.encode_status(rec)) == rec
    assert ws.decode_status(b"garbage") is None
    old = ws.WorkerStatus("h:2", 100.0 - ws.HEARTBEAT_STALE - 1, {})
    gone = ws.WorkerStatus("h:3", 100.0, {}, stopping=True)
    newer = ws.WorkerStatus("h:1", 101.0, {"default": 2})
    assert ws.live_workers([rec, old, gone, newer], now=101.0) == [newer]


def test_status_records_tell_the_partition_topology() -> None:
    new = ws.WorkerStatus("h:1", 100.0, {"default": 2, "mail": 0}, retry_levels=(1, 5))
    other = ws.WorkerStatus("h:2", 101.0, {"reports": 1}, retry_levels=(3,))
    old = ws.WorkerStatus("h:3", 102.0, {"default": 1})  # a record without retry levels
    for rec in (new, other, old):
        assert ws.decode_status(ws.encode_status(rec)) == rec
    assert ws.learned_topology([new, other, old]) == (("default", "mail", "reports"), (1, 3, 5))
    assert ws.learned_topology([old]) == (("default",), None)
    assert ws.learned_topology([]) == (None, None)


def test_checkpoint_round_trip_rebuilds_the_folded_state_and_rejects_garbage() -> None:
    s = st.ControlState(horizon=100)
    s.apply(st.cancel("a", 1000), now=1000)
    s.apply(st.cancel_done("a", 1001), now=1001)
    s.apply(st.wait("key é", 1002), now=1002)
    rebuilt = st.ControlState(horizon=100)
    for ev in st.decode_checkpoint(st.encode_checkpoint(s)):
        rebuilt.apply(ev, now=1003)
    assert rebuilt == s
    for bad in (b"", b"not zlib", zlib.compress(b'{"cancelled": []}')):
        with pytest.raises(st.InvalidEvent):
            st.decode_checkpoint(bad)
