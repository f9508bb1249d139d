"""Buried jobs as records (roger.core.buried): the fold, the filters, replay stamping and
its bound, and the stamps a replayed job keeps through its retries and burial."""

from __future__ import annotations

import json
from typing import Any

import pytest

from roger.core import buried as bu
from roger.core import envelope, message, naming, topology

pytestmark = pytest.mark.unit


def job_body(ident: str, name: str = "m:f", retry_count: int = 2, queue: str = "q") -> bytes:
    msg = message.JobMessage(ident, name, {"n": ident}, queue, retry_count=retry_count)
    return message.encode(msg)


def burial(offset: int, ident: str, kind: str = "ValueError", **headers: Any) -> bu.Record:
    h = {bu.ERROR_KIND: kind, bu.ERROR_MESSAGE: "boom", bu.BURIED_REASON: "retries_exhausted"}
    h.update(headers)
    return bu.Record(offset, h, job_body(ident), 1000.0)


def tomb(offset: int, bid: str, kind: str = bu.REPLAYED) -> bu.Record:
    return bu.Record(offset, bu.tombstone_headers(bid, kind, 1.0), b"")


def test_fold_keeps_order_and_removes_tombstoned_burials() -> None:
    records = [burial(0, "a"), burial(1, "b"), burial(2, "c"), tomb(3, "b/2/0")]
    assert [j.id for j in bu.fold(records)] == ["a", "c"]


def test_the_same_attempt_filed_twice_is_one_job() -> None:
    """A filing or burial interrupted after the broker's confirm leaves a second copy."""
    records = [burial(0, "a"), burial(1, "a"), burial(2, "b")]
    jobs = bu.fold(records)
    assert [j.id for j in jobs] == ["a", "b"] and jobs[0].offset == 0


def test_a_tombstone_also_covers_a_later_copy_of_the_same_burial() -> None:
    assert bu.fold([burial(0, "a"), tomb(1, "a/2/0"), burial(2, "a")]) == []


def test_a_job_buried_again_after_a_replay_is_a_new_burial() -> None:
    records = [burial(0, "a"), tomb(1, "a/2/0"), burial(2, "a", **{bu.REPLAYED_COUNT: 1})]
    [job] = bu.fold(records)
    assert job.burial_id == "a/2/1" and job.replayed_count == 1


def test_summary_fields() -> None:
    [job] = bu.fold([burial(0, "a", **{bu.BURIED_AT: 1_700_000_000})])
    s = job.summary()
    assert s["id"] == "a" and s["job"] == "m:f" and s["error_kind"] == "ValueError"
    assert s["attempts"] == 3 and s["buried_at"].startswith("2023-11-14T22:13:20")
    d = job.detail()
    assert d["args"] == {"n": "a"} and d["burial_id"] == "a/2/0" and d["history"]


def test_a_body_that_is_no_job_is_listed_but_never_replayed() -> None:
    [job] = bu.fold([bu.Record(0, {}, b"not json")])
    assert job.burial_id.startswith("sha256:") and job.name == ""
    assert bu.replay_refusal(job, 3, force=True) == "its body is not a job"


def test_selection_needs_ids_or_all() -> None:
    jobs = bu.fold([burial(0, "a"), burial(1, "b", kind="KeyError")])
    assert bu.select(jobs, bu.Selection(all_=False)) == []
    assert [j.id for j in bu.select(jobs, bu.Selection(ids=("b",), all_=False))] == ["b"]
    assert [j.id for j in bu.select(jobs, bu.Selection(error="KeyError"))] == ["b"]
    assert [j.id for j in bu.select(jobs, bu.Selection(job="m:f"))] == ["a", "b"]
    assert bu.select(jobs, bu.Selection(job="other:f")) == []
    assert bu.select(jobs, bu.Selection(queue="other")) == []


def test_find_prefers_the_newest_burial_of_a_job() -> None:
    jobs = bu.fold([burial(0, "a"), burial(2, "a", **{bu.REPLAYED_COUNT: 1})])
    found = bu.find(jobs, "a")
    assert found is not None and found.burial_id == "a/2/1"
    assert bu.find(jobs, "a/2/0") is not None and bu.find(jobs, "zz") is None


def test_replay_bound_refuses_unless_forced() -> None:
    [job] = bu.fold([burial(0, "a", **{bu.REPLAYED_COUNT: bu.MAX_REPLAYS})])
    assert bu.replay_refusal(job, bu.MAX_REPLAYS, force=False) is not None
    assert bu.replay_refusal(job, bu.MAX_REPLAYS, force=True) is None
    [fresh] = bu.fold([burial(0, "b", **{bu.REPLAYED_COUNT: bu.MAX_REPLAYS - 1})])
    assert bu.replay_refusal(fresh, bu.MAX_REPLAYS, force=False) is None


def test_replayed_message_is_a_fresh_attempt_stamped() -> None:
    [job] = bu.fold([burial(0, "a", **{bu.REPLAYED_COUNT: 1})])
    body, headers = bu.replayed_message(job, 1234.5)
    data = json.loads(body)
    assert data["retry_count"] == 0 and data["id"] == "a" and data["args"] == {"n": "a"}
    assert headers == {bu.REPLAYED_AT: 1234, bu.REPLAYED_COUNT: 2, bu.BURIAL_ID: "a/2/1"}


def test_replay_stamps_survive_retries_and_burial() -> None:
    delivered = {bu.REPLAYED_AT: 99, bu.REPLAYED_COUNT: 2, "x-other": "dropped", "x-death": []}
    carried = bu.carried_headers(delivered)
    assert carried == {bu.REPLAYED_AT: 99, bu.REPLAYED_COUNT: 2}
    msg = message.decode(job_body("a"))
    retry = envelope.retry_properties(msg, "p", ("E", "m"), carried)
    assert retry["headers"][bu.REPLAYED_COUNT] == 2
    buried = envelope.burial_properties(msg, "p", ("E", "m"), None, "not_retryable", carried, 5.0)
    assert buried["headers"][bu.REPLAYED_COUNT] == 2 and buried["headers"][bu.BURIED_AT] == 5
    assert bu.carried_headers(None) == {} and bu.carried_headers({bu.REPLAYED_COUNT: "x"}) == {}


def test_filing_keeps_the_burial_headers_and_names_the_burial() -> None:
    [job] = bu.fold([burial(0, "a")])
    headers = bu.filing_headers(job, 50.0)
    assert headers[bu.RECORD] == bu.BURIAL and headers[bu.BURIAL_ID] == "a/2/0"
    assert headers[bu.ERROR_KIND] == "ValueError" and headers[bu.BURIED_AT] == 1000


def test_log_and_staging_names_and_arguments() -> None:
    assert naming.buried_log_name("p", "q") == "p-q.buried.log"
    assert naming.belongs_to_partition(naming.replay_staging_name("p", "q"), "p")
    assert naming.belongs_to_partition(naming.buried_lock_name("p", "q"), "p")
    log = topology.buried_log_arguments()
    assert log["x-queue-type"] == "stream" and log["x-max-age"] == "30D"
    staging = topology.replay_staging_arguments("p", "q")
    assert staging["x-dead-letter-routing-key"] == "p-q"
    assert staging["x-dead-letter-strategy"] == "at-least-once"
