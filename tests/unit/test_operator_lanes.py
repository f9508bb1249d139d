"""Broker lanes: a broker that hangs holds its own lane, never the callers of other brokers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from roger_operator.rabbit.lanes import Lanes, LaneUnavailable

pytestmark = pytest.mark.unit


class Outage(Exception):
    pass


@pytest.fixture
def lanes() -> Iterator[Lanes]:
    lanes = Lanes(lambda exc: isinstance(exc, Outage), wait=0.3, probe_wait=0.3)
    yield lanes
    lanes.shutdown()


def timed(fn: object, *args: object) -> tuple[object, float]:
    start = time.monotonic()
    try:
        result: object = fn(*args)  # type: ignore[operator]
    except Exception as exc:
        result = exc
    return result, time.monotonic() - start


def test_answers_and_refusals_pass_through_and_keep_the_lane_healthy(lanes: Lanes) -> None:
    assert lanes.call("a", lambda x: x + 1, 1) == 2

    def refused() -> None:
        raise ValueError("406 PRECONDITION_FAILED")

    with pytest.raises(ValueError, match="406"):
        lanes.call("a", refused)
    assert lanes.call("a", lambda: "still healthy") == "still healthy"


def test_a_hung_broker_holds_its_lane_only(lanes: Lanes) -> None:
    release = threading.Event()
    result, took = timed(lanes.call, "hung", release.wait)
    assert isinstance(result, LaneUnavailable) and 0.25 < took < 1.0
    assert "did not answer within" in str(result)
    # While its call hangs, callers of that broker fail at once...
    result, took = timed(lanes.call, "hung", lambda: "never run")
    assert isinstance(result, LaneUnavailable) and took < 0.1
    # ...and every other broker answers as usual.
    assert lanes.call("other", lambda: "ok") == "ok"
    release.set()


def test_an_outage_is_probed_one_call_at_a_time_until_the_broker_answers(
    lanes: Lanes,
) -> None:
    def unreachable() -> None:
        raise Outage("connection refused")

    with pytest.raises(Outage):
        lanes.call("b", unreachable)
    slow_probe = threading.Event()
    result, took = timed(lanes.call, "b", slow_probe.wait)  # the probe: probe_wait only
    assert isinstance(result, LaneUnavailable) and took < 1.0
    result, took = timed(lanes.call, "b", lambda: "queued behind the probe?")
    assert isinstance(result, LaneUnavailable) and took < 0.1
    assert "did not answer" in str(result)
    slow_probe.set()  # the broker answers the probe: the lane is healthy again
    time.sleep(0.05)
    assert lanes.call("b", lambda: "back") == "back"


def test_a_slow_but_working_broker_is_waited_for(lanes: Lanes) -> None:
    assert lanes.call("slow", lambda: time.sleep(0.15) or "done") == "done"
