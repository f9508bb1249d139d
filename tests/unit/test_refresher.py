"""``handlers.refresher``: each Partition's status refreshed every ``interval`` seconds
after it was first seen, never twice at once, from one loop over the cached Partitions."""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any, cast

import pytest

from roger_operator.builders.model import parse_partition
from roger_operator.handlers import partition
from roger_operator.handlers.context import Context
from roger_operator.handlers.refresher import Refresher, Schedule
from roger_operator.rabbit import BrokerBusy, BrokerError
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


def test_a_woken_partition_is_due_at_once_or_as_soon_as_its_refresh_ends() -> None:
    s = Schedule(30)
    s.due([A, B], now=0)
    s.wake(A, now=5)
    assert s.due([A, B], now=5) == [A]  # not at 30
    s.wake(A, now=6)  # woken while its refresh runs
    assert s.due([A, B], now=7) == []
    s.done(A)
    assert s.due([A, B], now=8) == [A]
    s.done(A)
    assert s.due([A, B], now=9) == []  # then every interval again


def busy_broker_error() -> tuple[BrokerBusy, Future[Any]]:
    pending: Future[Any] = Future()
    return BrokerBusy("RabbitMQ is busy: this call waited 15s", pending), pending


def test_a_busy_broker_call_wakes_its_partition_once_when_it_ends() -> None:
    """However many of a Partition's calls were busy, one wake when the call ends; a later
    busy call (a new wait) wakes it again."""
    ctx = Context(kube=cast(Any, None), broker=cast(Any, None))
    woken: list[Any] = []
    ctx.wake = woken.append
    first, pending = busy_broker_error()
    problem = partition.broker_problem(ctx, A, first, blocking=True)
    assert problem.reason == "BrokerUnavailable" and problem.blocking
    partition.broker_problem(ctx, A, busy_broker_error()[0])  # a retry, busy again
    assert A in ctx.broker_waits and woken == []
    pending.set_result(None)
    assert woken == [A] and A not in ctx.broker_waits
    again, pending = busy_broker_error()
    partition.broker_problem(ctx, A, again)
    pending.set_exception(RuntimeError("the call failed: a reconcile finds out why"))
    assert woken == [A, A]
    partition.broker_problem(ctx, B, BrokerError("connection refused"))  # not busy: no wake
    assert B not in ctx.broker_waits and woken == [A, A]


def test_a_deployment_event_leaves_a_partition_waiting_for_its_broker_call_alone() -> None:
    """While its busy broker call goes on, its Deployment's status events do not reconcile
    it again (the wake will); without a pending call they do, as before."""
    body = builders_partition()
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    body["status"] = {
        "observedGeneration": body["metadata"]["generation"],
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "BrokerUnavailable", "message": "x"}
        ],
    }
    ctx = Context(kube=cast(Any, None), broker=cast(Any, None))
    ctx.partitions[key] = body
    ctx.broker_waits.add(key)
    partition.status_from_deployment(ctx, key, {"metadata": {"resourceVersion": "1"}})
    ctx.broker_waits.clear()
    with pytest.raises(AttributeError):  # reconciles: the clients are needed (None)
        partition.status_from_deployment(ctx, key, {"metadata": {"resourceVersion": "2"}})


def _quiet(fn: Any, *args: Any) -> None:
    """Run ``fn``; its caller giving up (busy) is expected here."""
    with contextlib.suppress(Exception):
        fn(*args)


def test_a_broker_call_queued_past_its_wait_is_busy_and_tells_when_it_ends() -> None:
    """``Broker`` turns a lane's ``LaneBusy`` into ``BrokerBusy`` (no credentials in it),
    whose ``when_done`` runs once the queued call has run."""
    from roger_operator.rabbit import Broker

    url = "amqp://user:secret@127.0.0.1:1/%2F"
    broker = Broker(wait=0.3)
    spec = parse_partition(builders_partition())
    paused = {q.name for q in spec.queues if q.paused}
    broker._paused[(url, spec.partition_id)] = paused  # known: set_paused has nothing to do
    held, release = threading.Semaphore(0), threading.Event()
    ended = threading.Event()

    def hold(_n: int) -> None:  # distinct arguments: identical calls would be shared
        held.release()
        release.wait(5)

    blockers = [
        threading.Thread(target=lambda n=n: _quiet(broker.lanes.call, url, hold, n), daemon=True)
        for n in range(broker.lanes.threads)
    ]
    try:
        for blocker in blockers:
            blocker.start()
        for _ in blockers:  # every lane thread is held
            assert held.acquire(timeout=5)
        with pytest.raises(BrokerBusy) as busy:
            broker.set_paused(url, spec)
        assert "busy" in str(busy.value) and "secret" not in str(busy.value)
        busy.value.when_done(ended.set)
        assert not ended.is_set()
        release.set()
        assert ended.wait(5)
    finally:
        release.set()
        broker.close()


class RecordingBroker:
    """Stands for ``rabbit.Broker`` (its calls against a real broker are in
    ``tests/integration/test_queue_migration.py``): which calls a refresh makes."""

    def __init__(self, declared: bool, refuses: list[str] | None = None) -> None:
        self.is_declared = declared
        self.refuses = refuses or []
        self.retired_queues = ["old-retry-queue"]
        self.calls: list[str] = []

    def declared(self, _url: str, _spec: Any) -> bool:
        return self.is_declared

    def declare(self, _url: str, _spec: Any) -> list[str]:
        self.calls.append("declare")
        self.is_declared = not self.refuses
        return self.refuses

    def stats(self, _url: str, _spec: Any) -> list[dict[str, Any]]:
        self.calls.append("stats")
        return []

    def retired(self, _url: str, _partition_id: str) -> list[str]:
        return self.retired_queues

    def drain_retired(self, _url: str, _spec: Any) -> list[str]:
        self.calls.append("drain_retired")
        self.retired_queues = []
        return []


class QuietKube:
    """No Events, no pods; status patches recorded."""

    def __init__(self) -> None:
        self.statuses: list[Any] = []

    def request(self, *_a: Any, **_k: Any) -> dict[str, Any]:
        return {"items": []}

    def patch_partition_status(self, _ns: str, _name: str, status: Any) -> None:
        self.statuses.append(status)


def ready_partition_refresh(
    broker: RecordingBroker, monkeypatch: pytest.MonkeyPatch
) -> tuple[QuietKube, list[str]]:
    """Refresh a Partition whose status says Ready for its generation, rollout finished."""
    body = builders_partition()
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    body["status"] = {
        "observedGeneration": meta["generation"],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": ""}],
    }
    kube = QuietKube()
    ctx = Context(kube=cast(Any, kube), broker=cast(Any, broker))
    ctx.partitions[key] = body
    spec = parse_partition(body)
    ctx.urls[partition.url_key(spec)] = ("amqp://127.0.0.1:5672/%2F", time.monotonic())
    reconciles: list[str] = []

    def reconcile(_ctx: Context, _body: Any, trigger: str = "") -> None:
        reconciles.append(trigger)

    monkeypatch.setattr(partition, "reconcile", reconcile)
    deployment = {
        "metadata": {"generation": 1, "resourceVersion": "1"},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2},
    }
    partition.refresh(ctx, body, deployment=deployment)
    return kube, reconciles


def test_a_ready_partition_whose_declare_left_work_has_it_finished_by_the_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A declare that left work "for the next reconcile" (its queue listing failed, a bound
    policy, an intake to replace) on a Partition already Ready: no event may come for
    days, so the status refresh declares again, then drains what it found retired."""
    broker = RecordingBroker(declared=False)
    kube, reconciles = ready_partition_refresh(broker, monkeypatch)
    assert broker.calls == ["declare", "stats", "drain_retired"]
    assert reconciles == [] and kube.statuses  # status only, as every refresh


def test_a_ready_partition_declared_costs_the_refresh_no_declare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = RecordingBroker(declared=True)
    _kube, reconciles = ready_partition_refresh(broker, monkeypatch)
    assert broker.calls == ["stats"] and reconciles == []


def test_a_declare_refused_at_refresh_time_reconciles_the_whole_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = RecordingBroker(declared=False, refuses=["queue x: inequivalent arg"])
    kube, reconciles = ready_partition_refresh(broker, monkeypatch)
    assert broker.calls == ["declare"] and reconciles == ["refresh"] and kube.statuses == []
