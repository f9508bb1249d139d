"""Which Kubernetes Event write a worker makes next: the write budget and the aggregation.

Similar lifecycle observations (``kube_events.aggregation_key``) fold into one Event
object whose ``count`` grows; the ``Aggregator`` picks the next create or patch within the
worker's write budget (token buckets with a Warning reserve), Warnings first. Pure: time is
passed in, ``roger.kube.observer`` does the I/O; what each Event says is
``roger.core.kube_events``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from roger.core.kube_events import (
    WARNING,
    AggregationKey,
    Regarding,
    aggregation_key,
    count_patch,
    event_name,
    new_event,
)
from roger.core.lifecycle import LifecycleEvent

# ---- the write budget (per worker) ------------------------------------------------------
# 25 writes at once, 1 write/s sustained, split so that Warnings keep a reserve Normal
# noise cannot touch: Warnings take from their own bucket first, then from the Normal one;
# Normal events only ever take from the Normal bucket.
NORMAL_BURST: Final = 15.0
NORMAL_RATE: Final = 0.6  # tokens per second
WARNING_BURST: Final = 10.0
WARNING_RATE: Final = 0.4
# One Event's count is patched at most this often (coalescing + round-robin fairness).
PATCH_INTERVAL: Final = 10.0
# Distinct (reason, type, job) series remembered at once; beyond it an observation whose
# series is new and whose table is full of unwritten series is dropped ("overflow").
MAX_SERIES: Final = 1024


# ---- budget -------------------------------------------------------------------------------


@dataclass
class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; time is passed in (testable)."""

    burst: float
    rate: float
    tokens: float = -1.0
    updated: float | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until one token is there (0 if now)."""
        self._refill(now)
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else float("inf")


@dataclass
class Budget:
    """The worker's API write budget: a Normal bucket and a Warning reserve."""

    normal: TokenBucket = field(default_factory=lambda: TokenBucket(NORMAL_BURST, NORMAL_RATE))
    warning: TokenBucket = field(default_factory=lambda: TokenBucket(WARNING_BURST, WARNING_RATE))

    def can(self, type_: str, now: float) -> bool:
        if type_ == WARNING and self.warning.available(now) >= 1.0:
            return True
        return self.normal.available(now) >= 1.0

    def take(self, type_: str, now: float) -> bool:
        if type_ == WARNING and self.warning.take(now):
            return True
        return self.normal.take(now)


# ---- aggregation --------------------------------------------------------------------------


@dataclass(slots=True)
class Series:
    """Similar observations folded into one Event object."""

    key: AggregationKey
    latest: LifecycleEvent
    first_at: float  # wall time of the first occurrence on this Event object
    count: int = 0  # occurrences recorded on this Event object (written or not)
    written: int = 0  # count the server has; 0: not created yet
    name: str | None = None  # the Event object's name once created
    last_write: float = float("-inf")  # monotonic time of the last write
    last_seen: float = 0.0  # monotonic time of the last observation
    in_flight: bool = False

    @property
    def pending(self) -> int:
        return self.count - self.written


@dataclass(frozen=True, slots=True)
class Write:
    """One API write the aggregator asks for."""

    verb: Literal["create", "patch"]
    series: Series
    count: int  # the Event's count after this write
    body: dict[str, Any]


class Aggregator:
    """Folds observations into series and picks the next write within the budget.

    Order: Warnings before Normal events; within a type, series never written (creates)
    before updates (patches), then the longest-unwritten first. A series is patched at most
    every ``patch_interval`` seconds unless flushing.
    """

    def __init__(
        self,
        regarding: Regarding,
        instance: str,
        *,
        budget: Budget | None = None,
        patch_interval: float = PATCH_INTERVAL,
        max_series: int = MAX_SERIES,
    ) -> None:
        self.regarding = regarding
        self.instance = instance
        self.budget = budget or Budget()
        self.patch_interval = patch_interval
        self.max_series = max_series
        self.series: dict[AggregationKey, Series] = {}
        # (hook, job name) -> series: the regarding object is fixed, and hook -> reason/type
        # is a function, so this indexes the same series without building a key per event.
        self._index: dict[tuple[str, str], Series] = {}
        self._salt = 0

    def add(self, event: LifecycleEvent, now: float) -> bool:
        """Record one observation; False when it had to be dropped (table full)."""
        s = self._index.get((event.hook, event.job_name))  # the hot path: one lookup
        if s is None:
            if len(self.series) >= self.max_series and not self._evict():
                return False
            key = aggregation_key(event, self.regarding)
            s = self.series.get(key)
            if s is None:
                s = self.series[key] = Series(key=key, latest=event, first_at=event.at)
            self._index[(event.hook, event.job_name)] = s
        elif s.count == 0:
            s.first_at = event.at
        s.count += 1
        s.latest = event
        s.last_seen = now
        return True

    def _evict(self) -> bool:
        idle = [s for s in self.series.values() if s.pending == 0 and not s.in_flight]
        if not idle:
            return False
        victim = min(idle, key=lambda s: s.last_seen)
        del self.series[victim.key]
        self._index = {k: s for k, s in self._index.items() if s is not victim}
        return True

    def pending(self) -> int:
        return sum(s.pending for s in self.series.values())

    def _candidates(self, now: float, flush: bool) -> list[Series]:
        return [
            s
            for s in self.series.values()
            if s.pending > 0
            and not s.in_flight
            and (flush or s.written == 0 or now - s.last_write >= self.patch_interval)
        ]

    def next_write(self, now: float, now_ns: int, *, flush: bool = False) -> Write | None:
        """The next write to make, its token taken; None if nothing is due or affordable."""
        ready = self._candidates(now, flush)
        if not ready:
            return None
        ready.sort(key=lambda s: (s.key.type != WARNING, s.written > 0, s.last_write))
        for s in ready:
            if not self.budget.take(s.key.type, now):
                continue
            s.in_flight = True
            s.last_write = now
            if s.name is None or s.written == 0:
                self._salt += 1
                s.name = event_name(self.regarding.name, now_ns, self._salt)
                body = new_event(
                    name=s.name,
                    regarding=self.regarding,
                    latest=s.latest,
                    count=s.count,
                    first_at=s.first_at,
                    instance=self.instance,
                )
                return Write("create", s, s.count, body)
            return Write("patch", s, s.count, count_patch(s.latest, s.count))
        return None

    def next_due(self, now: float) -> float | None:
        """Seconds until some pending series may be written (budget or interval), if any."""
        waits = []
        for s in self.series.values():
            if s.pending <= 0 or s.in_flight:
                continue
            interval = 0.0 if s.written == 0 else self.patch_interval - (now - s.last_write)
            bucket = self.budget.warning if s.key.type == WARNING else self.budget.normal
            tokens = bucket.wait_time(now)
            if s.key.type == WARNING:
                tokens = min(tokens, self.budget.normal.wait_time(now))
            waits.append(max(interval, tokens, 0.0))
        return min(waits) if waits else None

    def succeeded(self, write: Write) -> int:
        """The write landed; returns how many occurrences it newly recorded (emitted)."""
        s = write.series
        s.in_flight = False
        newly = write.count - s.written
        s.written = write.count
        return newly

    def not_found(self, write: Write) -> None:
        """The Event is gone (TTL, deleted): the unwritten part starts a new Event."""
        s = write.series
        s.in_flight = False
        s.count -= s.written
        s.written = 0
        s.name = None
        s.first_at = s.latest.at

    def failed(self, write: Write) -> None:
        write.series.in_flight = False

    def drop_pending(self) -> dict[str, int]:
        """Forget every unwritten occurrence; returns how many per reason."""
        dropped: dict[str, int] = {}
        for s in self.series.values():
            n = s.pending
            if n > 0:
                dropped[s.key.reason] = dropped.get(s.key.reason, 0) + n
                s.count = s.written
                if s.written == 0:
                    s.name = None
        return dropped
