"""Queue listings shared by the Partitions that ask for one at the same time.

RabbitMQ's management API answers a filtered listing (``/api/queues/<vhost>?name=<regex>``)
by matching the pattern against every queue of the vhost: each call costs O(queues in the
vhost), so one listing per Partition costs O(N) each and O(N²) in all (measured: 0.045 s
per call at 100 Partitions, 0.48 s at 500; bench/OPERATOR_RESULTS.md). Here the calls that
arrive while a listing of the same broker is in flight wait for it to end and then share
the next one, whose pattern names all their prefixes: every caller gets numbers taken after
it asked, and under load one listing serves many Partitions. Alone, a caller pays what it
paid before (one filtered listing of its own).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Item = dict[str, Any]
# fetch(url, pattern): the listing's items, or None when the management API did not answer
Fetch = Callable[[str, str], list[Item] | None]
# Cowboy, under RabbitMQ's management API, refuses a request line over 8,000 bytes: a batch
# of prefixes is listed in as many requests as its patterns need to stay well under it.
MAX_PATTERN_CHARS = 2000


def patterns(prefixes: Iterable[str], limit: int = MAX_PATTERN_CHARS) -> list[str]:
    """Regular expressions that together match every name starting with one of
    ``prefixes``, each at most about ``limit`` characters (one prefix longer than that is
    a pattern of its own)."""
    out: list[str] = []
    chunk: list[str] = []
    size = 0
    for escaped in sorted(re.escape(p) for p in set(prefixes)):
        if chunk and size + len(escaped) + 1 > limit:
            out.append(_pattern(chunk))
            chunk, size = [], 0
        chunk.append(escaped)
        size += len(escaped) + 1
    if chunk:
        out.append(_pattern(chunk))
    return out


def _pattern(escaped: list[str]) -> str:
    return f"^{escaped[0]}" if len(escaped) == 1 else f"^(?:{'|'.join(escaped)})"


@dataclass
class _Batch:
    prefixes: set[str] = field(default_factory=set)
    done: bool = False
    items: dict[str, Item] | None = None


class SharedListing:
    """One listing in flight per broker URL; the callers that come meanwhile share the next."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._cond = threading.Condition()
        self._open: dict[str, _Batch] = {}  # per URL: the batch the next listing serves
        self._running: set[str] = set()  # URLs with a listing in flight

    def items(self, url: str, prefix: str) -> dict[str, Item] | None:
        """Items (by name) of a listing taken after this call began that covers every queue
        whose name starts with ``prefix``; None when the management API did not answer."""
        with self._cond:
            batch = self._open.get(url)
            if batch is None:
                batch = self._open[url] = _Batch()
            batch.prefixes.add(prefix)
            while not batch.done and url in self._running:
                self._cond.wait()
            if batch.done:  # another caller listed for this batch
                return batch.items
            self._running.add(url)  # this caller lists for its batch, closed from now on
            del self._open[url]
        found: dict[str, Item] | None = None
        try:
            found = self._list(url, batch.prefixes)
        finally:
            with self._cond:
                batch.items, batch.done = found, True
                self._running.discard(url)
                self._cond.notify_all()
        return found

    def _list(self, url: str, prefixes: set[str]) -> dict[str, Item] | None:
        out: dict[str, Item] = {}
        for pattern in patterns(prefixes):
            items = self._fetch(url, pattern)
            if items is None:
                return None
            out.update((str(i.get("name")), i) for i in items)
        return out
