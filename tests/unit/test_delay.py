"""Delayed jobs, the pure parts (roger.core.delay): due times, routes through the ladder."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roger.core import delay, naming
from roger.core.state import HORIZON

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0


def test_delay_or_at_checked() -> None:
    assert delay.delay_seconds(None, None, NOW) is None
    assert delay.delay_seconds(2.5, None, NOW) == 2.5
    at = datetime.datetime.fromtimestamp(NOW + 90, tz=datetime.UTC)
    assert delay.delay_seconds(None, at, NOW) == pytest.approx(90)
    past = datetime.datetime.fromtimestamp(NOW - 90, tz=datetime.UTC)
    assert delay.delay_seconds(None, past, NOW) == 0.0  # late: runs now
    assert delay.delay_seconds(30 * 86400, None, NOW) == 30 * 86400


@pytest.mark.parametrize(
    ("value", "at", "message"),
    [
        (-1, None, "0 or more"),
        (float("nan"), None, "0 or more"),
        (True, None, "number of seconds"),
        ("5", None, "number of seconds"),
        (delay.MAX_DELAY + 1, None, "longest accepted"),
        (None, datetime.datetime(2030, 1, 1), "no time zone"),
        (1, datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC), "not both"),
    ],
)
def test_bad_delays_are_refused(value: object, at: datetime.datetime | None, message: str) -> None:
    with pytest.raises(delay.InvalidDelay, match=message):
        delay.delay_seconds(value, at, NOW)  # type: ignore[arg-type]


def test_parse_at_wants_an_offset() -> None:
    assert delay.parse_at("2030-01-01T09:00:00Z").utcoffset() == datetime.timedelta(0)
    assert delay.parse_at("2030-01-01T09:00:00+01:00").hour == 9
    with pytest.raises(delay.InvalidDelay, match="no offset"):
        delay.parse_at("2030-01-01T09:00:00")
    with pytest.raises(delay.InvalidDelay, match="ISO 8601"):
        delay.parse_at("tomorrow")


def test_a_route_names_the_levels_of_its_set_bits_and_the_queue() -> None:
    r = delay.route("p", "q", 5.5)  # 22 units = 16 + 4 + 2
    assert r is not None
    assert delay.hops(r.routing_key) == [4, 2, 1]
    assert r.exchange == naming.delay_exchange_name("p", 4)
    assert r.routing_key.split(".")[-1] == naming.queue_name("p", "q")
    assert r.seconds == 5.5
    assert delay.route("p", "q", 0) is None


def test_a_long_delay_takes_one_full_leg_first() -> None:
    r = delay.route("p", "q", 30 * 86400)
    assert r is not None and r.seconds == delay.LEG_MAX
    assert delay.hops(r.routing_key) == list(range(delay.LEVELS - 1, -1, -1))
    assert r.exchange == naming.delay_exchange_name("p", delay.LEVELS - 1)
    assert 2 * 86400 < delay.LEG_MAX < HORIZON


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.001, max_value=delay.MAX_DELAY))
def test_the_legs_add_up_to_the_delay_never_early_at_most_one_unit_late(seconds: float) -> None:
    left, legs = seconds, 0
    while (r := delay.route("p", "q", left)) is not None:
        assert sum(delay.level_ttl_ms(k) for k in delay.hops(r.routing_key)) == r.seconds * 1000
        assert len(delay.hops(r.routing_key)) <= delay.LEVELS
        left -= r.seconds
        legs += 1
    assert -delay.UNIT_MS / 1000 <= left <= 0
    assert legs <= seconds // delay.LEG_MAX + 1


def test_only_an_early_job_goes_round_again() -> None:
    assert delay.not_due(None, NOW) == 0
    assert delay.not_due({}, NOW) == 0
    assert delay.not_due(delay.due_header(NOW + 0.01), NOW) == 0  # clock jitter: run
    assert delay.not_due(delay.due_header(NOW + 0.2), NOW) == pytest.approx(0.2, abs=0.01)
    assert delay.not_due(delay.due_header(NOW + 100), NOW) == pytest.approx(100, abs=0.01)
    assert delay.not_due({delay.DUE_AT_HEADER: "soon"}, NOW) == 0
    assert delay.not_due(delay.due_header(NOW + 10 * delay.MAX_DELAY), NOW) == 0  # bogus


def test_another_pass_drops_the_brokers_death_record() -> None:
    headers = {"x-death": [{}], "x-first-death-queue": "a", b"x-last-death-reason": "e", "k": 1}
    assert delay.without_deaths(headers) == {"k": 1}


def test_the_ladder_binds_each_bit_to_its_level_and_chains_the_zeros() -> None:
    ld = delay.ladder("p")
    assert len(ld.queues) == delay.LEVELS and len(ld.exchanges) == delay.LEVELS + 1
    top = delay.LEVELS - 1
    assert ld.queue_bindings[top] == ("p.delay.19", "p.delay.19", "1.#")
    assert ld.queue_bindings[0] == ("p.delay.0", "p.delay.0", "*." * top + "1.#")
    assert ld.exchange_bindings[0] == ("p.delay.due", "p.delay.0", "*." * top + "0.#")
    args = dict(ld.queues)["p.delay.3"]
    assert args["x-message-ttl"] == 2000 and args["x-dead-letter-exchange"] == "p.delay.2"
    assert args["x-dead-letter-strategy"] == "at-least-once"
    assert "x-dead-letter-routing-key" not in args  # the message keeps its own
    assert delay.due_binding("p", "q") == ("p-q", "p.delay.due", "#.p-q")
    # the top level's TTL fits RabbitMQ's (32-bit milliseconds)
    assert delay.level_ttl_ms(top) < 2**32


def test_a_worker_declares_only_the_due_exchange_and_its_queues_bindings() -> None:
    exchanges, bindings = delay.worker_topology("p", ["a", "b"])
    assert exchanges == ["p.delay.due"]
    assert bindings == [
        ("p-a", "p.delay.due", "#.p-a", False),
        ("p-b", "p.delay.due", "#.p-b", False),
    ]
