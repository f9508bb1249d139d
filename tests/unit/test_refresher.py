"""``handlers.refresher``: each Partition's status refreshed every ``interval`` seconds
after it was first seen, never twice at once, from one loop over the cached Partitions."""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any, cast

import pytest

from roger_operator.handlers import partition
from roger_operator.handlers.context import Context
from roger_operator.handlers.refresher import Refresher, Schedule
from tests.unit.test_operator_builders import partition as builders_partition

pytestmark = pytest.mark.unit
A, B = ("ns", "a"), ("ns", "b")


def test_a_partition_is_due_an_interval_after_it_was_first_seen_then_every_interval() -> None:
    s = Schedule(30)
    assert s.due([A], now=0) == []
    assert s.due([A, B], now=10) == []  # B first seen at 10
    assert s.due([A, B], now=30) == [A]
    s.done(A)
    assert s.due([A, B], now=40) == [B]
    s.done(B)
    assert s.due([A, B], now=59) == []
    assert s.due([A, B], now=60) == [A]


def test_a_refresh_still_running_is_not_started_again() -> None:
    s = Schedule(30)
    s.due([A], now=0)
    assert s.due([A], now=30) == [A]
    assert s.due([A], now=61) == []  # the first one has not finished
    s.done(A)
    assert s.due([A], now=62) == [A]


def test_a_partition_gone_is_forgotten_and_a_new_one_waits_its_interval() -> None:
    s = Schedule(30)
    s.due([A], now=0)
    assert s.due([], now=40) == []
    assert A not in s.next_due
    assert s.due([A], now=41) == []  # seen anew: due at 71
    assert s.due([A], now=71) == [A]


def test_the_refresher_hands_the_latest_body_and_survives_a_failing_refresh() -> None:
    now = [0.0]
    seen: list[tuple[Any, Any]] = []
    done = threading.Semaphore(0)
    ctx = Context(kube=cast(Any, None), broker=cast(Any, None))  # no I/O: refresh is ours
    bodies = ctx.partitions

    def refresh(_ctx: Context, body: Mapping[str, Any]) -> None:
        seen.append(((body.get("metadata") or {}).get("name"), body["v"]))
        done.release()
        if body["v"] == 1:
            raise RuntimeError("the broker said no")

    bodies[A] = {"metadata": {"name": "a"}, "v": 1}
    bodies[B] = {"metadata": {"name": "b"}, "v": 1}
    r = Refresher(ctx, refresh, interval=30, threads=2, clock=lambda: now[0])
    try:
        r.run_due()
        now[0] = 30
        r.run_due()
        assert done.acquire(timeout=5) and done.acquire(timeout=5)
        assert sorted(seen) == [("a", 1), ("b", 1)]  # both failed, logged
        bodies[A] = {"metadata": {"name": "a"}, "v": 2}  # a watch event came
        now[0] = 60
        for _ in range(50):  # until both failures were marked done
            if not r.schedule.running:
                break
            threading.Event().wait(0.05)
        r.run_due()
        assert done.acquire(timeout=5) and done.acquire(timeout=5)
        assert sorted(seen[2:]) == [("a", 2), ("b", 1)]
    finally:
        r.stop()


def test_a_body_taken_before_the_deletion_began_neither_reconciles_nor_refreshes() -> None:
    """The refresher (or a child's event) may hold a Partition's body from before its
    deletion and wait for its lock while the finalizer deletes the queues and children:
    once it gets the lock, it must not declare or apply them again. (No clients here: any
    step past the check would fail.)"""
    ctx = Context(kube=cast(Any, None), broker=cast(Any, None))
    body = builders_partition()
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    ctx.partitions[key] = body
    ctx.deleting[key] = body["metadata"]["uid"]
    partition.reconcile(ctx, body)
    partition.refresh(ctx, body)
    newer = copy.deepcopy(body)
    newer["metadata"]["uid"] = "created-anew-with-the-same-name"
    assert not ctx.being_deleted(key, newer)
    with pytest.raises(AttributeError):  # past the check: the clients are needed (None)
        partition.reconcile(ctx, newer)


def test_a_refresh_runs_only_for_the_partition_the_cache_still_holds() -> None:
    """A refresh whose body was taken before the Partition was deleted and gone (its
    DELETED event dropped it from the cache, and from ``deleting``) or replaced by a new
    one of the same name does nothing; the cached one goes past the check."""
    ctx = Context(kube=cast(Any, None), broker=cast(Any, None))
    body = builders_partition()
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    partition.refresh(ctx, body)  # gone
    newer = copy.deepcopy(body)
    newer["metadata"]["uid"] = "created-anew-with-the-same-name"
    ctx.partitions[key] = newer
    partition.refresh(ctx, body)  # replaced
    with pytest.raises(AttributeError):  # past the check: the clients are needed (None)
        partition.refresh(ctx, newer)
