"""Schedule resources: enqueue each tick's job into the referenced Partition, once.

A kopf daemon per Schedule calls ``reconcile`` every second, and at each tick's time (on
the leader only: the operator runs kopf once it holds the Lease). The decision is pure
(``builders.schedule.decide``); here are its edges: the Partition and its Secret, the
enqueue, the status.

One job per tick: the job id is derived from the Schedule's uid and the tick, the tick
handled is remembered in memory at once (the watch may show the status write a second
later) and in ``status.lastScheduleTime`` after the broker confirmed the job. A restart
or a new leader starts from that status. What is left: an operator stopped between the
broker's confirm and the status write (milliseconds) enqueues that tick again on its next
start, with the same job id; under ``Forbid`` the Schedule's queue_key refuses that copy
while the first is queued or running (its holder is that same id: counted as enqueued).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from roger.broker.client import Client
from roger.broker.state_client import DuplicateJob
from roger_operator.builders import schedule as sch
from roger_operator.builders.model import parse_partition
from roger_operator.handlers.context import Context
from roger_operator.handlers.partition import read_amqp_url
from roger_operator.kube.client import MERGE_CONTENT_TYPE, resource_path

log = logging.getLogger("roger_operator.schedule")
API_VERSION = "roger.dev/v1alpha1"


def _client(ctx: Context, url: str) -> Client:
    client = ctx.clients.get(url)
    if client is None:
        client = ctx.clients[url] = Client(url, name="roger-operator schedules")
    return client  # type: ignore[no-any-return]


def _write(ctx: Context, body: Mapping[str, Any], status: dict[str, Any]) -> None:
    prev = body.get("status") or {}
    if {k: v for k, v in status.items() if v is not None} == {
        k: v for k, v in prev.items() if v is not None
    }:
        return
    meta = body.get("metadata") or {}
    path = resource_path(API_VERSION, "Schedule", meta.get("namespace", ""), meta.get("name"))
    ctx.kube.request(
        "PATCH", f"{path}/status", body={"status": status}, content_type=MERGE_CONTENT_TYPE
    )


def reconcile(
    ctx: Context, body: Mapping[str, Any], now: datetime.datetime | None = None
) -> datetime.datetime | None:
    """One pass over one Schedule (see the module docstring); returns its next tick after
    ``now`` (None: none, or the Schedule is invalid or suspended)."""
    now = now or datetime.datetime.now(datetime.UTC)
    meta = body.get("metadata") or {}
    key = (str(meta.get("namespace")), str(meta.get("name")))
    prev = body.get("status") or {}
    try:
        spec = sch.parse_schedule(body)
    except sch.InvalidSchedule as exc:
        _write(ctx, body, _invalid(prev, body, now, exc.reason, str(exc)))
        return None
    last = sch.parse_time(prev.get("lastScheduleTime"))
    remembered = ctx.schedule_ticks.get(key)
    last_job = None
    if remembered and (last is None or remembered[0] > last):
        last, last_job = remembered
    decision = sch.decide(spec, last, now)

    def write(ready: bool, reason: str, message: str, **done: Any) -> None:
        status = sch.status(
            prev, spec, now, ready=ready, reason=reason, message=message,
            last=done.get("tick", last), last_job=done.get("job", last_job),
            upcoming=decision.next,
        )  # fmt: skip
        _write(ctx, body, status)

    if decision.action == "suspended":
        write(True, "Suspended", "spec.suspend is true: no tick enqueues a job")
        return decision.next
    if decision.action == "wait":
        nxt = sch.format_time(decision.next) if decision.next else "never"
        write(True, "Scheduled", f"next tick {nxt}")
        return decision.next
    assert decision.tick is not None
    tick = sch.format_time(decision.tick)
    if decision.action == "too_late":
        write(
            False,
            "MissedDeadline",
            f"tick {tick} not enqueued: more than startingDeadlineSeconds "
            f"({spec.starting_deadline}s) late",
        )
        return decision.next
    if decision.missed > sch.TOO_MANY_MISSED:
        ctx.kube.event(
            dict(body),
            reason="TooManyMissedTicks",
            message=f"more than {sch.TOO_MANY_MISSED} ticks missed; enqueueing the latest, {tick}",
            type_="Warning",
        )
    partition = ctx.kube.get(resource_path(API_VERSION, "Partition", key[0], spec.partition_ref))
    if partition is None:
        write(False, "PartitionNotFound", f"Partition {spec.partition_ref} not found in {key[0]}")
        return decision.next
    pspec = parse_partition(partition)
    url, problem = read_amqp_url(ctx, pspec)
    if url is None:
        write(False, "SecretNotFound", problem.message if problem else "no AMQP URL")
        return decision.next
    job_id = sch.job_id(spec, decision.tick)
    reason, message = "Enqueued", f"tick {tick}: job {job_id} enqueued"
    try:
        _client(ctx, url).enqueue(
            pspec.partition_id,
            spec.job,
            spec.args,
            queue=spec.queue,
            id=job_id,
            queue_key=sch.queue_key(spec),
        )
    except DuplicateJob as exc:
        if exc.holder != job_id:  # not our own copy from before a restart
            reason = "Skipped"
            message = (
                f"tick {tick} skipped (concurrencyPolicy Forbid): job {exc.holder} of this"
                " Schedule is still queued or running"
            )
    except Exception as exc:  # the broker: the next pass tries this tick again
        log.warning("Schedule %s/%s: tick %s not enqueued: %s", *key, tick, exc)
        write(False, "EnqueueFailed", f"tick {tick} not enqueued: {exc}")
        return decision.next
    ctx.schedule_ticks[key] = (decision.tick, job_id if reason == "Enqueued" else last_job or "")
    log.info("Schedule %s/%s: %s", *key, message)
    if reason == "Enqueued":
        write(True, reason, message, tick=decision.tick, job=job_id)
    else:
        write(True, reason, message, tick=decision.tick)
    return decision.next


def _invalid(
    prev: Mapping[str, Any], body: Mapping[str, Any], now: datetime.datetime, reason: str, msg: str
) -> dict[str, Any]:
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    old = next((c for c in prev.get("conditions") or () if c.get("type") == "Ready"), None)
    since = sch.format_time(now)
    if old and old.get("status") == "False" and old.get("lastTransitionTime"):
        since = old["lastTransitionTime"]
    cond = {
        "type": "Ready",
        "status": "False",
        "observedGeneration": generation,
        "lastTransitionTime": since,
        "reason": reason,
        "message": msg,
    }
    return {"observedGeneration": generation, "conditions": [cond], "nextScheduleTime": None}


def forget(ctx: Context, body: Mapping[str, Any]) -> None:
    meta = body.get("metadata") or {}
    ctx.schedule_ticks.pop((str(meta.get("namespace")), str(meta.get("name"))), None)
