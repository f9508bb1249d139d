"""The worker's delivery reader hands consumers exactly what pika's own reader would.

Both readers run on the same kind of connection object (pika's real ``Channel`` objects, its
``CallbackManager``, its ``Connection`` methods) and get the same bytes, cut into chunks at
arbitrary points: deliveries with any properties and body sizes (several body frames
included), confirms waiting on a callback, heartbeats, a consumer being cancelled, another
channel's frames in the middle of a delivery's content, and an unfinished frame at the end.
"""

from __future__ import annotations

import itertools
from typing import Any
from unittest import mock

import pika
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika import exceptions, frame, spec
from pika.callback import CallbackManager
from pika.channel import Channel
from pika.connection import Connection

from roger.broker import inbound

pytestmark = pytest.mark.unit

BODY_MAX = 64  # small frames, so that bodies span several
TAGS = ("ctag-a", "ctag-b")  # consumers; "gone" is being cancelled


class _Connection:
    """A pika ``Connection`` as far as its readers go, recording what they hand on."""

    _read_frame = Connection._read_frame
    _trim_frame_buffer = Connection._trim_frame_buffer
    _process_frame = Connection._process_frame
    _process_callbacks = Connection._process_callbacks
    _is_method_frame = Connection._is_method_frame
    _has_pending_callbacks = Connection._has_pending_callbacks
    _deliver_frame_to_channel = Connection._deliver_frame_to_channel
    pika_reader = Connection._on_data_available

    def __init__(self) -> None:
        self.callbacks = CallbackManager()
        self._frame_buffer = b""
        self.bytes_received = self.frames_received = 0
        self._heartbeat_checker = None
        self.seen: list[tuple[Any, ...]] = []
        self._channels = {n: Channel(self, n, lambda ch: None) for n in (1, 2)}  # type: ignore[arg-type]
        for number, channel in self._channels.items():
            for tag in (*TAGS, "gone"):
                channel._consumers[tag] = self._consumer
            channel._cancelled.add("gone")
            self.callbacks.add(number, spec.Basic.Ack, self._confirmed, one_shot=False)

    def _consumer(self, channel: Channel, method: Any, props: Any, body: bytes) -> None:
        fields = {k: getattr(method, k) for k in ("consumer_tag", "delivery_tag", "redelivered")}
        fields |= {"exchange": method.exchange, "routing_key": method.routing_key}
        self.seen.append(("deliver", channel.channel_number, fields, dict(vars(props)), body))

    def _confirmed(self, method_frame: Any) -> None:
        self.seen.append(("ack", method_frame.channel_number, method_frame.method.delivery_tag))


def _delivery(number: int, tag: str, n: int, props: Any, body: bytes) -> list[bytes]:
    deliver = spec.Basic.Deliver(tag, n, n % 2 == 0, "ex-é", f"rk-{n}")
    frames = [frame.Method(number, deliver), frame.Header(number, len(body), props)]
    frames += [frame.Body(number, body[i : i + BODY_MAX]) for i in range(0, len(body), BODY_MAX)]
    return [f.marshal() for f in frames]


_props = st.builds(
    pika.BasicProperties,
    content_type=st.none() | st.just("application/json"),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    message_id=st.none() | st.text(max_size=20),
    timestamp=st.none() | st.integers(0, 2**40),
    headers=st.none()
    | st.dictionaries(st.text(min_size=1, max_size=8), st.integers(-5, 5) | st.text(max_size=5)),
    type=st.none() | st.text(max_size=10),
    priority=st.none() | st.integers(0, 9),
)

# one event: a delivery (channel, consumer, props, body), a confirm, or a heartbeat
_event = st.one_of(
    st.tuples(
        st.just("deliver"),
        st.sampled_from([1, 2]),
        st.sampled_from([*TAGS, "gone"]),
        _props,
        st.binary(max_size=3 * BODY_MAX + 7),
        st.sampled_from(
            [None, "ack", "delivery", "crossed", "crossed-content"]
        ),  # another channel's, inside its content
    ),
    st.tuples(st.just("ack"), st.sampled_from([1, 2]), st.integers(1, 2**40)),
    st.just(("heartbeat",)),
)


def _stream(events: list[Any]) -> bytes:
    out: list[bytes] = []
    for n, event in enumerate(events, 1):
        if event[0] == "deliver":
            _, number, tag, props, body, interleave = event
            frames = _delivery(number, tag, n, props, body)
            other = 3 - number  # legal AMQP: content is contiguous per channel only
            if interleave == "ack":
                frames.insert(1, frame.Method(other, spec.Basic.Ack(n)).marshal())
            elif interleave == "delivery":
                frames[1:1] = _delivery(other, TAGS[0], n + 1000, props, body[::-1])
            elif interleave == "crossed":  # the other's method, ours, the other's content
                theirs = _delivery(other, TAGS[1], n + 2000, props, body[:5])
                frames = [theirs[0], frames[0], *theirs[1:], *frames[1:]]
            elif interleave == "crossed-content":  # both methods and headers, then bodies
                theirs = _delivery(other, TAGS[1], n + 3000, props, b"t" + body[:5])
                frames = [*theirs[:2], *frames[:2], *theirs[2:], *frames[2:]]
            out += frames
        elif event[0] == "ack":
            out.append(frame.Method(event[1], spec.Basic.Ack(event[2])).marshal())
        else:
            out.append(frame.Heartbeat().marshal())
    return b"".join(out)


def _feed(stream: bytes, cuts: list[int], fast: bool) -> _Connection:
    conn = _Connection()
    read = inbound._Reader(conn).data_available if fast else conn.pika_reader
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for a, b in itertools.pairwise(edges):
        read(stream[a:b])
    return conn


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_event, max_size=12),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    tail=st.integers(0, 9),
    wait_for_body=st.sampled_from([100, inbound._WAIT_FOR_BODY]),
)
def test_consumers_get_what_pikas_reader_gives_them_whatever_the_chunks(
    events: list[Any], cuts: list[int], tail: int, wait_for_body: int
) -> None:
    stream = _stream(events)
    stream += frame.Method(1, spec.Basic.Ack(7)).marshal()[:tail]  # unfinished: stays buffered
    with mock.patch.object(inbound, "_WAIT_FOR_BODY", wait_for_body):  # larger: pika's path
        ours = _feed(stream, cuts, fast=True)
    pikas = _feed(stream, cuts, fast=False)
    assert ours.seen == pikas.seen
    assert ours._frame_buffer == pikas._frame_buffer
    assert ours.bytes_received == pikas.bytes_received == len(stream) - tail
    assert ours.frames_received == pikas.frames_received


def test_a_delivery_to_a_cancelled_consumer_reaches_no_one_and_the_next_one_does() -> None:
    stream = _stream(
        [
            ("deliver", 1, "gone", pika.BasicProperties(), b"x", None),
            ("deliver", 1, "ctag-a", pika.BasicProperties(), b"y", None),
        ]
    )
    seen = _feed(stream, [], fast=True).seen
    assert [(e[2]["consumer_tag"], e[4]) for e in seen] == [("ctag-a", b"y")]


def test_a_corrupt_frame_end_is_refused_as_pika_refuses_it() -> None:
    stream = bytearray(_stream([("deliver", 1, "ctag-a", pika.BasicProperties(), b"x", None)]))
    stream[-1] = 0  # the body frame's end octet
    for fast in (True, False):
        with pytest.raises(exceptions.InvalidFrameError):
            _feed(bytes(stream), [], fast)


def test_install_reads_every_delivery_on_this_module_s_path() -> None:
    conn = _Connection()
    assert inbound.install(conn)
    conn._on_data_available(_stream([("deliver", 2, "ctag-b", pika.BasicProperties(), b"z", None)]))  # type: ignore[attr-defined]
    assert [e[4] for e in conn.seen] == [b"z"]


def test_install_keeps_pikas_reader_when_pika_lacks_what_it_reads() -> None:
    class Bare:
        pass

    assert not inbound.install(Bare())


def test_a_large_body_is_not_gathered_in_the_buffer_before_it_is_complete() -> None:
    """128 MiB bodies exist (the hostile-message test sends them): waiting for all of one
    and re-copying the buffer on every read took minutes; pika's path streams it."""
    body = bytes(range(256)) * (4 * 1024 * 1024 // 256)  # 4 MiB in 128 KiB body frames
    deliver = spec.Basic.Deliver("ctag-a", 1, False, "", "q")
    frames = [frame.Method(1, deliver), frame.Header(1, len(body), pika.BasicProperties())]
    step = 128 * 1024
    frames += [frame.Body(1, body[i : i + step]) for i in range(0, len(body), step)]
    stream = b"".join(f.marshal() for f in frames)
    conn = _Connection()
    read = inbound._Reader(conn).data_available
    largest = 0
    for at in range(0, len(stream), 65536):
        read(stream[at : at + 65536])
        largest = max(largest, len(conn._frame_buffer))
    assert largest < 2 * step
    assert [(e[2]["delivery_tag"], e[4] == body) for e in conn.seen] == [(1, True)]
