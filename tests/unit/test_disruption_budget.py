"""spec.worker.disruptionBudget renders the worker PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

import pytest

from roger_operator.builders.disruption import disruption_budget, pod_disruption_budget
from roger_operator.builders.model import parse_partition, selector_labels

pytestmark = pytest.mark.unit


def body(**worker: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "n", "uid": "u-1", "generation": 1},
        "spec": {
            "amqp": {"secretRef": {"name": "s"}},
            "worker": {"image": "i", **worker},
            "queues": [{"name": "q"}],
        },
    }


def test_unset_or_empty_renders_nothing() -> None:
    assert disruption_budget(body()) is None
    assert disruption_budget(body(disruptionBudget={})) is None


@pytest.mark.parametrize(
    ("budget", "key", "value"),
    [
        ({"maxUnavailable": 1}, "maxUnavailable", 1),
        ({"minAvailable": "50%"}, "minAvailable", "50%"),
    ],
)
def test_budget_selects_the_worker_pods_and_is_owned_by_the_partition(
    budget: dict[str, Any], key: str, value: object
) -> None:
    obj = body(disruptionBudget=budget)
    found = disruption_budget(obj)
    assert found == budget
    pdb = pod_disruption_budget(parse_partition(obj), found)
    assert (pdb["apiVersion"], pdb["kind"]) == ("policy/v1", "PodDisruptionBudget")
    assert pdb["metadata"]["name"] == "roger-p" and pdb["metadata"]["namespace"] == "n"
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert pdb["spec"]["selector"] == {"matchLabels": selector_labels("p")}
    assert pdb["spec"][key] == value
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
