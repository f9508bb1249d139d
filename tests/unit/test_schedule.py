"""Schedule decisions (roger_operator.builders.schedule), modelled on CronJob's rules."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from roger_operator.builders import schedule as sch

pytestmark = pytest.mark.unit

UTC = datetime.UTC


def t(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


def spec(**fields: Any) -> sch.ScheduleSpec:
    body = {
        "metadata": {
            "namespace": "ns",
            "name": "nightly",
            "uid": "0123456789abcdef",
            "generation": 3,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"partitionRef": {"name": "p"}, "schedule": "* * * * *", "job": "m:f", **fields},
    }
    return sch.parse_schedule(body)


def test_nothing_is_due_before_the_first_tick_after_creation() -> None:
    d = sch.decide(spec(), None, t("2026-01-01T00:00:30"))
    assert d.action == "wait" and d.next == t("2026-01-01T00:01:00")


def test_the_tick_that_just_passed_is_enqueued_once() -> None:
    s = spec()
    d = sch.decide(s, None, t("2026-01-01T00:01:00.2"))
    assert (d.action, d.tick, d.missed) == ("enqueue", t("2026-01-01T00:01:00"), 0)
    again = sch.decide(s, d.tick, t("2026-01-01T00:01:05"))  # status written: handled
    assert again.action == "wait" and again.next == t("2026-01-01T00:02:00")


def test_the_look_after_a_wait_lands_just_past_the_tick_and_enqueues_it() -> None:
    s = spec()
    now = t("2026-01-01T00:00:59.4")
    d = sch.decide(s, None, now)
    pause = sch.pause_before(d.next, now, 1.0)
    assert 0.6 < pause <= 0.6 + sch.TICK_MARGIN  # at the tick, not up to a second later
    woke = now + datetime.timedelta(seconds=pause)
    assert sch.decide(s, None, woke).tick == t("2026-01-01T00:01:00")
    # a tick further away than the interval: the usual interval (edits are seen)
    assert sch.pause_before(t("2026-01-01T00:02:00"), now, 1.0) == 1.0
    assert sch.pause_before(None, now, 1.0) == 1.0  # suspended, or no tick ever again
    assert sch.pause_before(t("2026-01-01T00:00:59"), now, 1.0) == 0.0  # already passed


def test_after_an_outage_only_the_latest_tick_runs_and_the_missed_are_counted() -> None:
    d = sch.decide(spec(), t("2026-01-01T00:01:00"), t("2026-01-01T00:10:30"))
    assert (d.action, d.tick, d.missed) == ("enqueue", t("2026-01-01T00:10:00"), 8)
    year = sch.decide(spec(), t("2026-01-01T00:01:00"), t("2027-01-01T00:00:30"))
    assert year.tick == t("2027-01-01T00:00:00") and year.missed == sch.TOO_MANY_MISSED


def test_a_tick_past_the_starting_deadline_is_skipped() -> None:
    s = spec(startingDeadlineSeconds=20)
    late = sch.decide(s, t("2026-01-01T00:01:00"), t("2026-01-01T00:05:30"))
    assert late.action == "too_late" and late.tick == t("2026-01-01T00:05:00")
    ok = sch.decide(s, t("2026-01-01T00:01:00"), t("2026-01-01T00:05:10"))
    assert ok.action == "enqueue" and ok.missed == 3  # 00:02, 00:03, 00:04


def test_suspended_enqueues_nothing() -> None:
    assert sch.decide(spec(suspend=True), None, t("2026-01-05T00:00:00")).action == "suspended"


def test_time_zones_and_daylight_saving() -> None:
    paris = spec(schedule="30 2 * * *", timeZone="Europe/Paris")
    # 2026-03-29: 02:30 does not exist in Paris: no tick that day
    ticks = sch.ticks_after(
        paris.cron, paris.time_zone, t("2026-03-28T00:00:00"), t("2026-03-31T00:00:00"), 9
    )
    assert ticks == [t("2026-03-28T01:30:00"), t("2026-03-30T00:30:00")]
    # 2026-10-25: 02:30 happens twice: one tick (the first)
    ticks = sch.ticks_after(
        paris.cron, paris.time_zone, t("2026-10-24T00:00:00"), t("2026-10-27T00:00:00"), 9
    )
    assert ticks == [t("2026-10-24T00:30:00"), t("2026-10-25T00:30:00"), t("2026-10-26T01:30:00")]
    assert sch.latest_tick(paris.cron, paris.time_zone, t("2026-10-25T01:45:00")) == t(
        "2026-10-25T00:30:00"
    )


def test_macros_and_bad_input() -> None:
    assert spec(schedule="@hourly").cron == "0 * * * *"
    for bad, reason in [
        ({"schedule": "61 * * * *"}, "InvalidSchedule"),
        ({"schedule": "* * * *"}, "InvalidSchedule"),
        ({"schedule": "CRON_TZ=UTC * * * * *"}, "InvalidSchedule"),
        ({"timeZone": "Mars/Olympus"}, "InvalidTimeZone"),
        ({"job": "not a job"}, "InvalidSchedule"),
    ]:
        with pytest.raises(sch.InvalidSchedule) as exc:
            spec(**bad)
        assert exc.value.reason == reason


def test_job_ids_are_one_per_schedule_and_tick_and_forbid_has_one_key() -> None:
    s = spec(concurrencyPolicy="Forbid")
    a, b = sch.job_id(s, t("2026-01-01T00:01:00")), sch.job_id(s, t("2026-01-01T00:02:00"))
    assert a == "nightly.01234567.20260101T000100Z" and a != b
    assert sch.queue_key(s) == "roger.schedule/ns/nightly" and sch.queue_key(spec()) is None


def test_status_keeps_the_last_tick_and_the_transition_time() -> None:
    s, now = spec(), t("2026-01-01T00:01:00")
    first = sch.status(
        None,
        s,
        now,
        ready=True,
        reason="Enqueued",
        message="m",
        last=now,
        last_job="j",
        upcoming=t("2026-01-01T00:02:00"),
    )
    later = sch.status(
        first,
        s,
        t("2026-01-01T00:01:30"),
        ready=True,
        reason="Scheduled",
        message="w",
        upcoming=t("2026-01-01T00:02:00"),
    )
    assert later["lastScheduleTime"] == "2026-01-01T00:01:00Z" and later["lastJobId"] == "j"
    assert later["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:01:00Z"
    assert later["observedGeneration"] == 3
