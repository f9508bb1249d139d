"""Every Partition's status refreshed each ``status_interval``, from one loop.

This was a kopf timer per Partition. A kopf timer keeps, for as long as its object exists,
a task of its own and the object's latest body (parsed from the watch stream, with its
managed fields): measured with tracemalloc at 200 Partitions, kopf's watch-stream bodies
were 13 MiB of a 65 MiB Python heap, and the peak RSS at 500 Partitions was over the
250 MiB goal. The Partitions' latest bodies are in ``Context.partitions`` already (the
``cache`` event handler keeps them, without managed fields), so one thread walks that and
hands the due ones to a small pool.

Each Partition is refreshed ``interval`` seconds after it was first seen, then every
``interval`` seconds (as the timer did); never twice at once (a refresh still running when
it is due again is left to finish), and a failing refresh is logged and tried again next
time. ``Schedule`` says which are due; it is pure and tested on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from roger_operator.handlers.context import Context, Key
from roger_operator.rabbit import Stopping

log = logging.getLogger(__name__)
Refresh = Callable[[Context, Mapping[str, Any]], None]


class Schedule:
    """When each Partition is next due (``interval`` after it was first seen, then every
    ``interval``), which ones are running, and which ones left."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_due: dict[Key, float] = {}
        self.running: set[Key] = set()

    def due(self, keys: Iterable[Key], now: float) -> list[Key]:
        """The keys to refresh now (marked running); forgets the keys no longer given."""
        present = set(keys)
        for gone in set(self.next_due) - present:
            del self.next_due[gone]
        out = []
        for key in sorted(present):
            when = self.next_due.setdefault(key, now + self.interval)
            if when <= now and key not in self.running:
                self.running.add(key)
                self.next_due[key] = now + self.interval
                out.append(key)
        return out

    def done(self, key: Key) -> None:
        self.running.discard(key)

    def wake(self, key: Key, now: float) -> None:
        """Due now (if running, due again as soon as that refresh ends)."""
        self.next_due[key] = min(self.next_due.get(key, now), now)


class Refresher:
    """Runs ``refresh`` for each due Partition of ``ctx.partitions`` in ``threads``
    threads, checking every ``tick`` seconds, until ``stop``."""

    def __init__(
        self,
        ctx: Context,
        refresh: Refresh,
        interval: float,
        threads: int = 4,
        tick: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx, self.refresh, self.tick, self.clock = ctx, refresh, tick, clock
        self.schedule = Schedule(interval)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="refresh")
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="refresher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def wake(self, key: Key) -> None:
        """Refresh ``key`` at the next tick (``Context.wake``: its busy broker answered)."""
        with self._lock:
            self.schedule.wake(key, self.clock())

    def run(self) -> None:
        while not self.stopped.wait(self.tick):
            self.run_due()

    def run_due(self) -> None:
        """Hand every due Partition to the pool (one pass of ``run``)."""
        bodies = dict(self.ctx.partitions)
        with self._lock:
            due = self.schedule.due(bodies, self.clock())
        for key in due:
            self.pool.submit(self._one, key, bodies[key])

    def _one(self, key: Key, body: Mapping[str, Any]) -> None:
        try:
            # An event may have come meanwhile; gone, the old body is refused by refresh.
            latest = self.ctx.partitions.get(key, body)
            self.refresh(self.ctx, latest)
        except Stopping:
            pass
        except Exception:
            log.exception(
                "status refresh of Partition %s/%s failed; next in %ss",
                *key,
                self.schedule.interval,
            )
        finally:
            with self._lock:
                self.schedule.done(key)
