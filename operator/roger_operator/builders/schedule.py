"""Schedule resources: the spec, checked, and which tick is due now (pure, unit-tested).

The missed-tick rules are a CronJob's (kube-controller-manager's ``cronjob`` controller):

- only the **latest** tick since the last one handled is enqueued; the ones before it are
  missed (a CronJob runs one Job after an outage, not one per missed minute);
- the look-back starts at ``status.lastScheduleTime`` (else the Schedule's creation);
- a latest tick older than ``startingDeadlineSeconds`` is not enqueued (too late: the
  Ready condition says so until the next tick);
- more than ``TOO_MANY_MISSED`` ticks missed is said (an Event), as CronJob does at 100.

A tick's job id is derived from the Schedule's uid and the tick (``job_id``), so enqueueing
one tick twice (the operator restarted between the broker's confirm and the status write)
names the same job; under ``Forbid`` its queue_key then refuses the copy.
"""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from croniter import croniter

from roger.core import naming
from roger.core.message import JOB_NAME_RE

TOO_MANY_MISSED: Final = 100
TICK_MARGIN: Final = 0.002  # seconds past a tick at which its look starts
MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
UTC = datetime.UTC


class InvalidSchedule(ValueError):
    """A Schedule the operator cannot run; ``reason`` is the Ready condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ScheduleSpec:
    namespace: str
    name: str
    uid: str
    generation: int
    created: datetime.datetime
    partition_ref: str
    cron: str  # five fields (macros expanded)
    time_zone: str
    job: str
    args: Any
    queue: str
    forbid: bool
    suspend: bool
    starting_deadline: int | None


def parse_time(text: Any) -> datetime.datetime | None:
    """A Kubernetes timestamp (RFC 3339, ``Z``) as an aware datetime; None if absent/bad."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def format_time(value: datetime.datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_schedule(obj: Mapping[str, Any]) -> ScheduleSpec:
    """The spec, checked as far as the CRD's CEL rules cannot (cron ranges, time zones)."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    cron = str(spec.get("schedule") or "").strip()
    cron = MACROS.get(cron, cron)
    if "TZ" in cron.upper() or len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise InvalidSchedule(
            "InvalidSchedule",
            f"spec.schedule {spec.get('schedule')!r} is not a five-field cron expression"
            " (minute hour day-of-month month day-of-week) or a macro such as @hourly",
        )
    tz = str(spec.get("timeZone") or "UTC")
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(
            "InvalidTimeZone", f"spec.timeZone {tz!r} is not in the operator's time zone database"
        ) from None
    job = str(spec.get("job") or "")
    if not JOB_NAME_RE.match(job):
        raise InvalidSchedule("InvalidSchedule", f"spec.job {job!r} is not module:function")
    queue = str(spec.get("queue") or "default")
    ref = str((spec.get("partitionRef") or {}).get("name") or "")
    deadline = spec.get("startingDeadlineSeconds")
    return ScheduleSpec(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
        created=parse_time(meta.get("creationTimestamp")) or datetime.datetime.now(UTC),
        partition_ref=ref,
        cron=cron,
        time_zone=tz,
        job=job,
        args=spec.get("args"),
        queue=naming.validate_name("queue", queue),
        forbid=spec.get("concurrencyPolicy") == "Forbid",
        suspend=bool(spec.get("suspend")),
        starting_deadline=int(deadline) if isinstance(deadline, int) and deadline > 0 else None,
    )


def _utc(naive: datetime.datetime, zone: zoneinfo.ZoneInfo) -> datetime.datetime | None:
    """A wall-clock time of ``zone`` in UTC; None when that wall time does not exist (the
    hour skipped in spring). A time that happens twice (autumn) is its first occurrence."""
    aware = naive.replace(tzinfo=zone, fold=0)
    utc = aware.astimezone(UTC)
    if utc.astimezone(zone).replace(tzinfo=None) != naive:
        return None
    return utc


def _wall(at: datetime.datetime, zone: zoneinfo.ZoneInfo) -> datetime.datetime:
    return at.astimezone(zone).replace(tzinfo=None)


def ticks_after(
    cron: str, tz: str, start: datetime.datetime, end: datetime.datetime, limit: int
) -> list[datetime.datetime]:
    """The first ``limit`` ticks in (start, end], in UTC.

    croniter walks wall-clock times (naive): with aware datetimes its results around
    daylight-saving changes differ between its versions (a tick twice, or an offset off
    by an hour), so the zone is applied here, one wall time at a time.
    """
    zone = zoneinfo.ZoneInfo(tz)
    it = croniter(cron, _wall(start, zone))
    found: list[datetime.datetime] = []
    for _ in range(limit * 4 + 8):  # a skipped or repeated wall time costs a step
        tick = _utc(it.get_next(datetime.datetime), zone)
        if tick is None or tick <= start:
            continue
        if tick > end or len(found) >= limit:
            break
        found.append(tick)
    return found


def latest_tick(cron: str, tz: str, now: datetime.datetime) -> datetime.datetime | None:
    """The last tick at or before ``now`` (UTC), found backwards (an outage of a year costs
    one step, not half a million)."""
    zone = zoneinfo.ZoneInfo(tz)
    it = croniter(cron, _wall(now, zone) + datetime.timedelta(seconds=1))
    for _ in range(8):
        tick = _utc(it.get_prev(datetime.datetime), zone)
        if tick is not None and tick <= now:
            return tick
    return None


def next_tick(cron: str, tz: str, after: datetime.datetime) -> datetime.datetime | None:
    ticks = ticks_after(cron, tz, after, datetime.datetime.max.replace(tzinfo=UTC), 1)
    return ticks[0] if ticks else None


Action = Literal["enqueue", "wait", "too_late", "suspended"]


@dataclass(frozen=True)
class Decision:
    """What to do now: ``enqueue`` ``tick``; ``wait`` (nothing due); ``too_late`` (the
    latest tick is past its deadline: skipped); ``suspended``. ``missed`` counts the ticks
    passed over (not enqueued) in this look, up to ``TOO_MANY_MISSED`` + 1; ``next`` is the
    next tick after now."""

    action: Action
    tick: datetime.datetime | None
    missed: int
    next: datetime.datetime | None


def decide(spec: ScheduleSpec, last: datetime.datetime | None, now: datetime.datetime) -> Decision:
    """Which tick, if any, is due at ``now`` given the last one handled (see the module)."""
    if spec.suspend:
        return Decision("suspended", None, 0, None)
    earliest = last or spec.created
    upcoming = next_tick(spec.cron, spec.time_zone, now)
    latest = latest_tick(spec.cron, spec.time_zone, now)
    if latest is None or latest <= earliest:
        return Decision("wait", None, 0, upcoming)
    count = len(ticks_after(spec.cron, spec.time_zone, earliest, now, TOO_MANY_MISSED + 1))
    if spec.starting_deadline is not None and (now - latest).total_seconds() > float(
        spec.starting_deadline
    ):
        return Decision("too_late", latest, count, upcoming)
    return Decision("enqueue", latest, count - 1, upcoming)


def pause_before(
    upcoming: datetime.datetime | None, now: datetime.datetime, interval: float
) -> float:
    """Seconds until the next look at a Schedule: ``interval`` (to see edits and retry
    failures), or less when the upcoming tick comes sooner, so that its job is enqueued at
    its time rather than up to ``interval`` after it (a hair past it: never early)."""
    if upcoming is None:
        return interval
    return max(0.0, min(interval, (upcoming - now).total_seconds() + TICK_MARGIN))


def job_id(spec: ScheduleSpec, tick: datetime.datetime) -> str:
    """One id per (Schedule, tick): readable, and the same on every operator replica."""
    stamp = tick.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{spec.name[:60]}.{spec.uid[:8]}.{stamp}"


def queue_key(spec: ScheduleSpec) -> str | None:
    """``Forbid``: one key for every job of the Schedule (held while one is queued or
    running, so the next tick is refused); ``Allow``: none."""
    return f"roger.schedule/{spec.namespace}/{spec.name}" if spec.forbid else None


def status(
    prev: Mapping[str, Any] | None,
    spec: ScheduleSpec,
    now: datetime.datetime,
    *,
    ready: bool,
    reason: str,
    message: str,
    last: datetime.datetime | None = None,
    last_job: str | None = None,
    upcoming: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The whole status (merge patch replaces its conditions list)."""
    prev = prev or {}
    old = next((c for c in prev.get("conditions") or () if c.get("type") == "Ready"), None)
    value = "True" if ready else "False"
    since = format_time(now)
    if old and old.get("status") == value and old.get("lastTransitionTime"):
        since = old["lastTransitionTime"]
    out: dict[str, Any] = {
        "observedGeneration": spec.generation,
        "conditions": [
            {
                "type": "Ready",
                "status": value,
                "observedGeneration": spec.generation,
                "lastTransitionTime": since,
                "reason": reason,
                "message": message,
            }
        ],
        "nextScheduleTime": format_time(upcoming) if upcoming else None,
    }
    out["lastScheduleTime"] = format_time(last) if last else prev.get("lastScheduleTime")
    out["lastJobId"] = last_job if last_job else prev.get("lastJobId")
    return out
