"""A namespace matching ``--namespace`` stays watched until it is deleted, terminating or not
(``roger_operator.handlers.namespaces``): otherwise a Partition deleted with its namespace
is never finalized and the namespace stays Terminating."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from kopf._cogs.structs import references
from kopf._core.reactor import observation

from roger_operator.cli import keep_terminating_namespaces_watched
from roger_operator.handlers import namespaces
from roger_operator.handlers.namespaces import Watch, decide

pytestmark = pytest.mark.unit
PATTERNS = ["t-test-*"]
FALSE = [
    {"type": "NamespaceDeletionDiscoveryFailure", "status": "False"},
    {"type": "NamespaceDeletionContentFailure", "status": "False"},
]
BLOCKED = [*FALSE, {"type": "NamespaceFinalizersRemaining", "status": "True"}]


def ns(name: str, deleting: bool = False, conditions: list[dict[str, str]] | None = None) -> Any:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T20:50:46Z"
    return {"metadata": meta, "status": {"phase": "Terminating" if deleting else "Active",
                                         "conditions": conditions or []}}  # fmt: skip


# What the API sent for a namespace deleted with a Partition in it (kube-apiserver 1.36):
# marked, then every condition False, then (once the Partition is marked) a blocker.
DELETION = [
    ("ADDED", ns("t-test-a")),
    ("MODIFIED", ns("t-test-a", deleting=True)),
    ("MODIFIED", ns("t-test-a", deleting=True, conditions=FALSE)),
    ("MODIFIED", ns("t-test-a", deleting=True, conditions=BLOCKED)),
    ("DELETED", ns("t-test-a", deleting=True, conditions=FALSE)),
]


def watched_after_each(revise: Callable[..., None], events: list[tuple[Any, Any]]) -> list[bool]:
    insights = asyncio.run(_insights())
    seen = []
    for kind, obj in events:
        if kind is None:
            revise(insights=insights, namespaces=PATTERNS, raw_bodies=[obj])
        else:
            event = {"type": kind, "object": obj}
            revise(insights=insights, namespaces=PATTERNS, raw_events=[event])
        seen.append("t-test-a" in insights.namespaces)
    return seen


async def _insights() -> references.Insights:  # its asyncio parts want a running loop
    return references.Insights()


def test_a_deleted_namespace_is_watched_until_the_api_says_it_is_gone() -> None:
    assert watched_after_each(namespaces.revise, DELETION) == [True, True, True, True, False]


def test_kopf_alone_stops_watching_before_the_partition_is_marked() -> None:
    """Why the module exists: if this fails, kopf changed its rule; re-check whether
    ``roger_operator.handlers.namespaces`` is still needed."""
    assert watched_after_each(namespaces.KOPF_REVISE, DELETION) == [True, True, False, False, False]


def test_a_namespace_already_terminating_at_start_is_watched() -> None:
    listing = [(None, ns("t-test-a", deleting=True, conditions=BLOCKED))]
    assert watched_after_each(namespaces.revise, listing) == [True]
    assert watched_after_each(namespaces.KOPF_REVISE, listing) == [False]


def test_decide() -> None:
    assert decide("ADDED", "t-test-x", PATTERNS) is Watch.START
    assert decide(None, "t-test-x", PATTERNS) is Watch.START
    assert decide("MODIFIED", "other", PATTERNS) is Watch.KEEP
    assert decide("DELETED", "other", PATTERNS) is Watch.STOP
    assert decide("ADDED", "t-test-x", ["t-*,!t-test-*"]) is Watch.KEEP  # kopf's negations


def test_install_puts_the_rule_where_kopf_looks_it_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observation, "revise_namespaces", namespaces.KOPF_REVISE)
    namespaces.install()
    assert observation.revise_namespaces is namespaces.revise
    # kopf's observers call it as a module global of ``observation``:
    code = observation.namespace_observer.__code__.co_names
    assert "revise_namespaces" in code
    events = observation.process_discovered_namespace_event.__code__.co_names
    assert "revise_namespaces" in events


def test_a_kopf_that_changed_the_function_is_left_alone_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def changed(*, insights: Any, namespaces: Any, raw_events: Any, settings: Any) -> None:
        pass

    monkeypatch.setattr(observation, "revise_namespaces", changed)
    with pytest.raises(RuntimeError, match="kopf changed it"):
        namespaces.install()
    keep_terminating_namespaces_watched()  # what the operator calls: no crash
    assert observation.revise_namespaces is changed
    assert "namespace watch left as it is" in caplog.text
