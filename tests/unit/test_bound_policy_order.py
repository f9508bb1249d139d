"""``rabbit.migration.carry_out`` with the bound policies (a fake management API at the I/O
edge): a queue's own policy is dropped only once the vhost's shared one is in place, so a
``.buried`` is never left without a policy because the shared one could not be written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from roger_operator.builders import queue_plan as qp
from roger_operator.rabbit import migration

pytestmark = pytest.mark.unit
BURIED = "tenant-a-default.buried"


class FakeManagement:
    """Policies by name; ``answers`` False: the API does not answer writes (no policymaker
    tag: 403; or silent)."""

    def __init__(self, policies: dict[str, dict[str, Any]], answers: bool = True) -> None:
        self.policies, self.answers = policies, answers
        self.calls: list[tuple[str, str]] = []

    def run(self, url: str, fn: Callable[[Any], Any]) -> Any:
        raise AssertionError("no AMQP call expected")

    def management_list(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]] | None:
        raise AssertionError("no listing expected")

    def management_get(self, url: str, kind: str, name: str, columns: str) -> dict[str, Any]:
        return dict(self.policies.get(name, {}))

    def management_call(
        self, url: str, method: str, kind: str, name: str, body: Any = None
    ) -> int | None:
        self.calls.append((method, name))
        if not self.answers:
            return 403
        if method == "DELETE":
            return 204 if self.policies.pop(name, None) else 404
        self.policies[name] = dict(body)
        return 201


def actions() -> list[qp.Action]:
    return qp.bound_actions(BURIED, 100, vhost_bound=100)


def test_the_own_policy_goes_once_the_shared_one_is_written() -> None:
    api = FakeManagement({qp.policy_name(BURIED): {"pattern": "x"}})
    done = migration.carry_out(api, "amqp://h/v", actions())
    assert not done.unfinished
    assert api.calls == [("PUT", "roger-bound"), ("DELETE", qp.policy_name(BURIED))]
    assert set(api.policies) == {"roger-bound"}


def test_the_own_policy_stays_when_the_shared_one_cannot_be_written() -> None:
    api = FakeManagement({qp.policy_name(BURIED): {"pattern": "x"}}, answers=False)
    done = migration.carry_out(api, "amqp://h/v", actions())
    assert done.unfinished  # the next reconcile tries again
    assert api.calls == [("PUT", "roger-bound")]
    assert qp.policy_name(BURIED) in api.policies


def test_nothing_is_written_when_both_are_as_wanted() -> None:
    shared = qp.vhost_bound_policy(100)
    body = {"pattern": shared.pattern, "definition": dict(shared.definition)}
    api = FakeManagement({"roger-bound": {**body, "priority": 99, "apply-to": "queues"}})
    assert not migration.carry_out(api, "amqp://h/v", actions()).unfinished
    assert api.calls == []
