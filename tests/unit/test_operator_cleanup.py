"""The deletion decision (roger_operator.builders.cleanup): queue facts -> delete or keep."""

from __future__ import annotations

import datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest

from roger.core import naming
from roger_operator.builders.cleanup import (
    Name,
    QueueFacts,
    Verdict,
    attribute,
    consumed,
    decide,
    ladder_deleted,
    still_running,
    summary,
)
from roger_operator.builders.model import parse_partition
from roger_operator.handlers.context import Context
from roger_operator.handlers.deletion import since_deletion, stop_workers

pytestmark = pytest.mark.unit

P = "shop"
MAIN = naming.queue_name(P, "default")
RETRY = naming.retry_queue_name(P, "default", 5)
BURIED = naming.buried_queue_name(P, "default")
OTHER_MAIN = naming.queue_name(P, "email")


def job(name: str, ready: int = 0, unacked: int | None = 0, consumers: int = 0) -> QueueFacts:
    group = name.split(".", 1)[0]
    return QueueFacts(Name(name, "job", group), ready, consumers, unacked)


def other(name: str, kind: str, ready: int = 0, unacked: int | None = 0) -> QueueFacts:
    return QueueFacts(Name(name, kind), ready, 0, unacked)  # type: ignore[arg-type]


def verdicts(facts: list[QueueFacts]) -> dict[str, Verdict]:
    return {v.name: v for v in decide(facts)}


def test_empty_partition_is_deleted_entirely_streams_included() -> None:
    facts = [job(MAIN), job(RETRY), job(BURIED), other(f"{P}.control", "stream")]
    out = verdicts(facts)
    assert all(v.delete for v in out.values()), out
    assert set(out) == {MAIN, RETRY, BURIED, f"{P}.control"}


def test_unacked_job_keeps_its_whole_queue_group_and_the_state() -> None:
    """A running job acks on the main queue and may republish to retry/buried queues."""
    facts = [
        job(MAIN, unacked=1),
        job(RETRY),
        job(BURIED),
        job(OTHER_MAIN),
        other(f"{P}.control", "stream"),
    ]
    out = verdicts(facts)
    assert not out[MAIN].delete and "1 unacked" in out[MAIN].reason
    assert not out[RETRY].delete and MAIN in out[RETRY].reason
    assert not out[BURIED].delete
    assert out[OTHER_MAIN].delete  # another queue of the partition, empty: goes
    assert not out[f"{P}.control"].delete and "kept" in out[f"{P}.control"].reason


def test_ready_only_check_was_not_enough() -> None:
    """The old rule (ready == 0) would have deleted a queue whose job is still running."""
    out = verdicts([job(MAIN, ready=0, unacked=2)])
    assert not out[MAIN].delete


def test_message_waiting_in_a_retry_queue_keeps_the_main_queue_it_returns_to() -> None:
    out = verdicts([job(MAIN), job(RETRY, ready=1)])
    assert not out[MAIN].delete and not out[RETRY].delete
    assert out[RETRY].reason == "1 ready"


def test_unknown_unacked_counts_as_a_job() -> None:
    out = verdicts([job(MAIN, unacked=None)])
    assert not out[MAIN].delete and "unacked unknown" in out[MAIN].reason


def test_consumers_keep_a_queue() -> None:
    out = verdicts([job(MAIN, consumers=1)])
    assert not out[MAIN].delete and "1 consumers" in out[MAIN].reason


def test_waiting_rooms_and_key_queues_go_only_when_empty() -> None:
    room = naming.execution_waiting_queue_name(P, "acct-1")
    empty_room = naming.execution_waiting_queue_name(P, "acct-2")
    key = naming.queue_key_queue_name(P, "k1")
    empty_key = naming.queue_key_queue_name(P, "k2")
    facts = [
        other(room, "waiting", ready=3),
        other(empty_room, "waiting"),
        other(key, "key", ready=1),
        other(empty_key, "key"),
    ]
    out = verdicts(facts)
    assert not out[room].delete and out[empty_room].delete
    assert not out[key].delete and out[empty_key].delete


def test_locks_of_live_connections_are_never_deleted_and_keep_the_state() -> None:
    lock = naming.execution_lock_queue_name(P, "acct-1")
    facts = [
        QueueFacts(Name(lock, "lock"), 0, 0, 0, exclusive=True),
        other(f"{P}.control", "stream"),
    ]
    out = verdicts(facts)
    assert not out[lock].delete and "live connection" in out[lock].reason
    assert not out[f"{P}.control"].delete


def test_a_stream_with_readers_is_kept() -> None:
    facts = [job(MAIN), QueueFacts(Name(f"{P}.control", "stream"), 0, 1, 0)]
    out = verdicts(facts)
    assert out[MAIN].delete and not out[f"{P}.control"].delete


def test_names_another_claimed_partition_explains_are_never_deleted() -> None:
    """Partition ``shop`` must not delete ``shop-eu``'s queue ``shop-eu-default``."""
    names = attribute(
        P,
        [MAIN],
        [MAIN],
        ["default"],
        listed=[
            "shop-eu-default",
            "shop-execution-waiting-x",
            "shop.qkey." + "a" * 32,
            "shop.qkey." + "a" * 32 + ".lock",
            "shop.xkey." + "b" * 32,
            "shop.pause.old",
            "shop.unknown",
            "shop-default.retry.999",
            "shopping-default",
        ],
        claimed_ids=["shop", "shop-eu", "shop-execution"],
    )
    by_name = {n.name: n for n in names}
    assert "shop-eu-default" not in by_name  # not attributable: left alone
    assert "shopping-default" not in by_name and "shop.unknown" not in by_name
    assert by_name["shop-execution-waiting-x"].other_owner == "shop-execution"
    assert by_name["shop.qkey." + "a" * 32].kind == "key"
    assert by_name["shop.qkey." + "a" * 32 + ".lock"].kind == "lock"
    assert by_name["shop.xkey." + "b" * 32].kind == "lock"
    assert by_name["shop.pause.old"].kind == "stream"
    assert by_name["shop-default.retry.999"] == Name("shop-default.retry.999", "job", MAIN)
    assert by_name[f"{P}.pause.default"].kind == "stream"
    assert {f"{P}.control", f"{P}.checkpoint", f"{P}.workers"} <= set(by_name)
    facts = [QueueFacts(by_name["shop-execution-waiting-x"], 0, 0, 0)]
    (verdict,) = decide(facts)
    assert not verdict.delete and "shop-execution" in verdict.reason


def test_still_running_waits_for_pods_unacked_consumers_and_locks() -> None:
    assert still_running([job(MAIN)], pods=0) == []
    assert still_running([job(MAIN)], pods=2) == ["2 worker pods"]
    assert still_running([job(MAIN, unacked=1)], pods=0) == [f"{MAIN}: 1 unacked"]
    assert still_running([job(MAIN, consumers=1)], pods=0) == [f"{MAIN}: 1 consumers"]
    lock = QueueFacts(Name(f"{P}.xkey." + "c" * 32, "lock"), 0, 0, 0, exclusive=True)
    assert still_running([lock], pods=0) == [f"{lock.name.name}: lock held"]
    # A sample not taken yet is worth waiting for; without the management API it never comes.
    assert still_running([job(MAIN, unacked=None)], pods=0)
    assert still_running([job(MAIN, unacked=None)], pods=0, sampled=False) == []


def test_summary_lists_what_is_kept_with_why() -> None:
    deleted, kept = summary(decide([job(MAIN, unacked=1), job(OTHER_MAIN)]))
    assert deleted == [OTHER_MAIN]
    assert kept == [f"{MAIN} (1 unacked)"]


def test_deletion_bounds_count_from_the_deletion_timestamp() -> None:
    now = datetime.datetime(2026, 1, 1, 12, 0, 30, tzinfo=datetime.UTC)
    body = {"metadata": {"deletionTimestamp": "2026-01-01T12:00:00Z"}}
    assert since_deletion(body, now) == 30.0
    assert since_deletion({"metadata": {}}, now) == 0.0
    assert since_deletion({"metadata": {"deletionTimestamp": "garbage"}}, now) == 0.0


def test_only_queues_workers_consume_can_hold_unacked_messages() -> None:
    assert consumed(Name(MAIN, "job", MAIN))
    assert not consumed(Name(RETRY, "job", MAIN)) and not consumed(Name(BURIED, "job", MAIN))
    assert consumed(Name(naming.execution_waiting_queue_name(P, "k"), "waiting"))
    assert consumed(Name(naming.queue_key_queue_name(P, "k"), "key"))
    assert not consumed(Name(f"{P}.control", "stream"))


def test_a_delayed_job_keeps_the_ladder_and_every_queue_it_may_go_to() -> None:
    ladder = [naming.delay_queue_name(P, k) for k in (0, 7)]
    facts = [
        job(MAIN),
        job(OTHER_MAIN),
        other(ladder[0], "delay"),
        other(ladder[1], "delay", ready=1),
        other(f"{P}.control", "stream"),
    ]
    out = verdicts(facts)
    assert not any(v.delete for v in out.values()), out
    assert "shop.delay.7" in out[MAIN].reason and "same ladder" in out[ladder[0]].reason
    assert not ladder_deleted(list(out.values()), P)


def test_an_empty_ladder_goes_with_its_exchanges() -> None:
    facts = [job(MAIN), other(naming.delay_queue_name(P, 3), "delay")]
    out = list(verdicts(facts).values())
    assert all(v.delete for v in out) and ladder_deleted(out, P)


def test_the_ladder_is_attributed_to_its_partition_only() -> None:
    names = attribute(P, [MAIN], [MAIN], [], [f"{P}.delay.4", f"{P}-x.delay.4", f"{P}.delay.x"])
    kinds = {n.name: n.kind for n in names}
    assert kinds[f"{P}.delay.4"] == "delay" and kinds[naming.delay_queue_name(P, 0)] == "delay"
    assert f"{P}-x.delay.4" not in kinds and f"{P}.delay.x" not in kinds


class _Deployments:
    """The Deployment calls of ``Kube`` the finalizer makes: get, delete (with a uid)."""

    def __init__(self, live: dict[str, Any] | None) -> None:
        self.live = live
        self.deleted: list[tuple[str, str | None]] = []

    def get(self, path: str) -> dict[str, Any] | None:
        return self.live

    def delete(self, path: str, propagation: str = "Background", uid: str | None = None) -> bool:
        self.deleted.append((path, uid))
        return True


def _deployment(owner_uid: str | None) -> dict[str, Any]:
    refs = [{"uid": owner_uid, "controller": True}] if owner_uid else []
    return {"metadata": {"name": "roger-p", "uid": "d-1", "ownerReferences": refs}}


@pytest.mark.parametrize(
    ("live", "deleted"),
    [
        (_deployment("u-1"), [("/apis/apps/v1/namespaces/n/deployments/roger-p", "d-1")]),
        (_deployment("someone-else"), []),  # same name, never the Partition's: left alone
        (_deployment(None), []),
        (None, []),
    ],
)
def test_the_finalizer_deletes_only_the_partitions_own_deployment(
    live: dict[str, Any] | None, deleted: list[tuple[str, str]]
) -> None:
    spec = parse_partition(
        {
            "metadata": {"name": "p", "namespace": "n", "uid": "u-1", "generation": 1},
            "spec": {"amqp": {"secretRef": {"name": "s"}}, "worker": {"image": "i"},
                     "queues": [{"name": "q"}]},
        }
    )  # fmt: skip
    kube = _Deployments(live)
    stop_workers(cast(Context, SimpleNamespace(kube=kube)), ("n", "p"), spec)
    assert kube.deleted == deleted
