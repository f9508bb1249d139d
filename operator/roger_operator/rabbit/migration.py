"""Carry out ``builders.queue_plan``: declare, bound by policy, replace a legacy intake,
drain retired retry queues. Runs in the broker's lane (called from ``Broker`` methods).

Policies go through the management HTTP API (``PUT /api/policies/<vhost>/<name>``), so the
operator's RabbitMQ user needs the ``policymaker`` (or ``administrator``) tag.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pika.exceptions

from roger.broker import buried_store
from roger_operator.builders import queue_plan as qp
from roger_operator.builders.model import PartitionSpec
from roger_operator.rabbit.redaction import redact


class Broker(Protocol):
    """What this module uses of ``rabbit.broker.Broker`` (which calls into it)."""

    def run(self, url: str, fn: Callable[[Any], T]) -> T: ...

    def management_list(
        self, url: str, kind: str, pattern: str, columns: str, timeout: float | None = None
    ) -> list[dict[str, Any]] | None: ...

    def management_call(
        self, url: str, method: str, kind: str, name: str, body: Any = None
    ) -> int | None: ...

    def management_get(
        self, url: str, kind: str, name: str, columns: str
    ) -> dict[str, Any] | None: ...


log = logging.getLogger(__name__)
T = TypeVar("T")


def observe(broker: Broker, url: str, spec: PartitionSpec) -> dict[str, qp.SeenQueue] | None:
    """The partition's queues as the broker has them (None: management API off or silent)."""
    items = broker.management_list(
        url, "queues", f"^{re.escape(spec.partition_id)}-", "name,arguments,messages"
    )
    if items is None:
        return None
    return {
        str(i["name"]): qp.SeenQueue(
            name=str(i["name"]),
            arguments=dict(i.get("arguments") or {}),
            messages=int(i.get("messages") or 0),
        )
        for i in items
        if i.get("name")
    }


def _declare(ch: Any, name: str, arguments: dict[str, Any]) -> None:
    ch.queue_declare(name, durable=True, arguments=arguments)


def _passive(ch: Any, name: str) -> Any:
    return ch.queue_declare(name, passive=True)


def _delete_queue(ch: Any, name: str) -> Any:
    return ch.queue_delete(name)


@dataclass
class Done:
    refused: list[str] = field(default_factory=list)  # blocks the rollout
    retired: list[str] = field(default_factory=list)  # retry queues left to drain
    unfinished: bool = False  # try again on the next reconcile


def carry_out(broker: Broker, url: str, actions: list[qp.Action]) -> Done:
    done = Done()
    bound_failed = False
    for action in actions:
        if isinstance(action, qp.Refuse):
            done.refused.append(action.message)
        elif isinstance(action, qp.DrainRetry):
            done.retired.append(action.name)
        elif isinstance(action, qp.SetBound):
            bound_failed |= not set_bound(broker, url, action)
            done.unfinished |= bound_failed
        elif isinstance(action, qp.DropBound):  # only once the shared policy is in place
            done.unfinished |= bound_failed or not drop_bound(broker, url, action.policy)
        elif isinstance(action, qp.ReplaceIntake):
            done.unfinished |= not replace_intake(broker, url, action)
        else:
            try:
                if isinstance(action, qp.Declare):
                    arguments = dict(action.arguments)
                    broker.run(
                        url, functools.partial(_declare, name=action.name, arguments=arguments)
                    )
                else:
                    broker.run(url, functools.partial(_passive, name=action.name))
            except pika.exceptions.ChannelClosedByBroker as exc:
                done.refused.append(f"queue {action.name}: {redact(str(exc.reply_text), url)}")
    return done


def replace_intake(broker: Broker, url: str, action: qp.ReplaceIntake) -> bool:
    """File ``.buried`` into its log (under the buried-jobs lock, as ``roger buried`` does),
    delete it once empty, declare it without the bound argument. False when it is not
    empty after filing (a burial came in): the next reconcile tries again.

    Quorum queues have no ``if-empty`` delete (RabbitMQ 3.10 and 4.0 answer 540), so a
    burial confirmed between the last check and the delete would go with the queue: the
    delete's own count says so, logged as an error (none in the tests). A burial published
    after the delete finds no queue; its worker keeps the job unacked and re-declares."""

    def file(ch: Any) -> None:
        buried_store.jobs(ch.connection, action.partition, action.queue)

    broker.run(url, file)
    if _count(broker, url, action.name):
        log.info("%s not replaced yet (burials came in while filing); next time", action.name)
        return False
    lost = _delete(broker, url, action.name)
    if lost:
        log.error(
            "%d buried job(s) landed in %s between filing and replacing it and went with it",
            lost,
            action.name,
        )
    arguments = dict(action.arguments)
    broker.run(url, functools.partial(_declare, name=action.name, arguments=arguments))
    log.info("replaced %s (its x-max-length argument was below the wanted bound)", action.name)
    return True


def _count(broker: Broker, url: str, name: str) -> int | None:
    """Messages in ``name`` (a queue without consumers: all ready), None if it is gone."""
    try:
        ok: Any = broker.run(url, functools.partial(_passive, name=name))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise
    return int(ok.method.message_count)


def _delete(broker: Broker, url: str, name: str) -> int:
    """Delete ``name``; how many messages went with it."""
    ok: Any = broker.run(url, functools.partial(_delete_queue, name=name))
    return int(getattr(ok.method, "message_count", 0) or 0)


_POLICY_FIELDS = ("pattern", "definition", "priority", "apply-to")


def set_bound(broker: Broker, url: str, action: qp.SetBound) -> bool:
    """Set the bound's policy, unless the broker already has exactly this one.

    A policy PUT costs the broker a re-match of every queue of the vhost against every
    policy (measured: 3.7-5.4 s with 2,000 queues and 493 policies, past the management
    timeout), while a GET by name takes ~1 ms. A PUT that timed out has usually landed
    anyway, so the reconcile that retries it finds it in place and writes nothing."""
    body = {
        "pattern": action.pattern,
        "definition": dict(action.definition),
        "priority": action.priority,
        "apply-to": "queues",
    }
    found = broker.management_get(url, "policies", action.policy, ",".join(_POLICY_FIELDS))
    if found and all(found.get(k) == body[k] for k in _POLICY_FIELDS):
        return True
    status = broker.management_call(url, "PUT", "policies", action.policy, body)
    if status is None or status >= 300:
        log.warning(
            "policy %s (bound of %s) not set (management API: %s): the workers' own bound "
            "still applies",
            action.policy,
            action.covers,
            status,
        )
        return False
    return True


def drop_bound(broker: Broker, url: str, policy: str) -> bool:
    """Delete ``policy`` if the broker has it (looked up first: a DELETE re-matches every
    queue as a PUT does); False when the management API did not answer."""
    found = broker.management_get(url, "policies", policy, "name")
    if found is None:
        return False
    if not found:
        return True
    status = broker.management_call(url, "DELETE", "policies", policy)
    return status is not None and (status < 300 or status == 404)


def drop_bounds(broker: Broker, url: str, queues: list[str]) -> None:
    """Delete the own bound policies of deleted queues (none: nothing to do). The vhost's
    shared policy stays: other Partitions' queues may match it."""
    for queue in queues:
        drop_bound(broker, url, qp.policy_name(queue))


def drain(broker: Broker, url: str, names: list[str]) -> list[str]:
    """Delete the retired retry queues that are empty; the ones still holding jobs. Called
    once no pod of an older config runs: nothing publishes to them any more (only their
    expiring jobs leave, back to the main queue), so empty stays empty."""
    left = []
    for name in names:
        try:
            count = _count(broker, url, name)
        except pika.exceptions.ChannelClosedByBroker:
            left.append(name)
            continue
        if count is None:
            continue
        if count > 0:
            left.append(name)
            continue
        lost = _delete(broker, url, name)
        if lost:  # cannot happen once the rollout finished; said if it does
            log.error("%d job(s) came into %s while it was deleted", lost, name)
        log.info("retry queue %s (no level uses it) drained and deleted", name)
    return left
