"""The autoscaling decision (``builders/autoscale.py``): counters and history in, replicas out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as s

from roger_operator.builders import autoscale as a
from roger_operator.builders import status as st
from roger_operator.builders.model import parse_partition

pytestmark = pytest.mark.unit

SPEC = a.AutoscalingSpec(min_replicas=0, max_replicas=4, scale_down_window=0, zero_cooldown=0)


def q(
    ready: int, running: int | None = 0, max_workers: int = 1, paused: bool = False
) -> a.QueueCounters:
    return a.QueueCounters("q", ready, running, max_workers, paused)


def run(
    spec: a.AutoscalingSpec, current: int, queues: Sequence[a.QueueCounters] | None, **kw: object
) -> a.Decision:
    return a.decide(spec, a.Inputs(now=kw.pop("now", 1000.0), current=current, queues=queues, **kw))  # type: ignore[arg-type]


def test_backlog_counts_ready_and_running_weighted_by_max_workers() -> None:
    d = run(SPEC, 0, [a.QueueCounters("a", 5, 3, 4), a.QueueCounters("b", 2, 0, 1)])
    assert (d.backlog, d.load) == (10, 4.0)
    assert (d.desired, d.reason) == (4, a.SCALED_UP)


def test_target_divides_the_load() -> None:
    spec = a.AutoscalingSpec(0, 10, target=5, scale_down_window=0, zero_cooldown=0)
    assert run(spec, 1, [q(11)]).desired == 3  # ceil(11 / 5)
    assert run(spec, 3, [q(10)]).desired == 2


def test_bounds() -> None:
    spec = a.AutoscalingSpec(2, 4, scale_down_window=0, zero_cooldown=0)
    assert run(spec, 2, [q(100)]).desired == 4
    assert run(spec, 4, [q(100)]).reason == a.AT_MAX
    assert run(spec, 3, [q(0)]).desired == 2
    assert run(spec, 2, [q(0)]).reason == a.AT_MIN
    # kubectl scale above max (or a lowered max) comes back within bounds at once
    assert (run(spec, 9, [q(100)]).desired, run(spec, 9, [q(100)]).reason) == (4, a.SCALED_DOWN)


def test_paused_queue_backlog_does_not_scale_up_but_its_running_jobs_keep_pods() -> None:
    paused = a.QueueCounters("p", 500, 0, 1, paused=True)
    assert (run(SPEC, 0, [paused]).desired, run(SPEC, 0, [paused]).backlog) == (0, 0)
    busy = a.QueueCounters("p", 500, 2, 1, paused=True)
    assert run(SPEC, 2, [busy]).desired == 2


def test_queue_without_consumers_counts_nothing() -> None:
    assert run(SPEC, 0, [q(50, max_workers=0)]).desired == 0


@pytest.mark.parametrize("current", [0, 1, 3])
def test_unreachable_broker_holds(current: int) -> None:
    d = run(SPEC, current, None)
    assert (d.desired, d.reason, d.backlog) == (current, a.NO_COUNTERS, None)


@pytest.mark.parametrize("current", [1, 3])
def test_stale_counters_hold_even_when_they_say_idle(current: int) -> None:
    d = run(SPEC, current, [q(0)], fresh=False)
    assert (d.desired, d.reason) == (current, a.STALE_COUNTERS)


def test_missing_data_still_respects_max_but_never_goes_to_zero() -> None:
    assert run(SPEC, 7, None).desired == 4
    spec = a.AutoscalingSpec(0, 4)
    assert run(spec, 1, None).desired == 1


def test_unknown_running_jobs_never_scale_down() -> None:
    d = run(SPEC, 3, [q(0, running=None)])
    assert (d.desired, d.reason) == (3, a.RUNNING_UNKNOWN)
    assert run(SPEC, 1, [q(9, running=None)]).desired == 4  # scale-up is still safe


def test_scale_to_zero_waits_for_the_cooldown() -> None:
    spec = a.AutoscalingSpec(0, 4, scale_down_window=0, zero_cooldown=60)
    d = run(spec, 3, [q(0)], now=1030.0, last_active=1000.0)
    assert (d.desired, d.reason) == (1, a.SCALED_DOWN)
    d = run(spec, 1, [q(0)], now=1030.0, last_active=1000.0)
    assert (d.desired, d.reason) == (1, a.COOLING_DOWN)
    d = run(spec, 1, [q(0)], now=1061.0, last_active=1000.0)
    assert (d.desired, d.reason) == (0, a.SCALED_TO_ZERO)


def test_cooldown_starts_when_nothing_was_ever_seen() -> None:
    spec = a.AutoscalingSpec(0, 4, scale_down_window=0, zero_cooldown=60)
    d = run(spec, 1, [q(0)], now=1000.0)
    assert (d.desired, d.last_active) == (1, 1000.0)


def test_wakes_from_zero_on_the_first_job() -> None:
    spec = a.AutoscalingSpec(0, 4)  # default windows: scale-up is immediate
    d = run(spec, 0, [q(1)])
    assert (d.desired, d.reason) == (1, a.SCALED_UP)


def test_scale_down_window_uses_the_highest_recent_recommendation() -> None:
    spec = a.AutoscalingSpec(0, 10, scale_down_window=60, zero_cooldown=0)
    history = [a.Recommendation(950.0, 6), a.Recommendation(990.0, 4)]
    d = run(spec, 6, [q(1)], history=history)
    assert (d.desired, d.reason) == (6, a.STABILIZING_DOWN)
    # the 6 leaves the window: the highest left is 4
    d = run(spec, 6, [q(1)], history=history, now=1015.0)
    assert (d.desired, d.reason) == (4, a.SCALED_DOWN)


def test_scale_up_window_uses_the_lowest_recent_recommendation() -> None:
    spec = a.AutoscalingSpec(0, 10, scale_up_window=30, scale_down_window=0, zero_cooldown=0)
    history = [a.Recommendation(980.0, 2), a.Recommendation(990.0, 8)]
    d = run(spec, 1, [q(9)], history=history)
    assert (d.desired, d.reason) == (2, a.SCALED_UP)
    assert run(spec, 2, [q(9)], history=history).reason == a.STABILIZING_UP


def test_no_history_is_a_full_scale_down_window() -> None:
    """After an operator restart, the current count counts as just recommended."""
    spec = a.AutoscalingSpec(0, 10, scale_down_window=60, zero_cooldown=0)
    d = run(spec, 5, [q(0)])
    assert d.desired == 5
    assert a.Recommendation(1000.0, 5) in d.history


def test_evaluations_further_apart_than_the_window_still_scale_down() -> None:
    """Slow evaluations (a loaded operator) must not hold the replicas up forever."""
    spec = a.AutoscalingSpec(0, 10, scale_down_window=5, zero_cooldown=0)
    d = run(spec, 4, [q(0)], now=1000.0, history=[a.Recommendation(990.0, 4)])
    assert (d.desired, d.reason) == (0, a.SCALED_TO_ZERO)


def test_history_keeps_only_the_longest_window() -> None:
    spec = a.AutoscalingSpec(0, 10, scale_up_window=10, scale_down_window=60)
    old = [a.Recommendation(900.0, 9), a.Recommendation(950.0, 3)]
    d = run(spec, 3, [q(3)], history=old)
    assert [r.at for r in d.history] == [950.0, 1000.0]


def test_flapping_input_does_not_flap_the_pods() -> None:
    """Load alternating 8 / 0 every 5 s: up to 8 at once, then held through the window."""
    spec = a.AutoscalingSpec(0, 8, scale_down_window=30, zero_cooldown=0)
    current, seen = 0, []
    history: tuple[a.Recommendation, ...] = ()
    for i in range(40):
        load = 8 if i % 2 == 0 and i < 20 else 0
        d = run(spec, current, [q(load)], now=1000.0 + 5 * i, history=history)
        current, history = d.desired, d.history
        seen.append(current)
    assert seen[:21] == [8] * 21  # never down while the load keeps coming back
    assert seen[-1] == 0  # and down once it has been gone a full window
    assert sorted(set(seen)) == [0, 8]  # straight down: the window only held the 8s


@given(
    loads=s.lists(s.integers(0, 40), min_size=2, max_size=60),
    window=s.integers(0, 60),
)
def test_any_input_stays_in_bounds_and_scales_down_only_below_every_recent_recommendation(
    loads: list[int], window: int
) -> None:
    spec = a.AutoscalingSpec(0, 8, scale_down_window=window, zero_cooldown=0)
    current = 0
    history: tuple[a.Recommendation, ...] = ()
    for i, load in enumerate(loads):
        now = 1000.0 + 5 * i
        d = run(spec, current, [q(load)], now=now, history=history)
        assert 0 <= d.desired <= 8
        if d.desired < current:
            assert all(r.replicas <= d.desired for r in d.history if now - r.at <= window)
        if d.desired > current:
            assert d.desired == min(8, load)  # scale-up window 0: straight to the need
        current, history = d.desired, d.history


@given(
    current=s.integers(0, 12),
    ready=s.integers(0, 100),
    running=s.one_of(s.none(), s.integers(0, 100)),
    fresh=s.booleans(),
    reachable=s.booleans(),
)
def test_never_to_zero_without_fresh_complete_counters(
    current: int, ready: int, running: int | None, fresh: bool, reachable: bool
) -> None:
    spec = a.AutoscalingSpec(0, 6, scale_down_window=0, zero_cooldown=0)
    queues = [q(ready, running)] if reachable else None
    d = run(spec, current, queues, fresh=fresh)
    assert 0 <= d.desired <= 6
    if not (reachable and fresh) or running is None:
        assert d.desired >= min(current, 6)
    if d.desired == 0 and current > 0:
        assert d.reason == a.SCALED_TO_ZERO and d.backlog == 0


def test_parse_defaults_and_off() -> None:
    assert a.parse_autoscaling({"spec": {}}) is None
    assert (
        a.parse_autoscaling({"spec": {"autoscaling": {"enabled": False, "maxReplicas": 2}}}) is None
    )
    got = a.parse_autoscaling({"spec": {"autoscaling": {"minReplicas": 0, "maxReplicas": 4}}})
    assert got == a.AutoscalingSpec(0, 4)
    full = a.parse_autoscaling(
        {
            "spec": {
                "autoscaling": {
                    "minReplicas": 1,
                    "maxReplicas": 3,
                    "engine": "keda",
                    "targetBacklogPerReplica": 2.5,
                    "scaleToZeroCooldownSeconds": 30,
                    "behavior": {
                        "scaleUp": {"stabilizationWindowSeconds": 5},
                        "scaleDown": {"stabilizationWindowSeconds": 15},
                    },
                }
            }
        }
    )
    assert full == a.AutoscalingSpec(1, 3, "keda", 2.5, 5.0, 15.0, 30.0)
    with pytest.raises(a.AutoscalingError):
        a.parse_autoscaling({"spec": {"autoscaling": {"minReplicas": 5, "maxReplicas": 4}}})


def test_deletion_costs_follow_running_jobs_and_skip_unchanged_or_leaving_pods() -> None:
    pods = [
        {"metadata": {"name": "busy"}},
        {"metadata": {"name": "idle", "annotations": {a.DELETION_COST: "3"}}},
        {"metadata": {"name": "same", "annotations": {a.DELETION_COST: "2"}}},
        {"metadata": {"name": "new"}},
        {"metadata": {"name": "going", "deletionTimestamp": "2026-01-01T00:00:00Z"}},
    ]
    running = {"busy": 4, "same": 2, "going": 1, "other-pod": 9}
    assert a.deletion_costs(pods, running) == {"busy": "4", "idle": "0", "new": "0"}


def test_same_reason_soon_is_counted_in_one_event() -> None:
    assert a.event_action(None, a.SCALED_UP, 100.0) is None
    memo = (a.SCALED_UP, "p.abc", 2, 100.0)
    assert a.event_action(memo, a.SCALED_UP, 200.0) == ("p.abc", 3)
    assert a.event_action(memo, a.SCALED_DOWN, 200.0) is None
    assert a.event_action(memo, a.SCALED_UP, 100.0 + a.EVENT_SERIES_SECONDS + 1) is None


def test_status_rewrites_keep_what_the_autoscaler_wrote() -> None:
    """status.autoscaling is written by the autoscale loop alone; a reconcile keeps it."""
    body = {
        "metadata": {"name": "p", "namespace": "n", "generation": 1},
        "spec": {
            "amqp": {"secretRef": {"name": "s"}},
            "worker": {"image": "i"},
            "queues": [{"name": "q"}],
        },
    }
    mine = {"desired": 3, "current": 1, "reason": a.SCALED_UP, "message": "m"}
    new = st.compute_status({"autoscaling": mine}, st.Observation(parse_partition(body)), "T")
    assert new["autoscaling"] == mine
    assert "autoscaling" not in st.compute_status({}, st.Observation(parse_partition(body)), "T")


@pytest.mark.parametrize(
    ("spec", "status", "expected"),
    [
        ({}, {}, False),  # most Partitions: no timer at all
        ({"autoscaling": {"maxReplicas": 3}}, {}, True),  # builtin is the default engine
        ({"autoscaling": {"engine": "builtin", "maxReplicas": 3}}, None, True),
        ({"autoscaling": {"engine": "keda", "maxReplicas": 3}}, {}, False),  # KEDA scales it
        ({"autoscaling": {"enabled": False, "maxReplicas": 3}}, {}, False),
        ({}, {"autoscaling": {"desiredReplicas": 2}}, True),  # turned off: status to clear
        ({"autoscaling": {"engine": "keda"}}, {"autoscaling": {"desiredReplicas": 2}}, True),
        ({"autoscaling": "garbage"}, {}, False),
    ],
)
def test_only_partitions_asking_for_the_builtin_autoscaler_get_its_timer(
    spec: dict[str, Any], status: dict[str, Any] | None, expected: bool
) -> None:
    assert a.needs_evaluation({"spec": spec, "status": status}) is expected
