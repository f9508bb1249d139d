"""The lifecycle observer that turns hooks into Kubernetes Events without ever blocking.

Threads and their jobs:

- the worker's event loop calls ``observe()``: one set lookup and one ``deque.append``
  (bounded; beyond ``queue_limit`` the observation is dropped as ``queue_full``). No lock,
  no I/O, no allocation beyond the deque cell.
- ``roger-kube-events-fold`` drains that deque every ``tick`` into the ``Aggregator``
  (under a lock no event-loop code ever takes), or, during an outage, counts the drained
  observations as dropped.
- ``roger-kube-events-io`` does all API I/O: resolves the Partition's uid once, then makes
  the writes the aggregator picks within the budget. A failure that says the API is down,
  slow, throttling or refusing starts an outage: pending observations are dropped and
  counted, one warning is logged, and the API is probed again with exponential backoff
  (1 s doubling to 30 s); the first write that succeeds ends it (one info line).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from roger.core.event_aggregation import PATCH_INTERVAL, Aggregator, Budget, Write
from roger.core.hooks import HOOKS, HookName
from roger.core.kube_events import HOOK_EVENTS, Regarding, instance_name
from roger.core.lifecycle import BURIED_DROPPED, LifecycleEvent
from roger.kube.client import ApiFailure, EventsApi
from roger.kube.metrics import KubeEventMetrics, kube_event_metrics

log = logging.getLogger("roger.kube")

QUEUE_LIMIT: Final = 16384
TICK: Final = 0.02
PROBE_FIRST: Final = 1.0
PROBE_MAX: Final = 30.0


class KubeEventsObserver:
    """A ``LifecycleObserver`` writing aggregated, budgeted Events about one Partition."""

    def __init__(
        self,
        api: EventsApi,
        *,
        namespace: str,
        name: str,
        partition: str,
        instance: str,
        hooks: Iterable[HookName] = HOOKS,
        metrics: KubeEventMetrics | None = None,
        budget: Budget | None = None,
        patch_interval: float = PATCH_INTERVAL,
        queue_limit: int = QUEUE_LIMIT,
        tick: float = TICK,
        probe_first: float = PROBE_FIRST,
        probe_max: float = PROBE_MAX,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ) -> None:
        self.api = api
        self.partition = partition
        self.regarding = Regarding(namespace=namespace, name=name)
        self.hooks = frozenset(hooks)
        self.metrics = metrics or kube_event_metrics()
        self.queue_limit = queue_limit
        self.tick = tick
        self.probe_first = probe_first
        self.probe_max = probe_max
        self.clock = clock
        self._aggregator = Aggregator(
            self.regarding, instance_name(instance), budget=budget, patch_interval=patch_interval
        )
        self._lock = threading.Lock()  # guards the aggregator; never taken by observe()
        self._queue: deque[LifecycleEvent] = deque()
        self._stop = threading.Event()
        self._closing = False
        self._flushing = False
        # written only by the event loop (observe):
        self.observed = 0
        self._queue_full = 0
        # written only by the fold thread:
        self._queue_full_reported = 0
        self._folding = False
        # written only by the I/O thread:
        self._down: str | None = None  # the outage's cause while events are dropped
        self._probing = False
        self._announced = False
        self._backoff = 0.0
        self._next_probe = 0.0
        self._outage_since = 0.0
        self._outage_dropped = 0
        # statistics (for tests and logs), each written by one thread at a time:
        self.emitted = 0
        self.dropped: dict[str, int] = {}
        self.writes: dict[str, int] = {"create": 0, "patch": 0}
        self._drop_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._fold_loop, name="roger-kube-events-fold", daemon=True),
            threading.Thread(target=self._io_loop, name="roger-kube-events-io", daemon=True),
        ]
        if start:
            self.start()

    # ---- the event loop's side --------------------------------------------------------
    def observe(self, event: LifecycleEvent) -> None:
        if (event.hook not in self.hooks and event.hook != BURIED_DROPPED) or self._closing:
            return
        self.observed += 1
        if len(self._queue) >= self.queue_limit:
            self._queue_full += 1
            return
        self._queue.append(event)

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        for t in self._threads:
            if not t.is_alive():
                t.start()

    def close(self, timeout: float) -> None:
        """Write what the budget allows within ``timeout``; count the rest as dropped."""
        deadline = self.clock() + max(timeout, 0.0)
        self._closing = True
        self._flushing = True
        while self.clock() < deadline and self._down is None:
            with self._lock:
                busy = self._aggregator.pending() > 0
            if not busy and not self._queue and not self._folding:
                break
            self._stop.wait(self.tick)
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.1, min(1.0, deadline - self.clock())))
        leftover = len(self._queue)
        self._queue.clear()
        with self._lock:
            lost = sum(self._aggregator.drop_pending().values())
        self._count_dropped("shutdown", leftover + lost)
        self.api.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            pending = self._aggregator.pending()
            series = len(self._aggregator.series)
        return {
            "observed": self.observed,
            "emitted": self.emitted,
            "dropped": dict(self.dropped),
            "writes": dict(self.writes),
            "pending": pending + len(self._queue),
            "series": series,
            "down": self._down,
        }

    # ---- fold thread --------------------------------------------------------------------
    def _fold_loop(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self._fold()
            if stopping:
                return
            self._stop.wait(self.tick)

    def _fold(self) -> None:
        self._folding = True
        try:
            full = self._queue_full
            if full > self._queue_full_reported:
                self._count_dropped("queue_full", full - self._queue_full_reported)
                self._queue_full_reported = full
            if not self._queue:
                return
            batch: list[LifecycleEvent] = []
            pop = self._queue.popleft
            try:
                while True:
                    batch.append(pop())
            except IndexError:
                pass
            cause = self._down
            if cause is not None:
                self._count_dropped(cause, len(batch))
                return
            now = self.clock()
            overflow = 0
            with self._lock:
                add = self._aggregator.add
                for event in batch:
                    if not add(event, now):
                        overflow += 1
            if overflow:
                self._count_dropped("overflow", overflow)
        finally:
            self._folding = False

    # ---- I/O thread ---------------------------------------------------------------------
    def _io_loop(self) -> None:
        while not self._stop.is_set():
            try:
                idle = self._io_step()
            except Exception:  # never let the emitter die; it is best effort by design
                log.exception("Kubernetes Events emitter error (continuing)")
                idle = 1.0
            if idle:
                self._stop.wait(idle)

    def _io_step(self) -> float:
        """One unit of work; returns how long to idle afterwards (0: go on at once)."""
        now = self.clock()
        if self._down is not None and not self._probing:
            if now < self._next_probe:
                return min(self._next_probe - now, 0.25)
            if self.regarding.uid is None:
                return self._resolve_partition()
            self._probing = True  # accept observations again; the next write decides
            self._down = None
        if self.regarding.uid is None:
            return self._resolve_partition()
        with self._lock:
            write = self._aggregator.next_write(now, time.time_ns(), flush=self._flushing)
        if write is None:
            return 0.05
        self._perform(write)
        return 0.0

    def _resolve_partition(self) -> float:
        ns, name = self.regarding.namespace, self.regarding.name
        try:
            obj = self.api.get_partition(ns, name)
        except ApiFailure as failure:
            cause = "partition_missing" if failure.cause == "not_found" else failure.cause
            self._fail(cause, failure.detail)
            return 0.0
        uid = (obj.get("metadata") or {}).get("uid")
        if not uid:
            self._fail("partition_missing", "the Partition has no metadata.uid")
            return 0.0
        regarding = Regarding(namespace=ns, name=name, uid=str(uid))
        with self._lock:
            self.regarding = regarding
            self._aggregator.regarding = regarding
        self._recovered()
        return 0.0

    def _perform(self, write: Write) -> None:
        ns = self.regarding.namespace
        self.writes[write.verb] += 1
        self.metrics.writes.labels(self.partition, write.verb).inc()
        try:
            if write.verb == "create":
                self.api.create_event(ns, write.body)
            else:
                assert write.series.name is not None
                self.api.patch_event(ns, write.series.name, write.body)
        except ApiFailure as failure:
            if failure.cause in ("not_found", "conflict"):
                # patch: the Event expired or was deleted; create: the name was taken.
                with self._lock:
                    self._aggregator.not_found(write)
                return
            if failure.cause == "rejected":  # a bug here, not an outage: drop this one
                with self._lock:
                    self._aggregator.failed(write)
                    lost = write.series.pending
                    write.series.count = write.series.written
                self._count_dropped("rejected", lost)
                log.warning("Kubernetes rejected an Event (%s); dropped", failure.detail)
                return
            with self._lock:
                self._aggregator.failed(write)
            self._fail(failure.cause, failure.detail)
            return
        with self._lock:
            newly = self._aggregator.succeeded(write)
        self.emitted += newly
        self.metrics.emitted.labels(self.partition, write.series.key.reason).inc(newly)
        self._recovered()

    def _fail(self, cause: str, detail: str) -> None:
        now = self.clock()
        if not self._announced:  # the first failure of an outage: log it, once
            self._outage_since = now
            self._outage_dropped = 0
            self._backoff = self.probe_first
            self._announced = True
            log.warning(
                "Kubernetes Events for partition %s/%s suspended (%s: %s); jobs go on, "
                "events are dropped and counted in roger_kube_events_dropped_total until "
                "the API answers again",
                self.regarding.namespace,
                self.regarding.name,
                cause,
                detail,
            )
        else:
            self._backoff = min(max(self._backoff * 2, self.probe_first), self.probe_max)
        self._down = cause
        self._probing = False
        self._next_probe = now + self._backoff
        with self._lock:
            lost = self._aggregator.drop_pending()
        self._count_dropped(cause, sum(lost.values()))

    def _recovered(self) -> None:
        if self._announced:
            log.info(
                "Kubernetes Events for partition %s/%s resumed after %.1fs; %d lifecycle "
                "events were dropped meanwhile",
                self.regarding.namespace,
                self.regarding.name,
                self.clock() - self._outage_since,
                self._outage_dropped,
            )
            self._announced = False
        self._down = None
        self._probing = False
        self._backoff = 0.0

    def _count_dropped(self, cause: str, n: int) -> None:
        if n <= 0:
            return
        with self._drop_lock:
            self.dropped[cause] = self.dropped.get(cause, 0) + n
            self._outage_dropped += n
        self.metrics.dropped.labels(self.partition, cause).inc(n)


def reasons() -> tuple[str, ...]:
    return tuple(reason for reason, _ in HOOK_EVENTS.values())
