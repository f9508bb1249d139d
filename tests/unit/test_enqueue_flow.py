"""The enqueue rules without a broker: confirm bookkeeping and the steps' decisions."""

from __future__ import annotations

from typing import Any

import pytest

from roger.broker import enqueue_flow as flow
from roger.broker.publisher import ConnectionLost, Publish, Refused, Unroutable
from roger.broker.state_client import DuplicateJob
from roger.cli import UsageError, parse_jobs_jsonl
from roger.core.confirms import ConfirmLedger
from tests.jobs import basic, keyed

pytestmark = pytest.mark.unit


def test_a_multiple_confirm_settles_every_tag_up_to_it_and_no_more() -> None:
    ledger: ConfirmLedger[str] = ConfirmLedger()
    tags = [ledger.add(x) for x in "abcde"]
    assert tags == [1, 2, 3, 4, 5]
    assert ledger.settle(2, multiple=False) == ["b"]  # out of order, one only
    assert ledger.settle(4, multiple=True) == ["a", "c", "d"]
    assert ledger.settle(4, multiple=True) == []
    assert ledger.drain() == ["e"] and len(ledger) == 0


def run(jobs: list[flow.Prepared], answer: Any) -> tuple[list[Any], list[list[flow.Action]]]:
    """Drive the steps with ``answer(action, round)`` standing in for the broker."""
    gen = flow.steps(jobs)
    seen: list[list[flow.Action]] = []
    outcomes: Any = None
    try:
        while True:
            actions = gen.send(outcomes)
            seen.append(actions)
            outcomes = [answer(a, len(seen)) for a in actions]
    except StopIteration as stop:
        return stop.value, seen


def is_key(a: flow.Action) -> bool:
    return isinstance(a, Publish) and ".qkey." in a.queue


def test_keys_first_then_jobs_and_a_held_key_is_a_duplicate() -> None:
    jobs = [
        flow.prepare("p", keyed.unique, {"key": "a"}, None),
        flow.prepare("p", basic.noop, None, None),
        flow.prepare("p", keyed.unique, {"key": "b"}, None),
    ]
    results, seen = run(jobs, lambda _a, _r: None)
    assert [len(s) for s in seen] == [2, 3]  # one pipeline of keys, one of jobs
    assert all(is_key(a) for a in seen[0])
    assert [r.status for r, _ in results] == ["enqueued"] * 3

    def refuse_key_b(a: flow.Action, _r: int) -> Any:
        if is_key(a) and isinstance(a, Publish) and a.props.message_id == jobs[2].message.id:
            return Refused(a.queue)
        return None

    results, seen = run(jobs, refuse_key_b)
    assert [r.status for r, _ in results] == ["enqueued", "enqueued", "duplicate"]
    assert isinstance(results[2][1], DuplicateJob) and len(seen[1]) == 2


def test_a_failed_publish_releases_the_key_it_took() -> None:
    jobs = [flow.prepare("p", keyed.unique, {"key": "a"}, None)]
    results, seen = run(jobs, lambda a, r: Unroutable(a.queue) if r == 2 else None)
    assert results[0][0].status == "error" and "does not exist" in str(results[0][1])
    assert len(seen) == 3 and isinstance(seen[2][0], flow.Control)  # the release


def test_a_lost_confirm_retries_and_a_refused_retake_reads_the_holder() -> None:
    jobs = [flow.prepare("p", keyed.unique, {"key": "a"}, None)]

    def answer(a: flow.Action, r: int) -> Any:
        if r == 1:
            return ConnectionLost("gone")
        if r == 2:
            return Refused("k")  # our own first attempt holds it
        if r == 3:
            return jobs[0].message.id  # the holder
        return None

    results, seen = run(jobs, answer)
    assert [r.status for r, _ in results] == ["enqueued"]
    assert isinstance(seen[2][0], flow.Control)


def test_jsonl_parsing_names_the_bad_line() -> None:
    lines = ['{"job": "m:f", "args": [1]}', "", '{"job": "m:g", "queue": "q"}']
    assert parse_jobs_jsonl(lines, None) == [("m:f", [1], None), ("m:g", None, "q")]
    assert parse_jobs_jsonl(['{"job": "m:f"}'], "dflt") == [("m:f", None, "dflt")]
    for bad, needle in (
        ("{", "not JSON"),
        ("[1]", "expected"),
        ('{"job": "m:f", "arg": 1}', "unknown field"),
        ('{"job": "m:f", "queue": 1}', "queue must be"),
    ):
        with pytest.raises(UsageError, match=f"line 2: .*{needle}"):
            parse_jobs_jsonl(['{"job": "m:f"}', bad], None)
