"""The queue planner (``builders.queue_plan``): what is on the broker + the spec -> actions.
A spec change RabbitMQ cannot apply in place (length bound, retry levels) is migrated,
never a refused declaration; only queues Roger did not make are refused."""

from __future__ import annotations

from typing import Any

import pytest

from roger.core import naming, topology
from roger_operator.builders import queue_plan as qp

pytestmark = pytest.mark.unit
P, Q = "tenant-a", "default"
STEM = naming.queue_name(P, Q)
BURIED = naming.buried_queue_name(P, Q)
LEVELS = (1, 3)


def seen(
    *queues: tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], int],
) -> dict[str, qp.SeenQueue]:
    out = {}
    for q in queues:
        name, args = q[0], q[1]
        messages = q[2] if len(q) > 2 else 0  # type: ignore[misc]
        out[name] = qp.SeenQueue(name, args, int(messages))
    return out


def as_declared(levels: tuple[int, ...] = LEVELS) -> dict[str, qp.SeenQueue]:
    """The broker after this version declared the queue's family."""
    return seen(*topology.declarations(P, Q, levels))


def plan(
    found: dict[str, qp.SeenQueue] | None, levels: tuple[int, ...] = LEVELS, bound: int = 10
) -> list[qp.Action]:
    return qp.plan_queue(P, Q, levels, bound, found)


def kinds(actions: list[qp.Action]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in actions:
        name = a.covers if isinstance(a, qp.SetBound) else a.name
        out.setdefault(type(a).__name__, []).append(name)
    return out


def test_nothing_on_the_broker_declares_every_queue_and_bounds_buried_by_policy() -> None:
    actions = plan({})
    wanted = topology.declarations(P, Q, LEVELS)
    assert [a for a in actions if isinstance(a, qp.Declare)] == [
        qp.Declare(n, a) for n, a in wanted
    ]
    (bound,) = [a for a in actions if isinstance(a, qp.SetBound)]
    assert bound == qp.SetBound(
        covers=BURIED,
        policy=f"roger-bound:{BURIED}",
        pattern=r"^tenant\-a\-default\.buried$",
        definition={"max-length": 10, "overflow": "drop-head"},
    )
    assert "x-max-length" not in dict(wanted)[BURIED]  # never an argument any more


def test_unknown_broker_state_declares_everything_and_lets_the_broker_judge() -> None:
    assert kinds(plan(None)) == {
        "Declare": [n for n, _ in topology.declarations(P, Q, LEVELS)],
        "SetBound": [BURIED],
    }


def test_as_declared_is_declared_again_with_the_same_arguments() -> None:
    assert kinds(plan(as_declared())) == kinds(plan({}))


@pytest.mark.parametrize("bound", [1, 10, 20, 10_000])
def test_a_changed_bound_is_only_a_new_policy(bound: int) -> None:
    """buriedMaxLength 10 -> 20 (or any value) on queues this version declared."""
    actions = plan(as_declared(), bound=bound)
    assert not [a for a in actions if isinstance(a, qp.Refuse | qp.ReplaceIntake)]
    (policy,) = [a for a in actions if isinstance(a, qp.SetBound)]
    assert policy.definition["max-length"] == bound


def legacy(bound: int) -> dict[str, qp.SeenQueue]:
    """``.buried`` as earlier versions declared it: ``x-max-length`` among its arguments."""
    found = as_declared()
    found[BURIED] = qp.SeenQueue(BURIED, {"x-queue-type": "quorum", "x-max-length": bound}, 3)
    return found


@pytest.mark.parametrize("wanted", [5, 10])
def test_a_legacy_bound_at_or_above_the_wanted_one_is_kept_and_the_policy_lowers_it(
    wanted: int,
) -> None:
    """RabbitMQ applies the lower of argument and policy: the policy is enough."""
    actions = plan(legacy(10), bound=wanted)
    assert kinds(actions)["KeepExisting"] == [BURIED]
    assert BURIED not in kinds(actions)["Declare"]  # its arguments would be refused
    assert kinds(actions)["SetBound"] == [BURIED]


def test_a_legacy_bound_below_the_wanted_one_replaces_the_intake() -> None:
    actions = plan(legacy(10), bound=20)
    (replace,) = [a for a in actions if isinstance(a, qp.ReplaceIntake)]
    assert replace == qp.ReplaceIntake(P, Q, BURIED, topology.buried_queue_arguments())
    assert kinds(actions)["SetBound"] == [BURIED]
    assert BURIED not in kinds(actions).get("Declare", [])


def test_a_legacy_overflow_argument_alone_is_kept() -> None:
    found = as_declared()
    found[BURIED] = qp.SeenQueue(BURIED, {"x-queue-type": "quorum", "x-overflow": "drop-head"})
    assert kinds(plan(found))["KeepExisting"] == [BURIED]


def test_retry_levels_changed_declare_the_new_and_drain_the_retired() -> None:
    """levels [1, 3] -> [1, 2]: .retry.2 is new, .retry.3 drains (its jobs still go back to
    the main queue when their delay is over) and is deleted once empty."""
    found = as_declared((1, 3))
    found[f"{STEM}.retry.3"] = qp.SeenQueue(
        f"{STEM}.retry.3", found[f"{STEM}.retry.3"].arguments, 4
    )
    actions = plan(found, levels=(1, 2))
    assert f"{STEM}.retry.2" in kinds(actions)["Declare"]
    assert qp.DrainRetry(f"{STEM}.retry.3", 4) in actions
    assert f"{STEM}.retry.1" in kinds(actions)["Declare"]
    assert "Refuse" not in kinds(actions)


def test_only_this_stems_retry_queues_are_drained() -> None:
    """``tenant-a-default-x.retry.3`` is another stem's (claimed by its own Partition)."""
    found = as_declared()
    for name in (f"{STEM}-x.retry.3", f"{STEM}.retry.3x", f"{STEM}.retry.", f"{STEM}.buried.log"):
        found[name] = qp.SeenQueue(name, {})
    assert "DrainRetry" not in kinds(plan(found, levels=LEVELS))
    found[f"{STEM}.retry.7"] = qp.SeenQueue(f"{STEM}.retry.7", {})
    assert kinds(plan(found))["DrainRetry"] == [f"{STEM}.retry.7"]


def test_a_queue_of_another_type_is_refused_by_name_and_argument() -> None:
    found = as_declared()
    found[STEM] = qp.SeenQueue(STEM, {"x-queue-type": "classic"})
    (refused,) = [a for a in plan(found) if isinstance(a, qp.Refuse)]
    assert refused.name == STEM
    assert "'x-queue-type'" in refused.message and "classic" in refused.message
    assert STEM not in kinds(plan(found))["Declare"]


def test_a_retry_queue_with_another_delay_than_its_name_is_refused() -> None:
    name = f"{STEM}.retry.3"
    found = as_declared()
    found[name] = qp.SeenQueue(name, {**found[name].arguments, "x-message-ttl": 9000})
    (refused,) = [a for a in plan(found) if isinstance(a, qp.Refuse)]
    assert refused.name == name and "'x-message-ttl'" in refused.message


def test_a_buried_queue_of_another_type_is_refused_and_not_bounded() -> None:
    found = as_declared()
    found[BURIED] = qp.SeenQueue(BURIED, {"x-queue-type": "classic", "x-max-length": 5})
    actions = plan(found, bound=20)
    assert kinds(actions)["Refuse"] == [BURIED]
    assert "SetBound" not in kinds(actions) and "ReplaceIntake" not in kinds(actions)


def test_numbers_compare_by_value_whatever_their_type() -> None:
    assert qp.differences({"x-message-ttl": 1000}, {"x-message-ttl": 1000.0}) == []
    assert qp.differences({"x-overflow": "reject-publish"}, {}) != []
    assert qp.differences({"x-anything-else": 1}, {}) == []  # left to the broker


def test_the_plan_covers_every_queue_of_the_partition_in_order() -> None:
    actions = qp.plan(P, ["default", "email"], LEVELS, 10, {})
    bounds = [a.covers for a in actions if isinstance(a, qp.SetBound)]
    assert bounds == [BURIED, naming.buried_queue_name(P, "email")]


def test_with_a_vhost_policy_the_default_bound_is_the_shared_policy_only() -> None:
    """``--bound-policy vhost``: a queue at the vhost's bound writes no policy of its own
    (one left by the per-queue mode is dropped, after the shared one is in place)."""
    actions = qp.plan_queue(P, Q, LEVELS, 100, as_declared(), vhost_bound=100)
    bounds = [a for a in actions if isinstance(a, qp.SetBound | qp.DropBound)]
    assert bounds == [
        qp.SetBound(
            covers="every .buried queue of the vhost",
            policy="roger-bound",
            pattern=naming.BURIED_QUEUE_PATTERN,
            definition={"max-length": 100, "overflow": "drop-head"},
            priority=99,
        ),
        qp.DropBound(BURIED, f"roger-bound:{BURIED}"),
    ]


def test_with_a_vhost_policy_another_bound_gets_its_own_policy_above_it() -> None:
    actions = qp.plan_queue(P, Q, LEVELS, 20, as_declared(), vhost_bound=100)
    (own,) = [a for a in actions if isinstance(a, qp.SetBound | qp.DropBound)]
    assert own == qp.bound_policy(BURIED, 20)
    assert own.priority > qp.VHOST_POLICY_PRIORITY  # RabbitMQ applies the highest one


def deployment(gen: int, observed: int, replicas: int, updated: int, total: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": gen},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total},
    }


def test_a_rollout_is_finished_when_every_pod_runs_the_current_template() -> None:
    assert qp.rollout_finished(deployment(2, 2, 2, 2, 2))
    assert not qp.rollout_finished(deployment(3, 2, 2, 2, 2))  # not observed yet
    assert not qp.rollout_finished(deployment(2, 2, 2, 1, 3))  # an old pod still runs
    assert not qp.rollout_finished(deployment(2, 2, 2, 2, 3))  # surge pod or old one left
    assert not qp.rollout_finished(None)
