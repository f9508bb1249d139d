"""The enqueue rules without a broker: confirm bookkeeping and the steps' decisions."""

from __future__ import annotations

from typing import Any

import pytest

from roger.broker import enqueue_flow as flow
from roger.broker.publisher import ConnectionLost, Publish, Unroutable
from roger.broker.state_client import DuplicateJob
from roger.cli.common import UsageError
from roger.cli.enqueue import parse_jobs_jsonl
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


def control(a: flow.Action) -> tuple[str, str]:
    return (a.what, a.job_id) if isinstance(a, flow.Control) else ("publish", "")


def take_all(a: flow.Action, _r: int) -> Any:
    """Stands in for the broker: every key is free (a take answers our own job id)."""
    return a.job_id if isinstance(a, flow.Control) and a.what == "take" else None


def test_keys_first_then_jobs_then_holds_and_a_held_key_is_a_duplicate() -> None:
    jobs = [
        flow.prepare("p", keyed.unique, {"key": "a"}, None),
        flow.prepare("p", basic.noop, None, None),
        flow.prepare("p", keyed.unique, {"key": "b"}, None),
    ]
    results, seen = run(jobs, take_all)
    assert [len(s) for s in seen] == [1, 1, 3, 2]  # keys in order, the jobs, the holds
    ids = [j.message.id for j in jobs]
    assert [control(a) for s in seen[:2] for a in s] == [("take", ids[0]), ("take", ids[2])]
    assert all(isinstance(a, Publish) for a in seen[2])
    assert [control(a) for a in seen[3]] == [("hold", ids[0]), ("hold", ids[2])]
    assert [r.status for r, _ in results] == ["enqueued"] * 3

    def key_b_held(a: flow.Action, r: int) -> Any:
        if isinstance(a, flow.Control) and a.job_id == ids[2] and a.what == "take":
            return "someone-else"  # the holder
        return take_all(a, r)

    results, seen = run(jobs, key_b_held)
    assert [r.status for r, _ in results] == ["enqueued", "enqueued", "duplicate"]
    assert isinstance(results[2][1], DuplicateJob) and len(seen[2]) == 2
    assert [control(a) for a in seen[3]] == [("hold", ids[0])]


def test_a_failed_publish_releases_the_key_it_took() -> None:
    jobs = [flow.prepare("p", keyed.unique, {"key": "a"}, None)]

    def answer(a: flow.Action, r: int) -> Any:
        return Unroutable(a.queue) if isinstance(a, Publish) else take_all(a, r)

    results, seen = run(jobs, answer)
    assert results[0][0].status == "error" and "does not exist" in str(results[0][1])
    assert [control(a) for a in seen[2]] == [("release", jobs[0].message.id)]


def test_a_lost_confirm_publishes_once_more_and_a_key_error_refuses_the_job() -> None:
    jobs = [flow.prepare("p", basic.noop, None, None)]
    lost = {"once": True}

    def answer(a: flow.Action, _r: int) -> Any:
        if lost.pop("once", False):
            return ConnectionLost("gone")
        return None

    results, seen = run(jobs, answer)
    assert [r.status for r, _ in results] == ["enqueued"] and len(seen) == 2
    keyed_job = [flow.prepare("p", keyed.unique, {"key": "a"}, None)]
    results, seen = run(keyed_job, lambda _a, _r: TimeoutError("key stayed locked"))
    assert results[0][0].status == "error" and len(seen) == 1  # nothing published


def test_jsonl_parsing_names_the_bad_line() -> None:
    lines = ['{"job": "m:f", "args": [1]}', "", '{"job": "m:g", "queue": "q"}']
    assert parse_jobs_jsonl(lines, None) == [("m:f", [1], None, None), ("m:g", None, "q", None)]
    assert parse_jobs_jsonl(['{"job": "m:f"}'], "dflt") == [("m:f", None, "dflt", None)]
    assert parse_jobs_jsonl(['{"job": "m:f", "id": "mine"}'], None) == [("m:f", None, None, "mine")]
    for bad, needle in (
        ("{", "not JSON"),
        ("[1]", "expected"),
        ('{"job": "m:f", "arg": 1}', "unknown field"),
        ('{"job": "m:f", "queue": 1}', "queue must be"),
        ('{"job": "m:f", "id": 7}', "id must be"),
    ):
        with pytest.raises(UsageError, match=f"line 2: .*{needle}"):
            parse_jobs_jsonl(['{"job": "m:f"}', bad], None)


def test_a_caller_chosen_id_is_used_as_given_and_checked() -> None:
    prepared = flow.prepare("p", "m:f", None, None, "order-42")
    assert prepared.message.id == "order-42"
    many = flow.prepare_many("p", [("m:f", None, None, "a"), ("m:f", 1)])
    assert many[0].message.id == "a" and len(many[1].message.id) == 32
    for bad in ("", "x" * 129, "tab\there", "é" * 128):
        with pytest.raises(flow.EnqueueError, match="job id"):
            flow.prepare("p", "m:f", None, None, bad)
