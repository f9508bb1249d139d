"""How long a stream read waits for records (``roger.broker.stream_reads.read_stream``),
on a fake connection whose stream sends its first record late: a loaded broker was seen
taking longer than the read's idle time to send a workers stream's first chunk, and a
live worker was read as none. The wire behaviour: tests/integration/test_stream_reads.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from roger.broker.stream_reads import read_stream

pytestmark = pytest.mark.unit


class _Impl:
    is_open, is_closed = True, False

    def close(self) -> None:
        self.is_open, self.is_closed = False, True


class _SlowStream:
    """A connection and channel in one: records go out ``first_after`` seconds after the
    consume, then ``gap`` seconds apart."""

    def __init__(self, bodies: list[bytes], first_after: float, gap: float = 0.0) -> None:
        self.bodies, self.first_after, self.gap = bodies, first_after, gap
        self.on_delivery: Callable[..., None] | None = None
        self.consumed_at = 0.0
        self.sent = 0
        self._impl, self.is_open = _Impl(), True

    def channel(self) -> _SlowStream:
        return self

    def basic_qos(self, prefetch_count: int) -> None:
        pass

    def basic_consume(self, name: str, cb: Callable[..., None], arguments: Any) -> None:
        self.on_delivery, self.consumed_at = cb, time.monotonic()

    def basic_ack(self, tag: int) -> None:
        pass

    def process_data_events(self, time_limit: float) -> None:
        end = time.monotonic() + time_limit
        while time.monotonic() < end and self.sent < len(self.bodies):
            due = self.consumed_at + self.first_after + self.sent * self.gap
            if time.monotonic() >= due:
                assert self.on_delivery is not None
                self.sent += 1
                self.on_delivery(self, _Tag(self.sent), None, self.bodies[self.sent - 1])
                return
            time.sleep(min(0.005, max(0.0, end - time.monotonic())))
        time.sleep(max(0.0, end - time.monotonic()))


class _Tag:
    def __init__(self, tag: int) -> None:
        self.delivery_tag = tag


def _read(stream: _SlowStream, **kw: Any) -> list[bytes]:
    records, _ended = read_stream(stream, "s", "first", prefetch=10, **kw)
    return [body for _props, body in records]


def test_a_late_first_record_is_read_within_the_first_idle() -> None:
    bodies = [b"a", b"b", b"c"]
    assert _read(_SlowStream(bodies, first_after=0.3), idle=0.1, first_idle=1.0) == bodies


def test_without_a_first_idle_the_same_late_record_is_missed() -> None:
    """The behaviour that read a live worker as none: the guard above is needed."""
    assert _read(_SlowStream([b"a"], first_after=0.3), idle=0.1) == []


def test_after_the_first_record_the_short_idle_ends_the_read() -> None:
    stream = _SlowStream([b"a", b"b", b"c"], first_after=0.0, gap=0.5)
    t0 = time.monotonic()
    assert _read(stream, idle=0.1, first_idle=2.0) == [b"a"]
    assert time.monotonic() - t0 < 1.0


def test_an_empty_stream_costs_the_first_idle_and_no_more() -> None:
    t0 = time.monotonic()
    assert _read(_SlowStream([], first_after=0.0), idle=0.05, first_idle=0.4) == []
    assert 0.35 <= time.monotonic() - t0 < 1.5
