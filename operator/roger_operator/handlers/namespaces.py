"""Watch a namespace until it is gone, not only until it is marked for deletion.

With ``--namespace`` patterns kopf keeps one watch per matching namespace, and decides
when to drop it in ``kopf._core.reactor.observation.revise_namespaces``. kopf 1.45 drops
it once the namespace is marked for deletion and its status has conditions none of which
is True. The namespace controller writes exactly that before it has deleted a Partition
("All content successfully deleted, may be waiting on finalization", every condition
False; seen here six seconds before the Partition got its ``deletionTimestamp``). From
then on the operator does not see the Partition: its finalizer never runs, the namespace
stays Terminating and the queues stay in RabbitMQ. kopf also never starts watching a
namespace that is already terminating, so an operator restarted (upgrade, crash, a new
leader) while a namespace is being deleted never finishes that deletion either.

The rule here: a namespace that matches a pattern is watched from the moment it is seen
until the API reports it deleted (a DELETED event), terminating or not. The cost of a
DELETED event that never arrives (kopf's reason for not waiting for it) is one idle watch
on a namespace that no longer exists, until the operator restarts.

``install`` puts ``revise`` in kopf's place; ``tests/unit/test_namespace_watch.py`` checks
that kopf still calls it by that name and still behaves as described above, so a kopf
upgrade that fixes or renames it fails a test instead of silently undoing this.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Collection, Mapping
from typing import Any

from kopf._cogs.structs import references
from kopf._core.reactor import observation

KOPF_REVISE = observation.revise_namespaces  # kopf's own rule, kept for the tests


class Watch(enum.Enum):
    START = "start"  # a matching namespace, alive or terminating
    STOP = "stop"  # the API said it is gone
    KEEP = "keep"  # not ours: leave the set as it is


def decide(
    event_type: str | None, name: str, patterns: Collection[references.NamespacePattern]
) -> Watch:
    """What to do with one namespace event (``event_type`` None: an initial listing)."""
    if event_type == "DELETED":
        return Watch.STOP
    if any(references.match_namespace(references.NamespaceName(name), p) for p in patterns):
        return Watch.START
    return Watch.KEEP


def revise(
    *,
    insights: references.Insights,
    namespaces: Collection[references.NamespacePattern],
    raw_events: Collection[Mapping[str, Any]] = (),
    raw_bodies: Collection[Mapping[str, Any]] = (),
) -> None:
    """kopf's ``revise_namespaces``, with ``decide`` as the rule (same signature)."""
    events = [*raw_events, *({"type": None, "object": body} for body in raw_bodies)]
    for event in events:
        name = references.NamespaceName(event["object"]["metadata"]["name"])
        verdict = decide(event.get("type"), name, namespaces)
        if verdict is Watch.START:
            insights.namespaces.add(name)
        elif verdict is Watch.STOP:
            insights.namespaces.discard(name)


def install() -> None:
    """Make kopf's namespace observer use ``revise`` (call before ``kopf.run``); raises
    ``RuntimeError`` if this kopf's function is not the one ``revise`` replaces."""
    original = getattr(observation, "revise_namespaces", None)
    if original is None or set(inspect.signature(original).parameters) != _REPLACED_PARAMETERS:
        raise RuntimeError(
            "kopf's observation.revise_namespaces is not the one roger_operator.handlers."
            "namespaces replaces (kopf changed it)"
        )
    observation.revise_namespaces = revise  # type: ignore[assignment]


_REPLACED_PARAMETERS = {"insights", "namespaces", "raw_events", "raw_bodies"}
