"""Broker lanes: a broker that hangs holds its own lane, never the callers of other brokers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from roger_operator.rabbit.lanes import LaneBusy, Lanes, LaneUnavailable

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


def test_calls_queued_behind_others_are_busy_not_an_outage() -> None:
    """Calls that time out while waiting for a thread of their lane (the broker answers, it is
    just taking everyone's work in turn) leave the lane healthy: the next caller is queued and
    waited for as usual, not failed at once as when the broker itself does not answer.

    The lane's clock stands still: by it the running call is young (a broker taking its
    time, not a hung one), whatever the callers' real waits."""
    lanes = Lanes(lambda exc: isinstance(exc, Outage), threads=1, wait=0.3, clock=lambda: 0.0)
    first_running, release = threading.Event(), threading.Event()

    def long_call() -> str:
        first_running.set()
        release.wait(10)
        return "first"

    first = threading.Thread(target=lambda: timed(lanes.call, "b", long_call))
    first.start()
    try:
        assert first_running.wait(5)
        busy = []
        for n in range(2):
            result, took = timed(lanes.call, "b", lambda n=n: n)  # behind long_call
            assert isinstance(result, LaneBusy), result
            assert "busy" in str(result) and took >= 0.25, (result, took)
            assert not result.pending.done()  # it goes on in the lane
            busy.append(result.pending)
        release.set()
        first.join(5)
        assert [call.result(timeout=5) for call in busy] == [0, 1]  # each ran, in turn
        assert lanes.call("b", lambda: "next") == "next"
    finally:
        release.set()
        lanes.shutdown()


def test_an_identical_pending_call_is_shared_not_queued_again() -> None:
    """Retries of a reconcile waiting on its declarations wait for the pending call."""
    lanes = Lanes(lambda exc: isinstance(exc, Outage), threads=1, wait=5)
    running, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def blocker() -> None:
        running.set()
        release.wait(10)

    def declare(name: str) -> str:
        runs.append(name)
        return f"declared {name}"

    try:
        threading.Thread(target=lanes.call, args=("b", blocker), daemon=True).start()
        assert running.wait(5)
        answers: list[object] = []
        callers = [
            threading.Thread(target=lambda a=arg: answers.append(lanes.call("b", declare, a)))
            for arg in ("q1", "q1", "q1", "q2")
        ]
        for caller in callers:
            caller.start()
        time.sleep(0.2)  # all four are waiting behind the blocker
        release.set()
        for caller in callers:
            caller.join(5)
        assert sorted(map(str, answers)) == ["declared q1"] * 3 + ["declared q2"]
        assert sorted(runs) == ["q1", "q2"]  # q1 ran once for its three callers
        assert lanes.call("b", declare, "q1") == "declared q1"  # done: a new call runs
        assert runs.count("q1") == 2
    finally:
        release.set()
        lanes.shutdown()


def test_one_slow_call_while_the_broker_answers_others_is_not_an_outage() -> None:
    """A call running past the wait (a slow policy PUT) while the lane's other calls are
    answered: its caller is told the broker is busy, and nobody after it fails at once."""
    lanes = Lanes(lambda exc: isinstance(exc, Outage), threads=2, wait=1.0)
    release = threading.Event()
    told: list[object] = []
    slow = threading.Thread(
        target=lambda: told.append(timed(lanes.call, "b", lambda: release.wait(10))[0])
    )
    try:
        slow.start()
        time.sleep(0.1)
        assert lanes.call("b", lambda: "answered") == "answered"  # the other thread answers
        slow.join(5)  # the slow call's caller gave up after 1 s...
        assert isinstance(told[0], LaneBusy), told
        result, took = timed(lanes.call, "b", lambda: "still waited for")
        assert result == "still waited for", result  # ...without putting the lane in outage
        time.sleep(1.1)  # the slow call now runs past the wait, and nothing else ended since
        result, took = timed(lanes.call, "b", lambda: "after")
        assert isinstance(result, LaneUnavailable) and took < 0.1, result  # that is an outage
    finally:
        release.set()
        lanes.shutdown()


def test_each_call_reports_how_long_it_queued_and_ran() -> None:
    """What ``roger_operator_broker_call_*_seconds`` observe: with one lane thread, the
    second call queues while the first runs."""
    done: list[tuple[str, float, float]] = []
    finished = threading.Event()

    def on_done(name: str, queued: float, ran: float) -> None:
        done.append((name, queued, ran))
        if len(done) == 2:
            finished.set()

    lanes = Lanes(lambda exc: False, threads=1, wait=5.0, on_call_done=on_done)
    first_runs, release = threading.Event(), threading.Event()

    def declare() -> None:
        first_runs.set()
        release.wait(5)

    def stats() -> str:
        return "stats"

    try:
        caller = threading.Thread(target=lanes.call, args=("a", declare))
        caller.start()
        assert first_runs.wait(5)
        second: list[object] = []
        waiter = threading.Thread(target=lambda: second.append(lanes.call("a", stats)))
        waiter.start()
        time.sleep(0.2)
        release.set()
        caller.join(5)
        waiter.join(5)
        assert finished.wait(5) and second == ["stats"]
    finally:
        lanes.shutdown()
    (n1, q1, r1), (n2, q2, r2) = done
    assert (n1, n2) == ("declare", "stats")
    assert q1 < 0.1 and r1 >= 0.2  # ran at once, for as long as it was held
    assert q2 >= 0.15 and r2 < 0.1  # queued behind it, then ran at once
