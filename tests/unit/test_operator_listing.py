"""``rabbit.listing``: the callers that ask while a listing is in flight share the next one;
its patterns match exactly the names their prefixes start. (The real management API
answering these patterns: tests/integration/test_operator_stats_listing.py.)"""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest

from roger_operator.rabbit.listing import SharedListing, patterns

pytestmark = pytest.mark.unit
NAMES = ["a-q", "a-q.retry.1", "a_b-q", "ab-q", "b-q", "c-q", "a-x-q"]


def matched(prefixes: list[str], limit: int = 2000) -> set[str]:
    return {n for p in patterns(prefixes, limit) for n in NAMES if re.match(p, n)}


def test_patterns_match_the_names_each_prefix_starts_and_no_other() -> None:
    assert matched(["a-"]) == {"a-q", "a-q.retry.1", "a-x-q"}  # a-x is the caller's to drop
    assert matched(["a-", "b-"]) == {"a-q", "a-q.retry.1", "a-x-q", "b-q"}
    assert matched(["a_b-", "c-"]) == {"a_b-q", "c-q"}
    assert matched(["a.-"]) == set()  # escaped: a dot is a dot


def test_a_long_batch_is_split_into_patterns_under_the_limit() -> None:
    prefixes = [f"partition-{i:04d}-" for i in range(300)]
    found = patterns(prefixes, limit=400)
    assert len(found) > 1 and all(len(p) < 450 for p in found)
    names = [f"{p}default" for p in prefixes]
    assert all(any(re.match(p, n) for p in found) for n in names)
    assert patterns(["x" * 500], limit=400) == ["^" + "x" * 500]


class SlowFetch:
    """A management API whose first listing is held until the test lets it go."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.answer: list[dict[str, Any]] | None = [{"name": n} for n in NAMES]

    def __call__(self, _url: str, pattern: str) -> list[dict[str, Any]] | None:
        self.calls.append(pattern)
        self.started.set()
        self.release.wait(5)
        if self.answer is None:
            return None
        return [i for i in self.answer if re.match(pattern, i["name"])]


def test_alone_a_caller_lists_its_own_prefix() -> None:
    fetch = SlowFetch()
    fetch.release.set()
    got = SharedListing(fetch).items("amqp://x", "b-")
    assert got == {"b-q": {"name": "b-q"}} and fetch.calls == ["^b\\-"]


def test_callers_that_come_during_a_listing_share_the_next_one() -> None:
    fetch = SlowFetch()
    shared = SharedListing(fetch)
    results: dict[str, Any] = {}

    def ask(prefix: str) -> None:
        results[prefix] = shared.items("amqp://x", prefix)

    first = threading.Thread(target=ask, args=("a-",))
    first.start()
    assert fetch.started.wait(5)
    waiting = [threading.Thread(target=ask, args=(p,)) for p in ("b-", "c-", "a_b-")]
    for t in waiting:
        t.start()
    other_broker = threading.Thread(target=shared.items, args=("amqp://y", "c-"))
    other_broker.start()  # not held by the first broker's listing
    threading.Event().wait(0.3)  # the three are waiting for the first listing
    assert sorted(fetch.calls) == ["^a\\-", "^c\\-"]
    fetch.release.set()
    for t in [first, *waiting, other_broker]:
        t.join(5)
    assert len(fetch.calls) == 3  # then b-, c- and a_b- together, in one listing
    assert fetch.calls[2] == "^(?:a_b\\-|b\\-|c\\-)"
    assert set(results["a-"]) == {"a-q", "a-q.retry.1", "a-x-q"}
    assert set(results["b-"]) == {"b-q", "c-q", "a_b-q"} == set(results["c-"])


def test_no_answer_is_none_for_every_caller_of_the_batch_and_the_next_asks_again() -> None:
    fetch = SlowFetch()
    fetch.answer = None
    fetch.release.set()
    shared = SharedListing(fetch)
    assert shared.items("amqp://x", "a-") is None
    fetch.answer = [{"name": "a-q"}]
    assert shared.items("amqp://x", "a-") == {"a-q": {"name": "a-q"}}
    assert len(fetch.calls) == 2


def test_a_failing_listing_fails_its_caller_and_leaves_none_to_the_others() -> None:
    def broken(_url: str, _pattern: str) -> list[dict[str, Any]] | None:
        raise RuntimeError("decoding the answer failed")

    shared = SharedListing(broken)
    with pytest.raises(RuntimeError):
        shared.items("amqp://x", "a-")
    with pytest.raises(RuntimeError):  # nothing left running: the next caller lists again
        shared.items("amqp://x", "a-")
