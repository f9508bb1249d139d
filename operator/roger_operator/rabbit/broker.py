"""Blocking pika access, in one lane of threads per broker, one connection per lane thread.

Handlers run in kopf's thread pool; every public method here runs in the lane of its
broker (``roger_operator.rabbit.lanes``) and waits for it a bounded time, so a broker that
hangs never holds the threads other Partitions need. pika connections are not thread-safe,
so each lane thread keeps its own. The AMQP URL is a secret: it is never logged, and every
message that leaves this module went through ``redact``. The management HTTP API's calls
(policies, lookups, listings) are ``roger_operator.rabbit.management``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

import pika
import pika.exceptions

from roger.broker.connect import blocking_connection
from roger.core import naming, topology
from roger_operator import metrics
from roger_operator.builders import queue_plan
from roger_operator.builders.model import PartitionSpec
from roger_operator.rabbit import management, migration, pause
from roger_operator.rabbit.lanes import LaneBusy, Lanes, LaneUnavailable, Stopping
from roger_operator.rabbit.listing import SharedListing
from roger_operator.rabbit.redaction import addresses, redact

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=Callable[..., Any])
_OWNER_RE = re.compile(r"current is '([^']*)'")
STATS_COLUMNS = "name,messages_ready,messages_unacknowledged,messages,consumers"


class BrokerError(Exception):
    """RabbitMQ unreachable or refusing; the message is safe to show (no credentials)."""


class BrokerBusy(BrokerError):
    """The broker answers, but this call waited its turn too long (``LaneBusy``); it goes on
    in the lane, and ``when_done`` runs a function once it has ended."""

    def __init__(self, message: str, pending: Future[Any]) -> None:
        super().__init__(message)
        self._pending = pending

    def when_done(self, fn: Callable[[], None]) -> None:
        self._pending.add_done_callback(lambda _call: fn())


class ClaimConflict(Exception):
    def __init__(self, partition_id: str, owner: str) -> None:
        super().__init__(f"partition id {partition_id!r} is claimed by Partition {owner}")
        self.partition_id = partition_id
        self.owner = owner


_RECONNECT = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.StreamLostError,
    pika.exceptions.ConnectionWrongStateError,
    ConnectionError,
    OSError,
)


def _declare_queue(channel: Any, name: str, arguments: dict[str, Any]) -> None:
    channel.queue_declare(name, durable=True, arguments=arguments)


def _delete_queue(channel: Any, name: str) -> None:
    channel.queue_delete(name)


def _observe_call(name: str, queued: float, ran: float) -> None:
    metrics.BROKER_CALL_QUEUED.labels(name).observe(queued)
    metrics.BROKER_CALL_DURATION.labels(name).observe(ran)


def _in_lane(method: M) -> M:
    """Run ``method(self, url, ...)`` in the lane of ``url``, unless already in one."""

    @functools.wraps(method)
    def in_lane(self: Broker, url: str, *args: Any, **kwargs: Any) -> Any:
        if getattr(self._local, "in_lane", False):
            return method(self, url, *args, **kwargs)
        try:
            return self.lanes.call(url, method, self, url, *args, **kwargs)
        except LaneBusy as exc:
            raise BrokerBusy(redact(str(exc), url), exc.pending) from None
        except LaneUnavailable as exc:
            raise BrokerError(redact(str(exc), url)) from None

    return in_lane  # type: ignore[return-value]


class Broker:
    def __init__(
        self,
        management_port: int | None = 15672,
        timeout: float = 5.0,
        wait: float = 15.0,
        vhost_bound: int | None = None,
    ) -> None:
        """``vhost_bound``: the bound of each vhost's shared ``.buried`` policy
        (``--bound-policy vhost``); None gives every ``.buried`` a policy of its own."""
        self.management_port = management_port or None
        self.timeout = timeout
        self.vhost_bound = vhost_bound
        self._local = threading.local()
        self._stopping = threading.Event()
        self.lanes = Lanes(
            lambda exc: isinstance(exc, BrokerError),
            wait=wait,
            on_thread_start=lambda: setattr(self._local, "in_lane", True),
            on_call_done=_observe_call,
        )
        self._declared: dict[tuple[str, str], str] = {}
        self._paused: dict[tuple[str, str], set[str]] = {}  # as last read/set in the broker
        self._retired: dict[tuple[str, str], list[str]] = {}  # retry queues left to drain
        self._lock = threading.Lock()
        self._stats_listing = SharedListing(
            lambda url, pattern: self.management_list(url, "queues", pattern, STATS_COLUMNS)
        )

    # -- connections ---------------------------------------------------------------------
    def _connections(self) -> dict[str, Any]:
        conns: dict[str, Any] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def _channel(self, url: str) -> Any:
        conns = self._connections()
        entry = conns.get(url)
        if entry is None or entry[0].is_closed:
            tries = []  # pika tries each address in turn
            for one in addresses(url):
                params = pika.URLParameters(one)
                params.connection_attempts = 1
                params.socket_timeout = self.timeout
                params.stack_timeout = self.timeout  # a broker that accepts and never answers
                params.blocked_connection_timeout = self.timeout
                params.heartbeat = 0
                params.client_properties = {"connection_name": "roger-operator"}
                tries.append(params)
            conn = blocking_connection(tries)
            entry = conns[url] = [conn, conn.channel()]
        if entry[1].is_closed:
            entry[1] = entry[0].channel()
        return entry[1]

    def _drop(self, url: str) -> None:
        entry = self._connections().pop(url, None)
        if entry is not None:
            with contextlib.suppress(Exception):  # already broken
                entry[0].close()

    def run(self, url: str, fn: Callable[[Any], T]) -> T:
        """``fn(channel)``, reconnecting once; errors come out as ``BrokerError``.

        Raises ``Stopping`` once the operator stops: make long work many short calls (a
        stopping operator waits for each call in flight, 21 exchange deletions took 30 s
        with forty Partitions deleted at once)."""
        for attempt in (1, 2):
            self._not_stopping()
            try:
                return fn(self._channel(url))
            except pika.exceptions.ChannelClosedByBroker:
                raise
            except _RECONNECT as exc:
                self._drop(url)
                if attempt == 2:
                    detail = redact(f"{type(exc).__name__}: {exc}", url)
                    raise BrokerError(f"RabbitMQ unavailable ({detail})") from None
        raise AssertionError("unreachable")

    def stop_calls(self) -> None:
        """From now on every broker call raises ``Stopping`` (the operator is stopping)."""
        self._stopping.set()
        self.lanes.shutdown()

    def _not_stopping(self) -> None:
        if self._stopping.is_set():
            raise Stopping

    def close(self) -> None:
        self.lanes.shutdown()  # first: nothing new may start on a connection dropped here
        for url in list(self._connections()):
            self._drop(url)

    # -- claim ---------------------------------------------------------------------------
    @_in_lane
    def claim(self, url: str, partition_id: str, owner: str) -> None:
        """Claim ``partition_id`` for ``owner`` (``namespace/name``) on this broker.

        Raises ``ClaimConflict`` when another Partition holds it.
        """

        def declare(ch: Any) -> None:
            ch.exchange_declare(
                naming.claim_exchange_name(partition_id),
                "fanout",
                durable=True,
                arguments={"alternate-exchange": owner},
            )

        try:
            self.run(url, declare)
        except pika.exceptions.ChannelClosedByBroker as exc:
            match = _OWNER_RE.search(str(exc.reply_text))
            if exc.reply_code == 406:
                raise ClaimConflict(partition_id, match.group(1) if match else "?") from None
            raise BrokerError(redact(str(exc.reply_text), url)) from None

    @_in_lane
    def release(self, url: str, partition_id: str, owner: str) -> bool:
        """Give the claim up, if ``owner`` holds it."""
        try:
            self.claim(url, partition_id, owner)
        except ClaimConflict:
            return False
        self.run(url, lambda ch: ch.exchange_delete(naming.claim_exchange_name(partition_id)))
        return True

    # -- queues --------------------------------------------------------------------------
    @staticmethod
    def declarations(spec: PartitionSpec) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for q in spec.queues:
            out.extend(topology.declarations(spec.partition_id, q.name, spec.retry_levels))
        return out

    @_in_lane
    def declare(self, url: str, spec: PartitionSpec) -> list[str]:
        """Bring the partition's queues to the spec (``builders.queue_plan``): declare them,
        bound ``.buried`` by policy, replace a legacy intake, note retired retry queues.

        Returns what the broker refuses (arguments Roger cannot migrate). Skipped when this
        process already did it for the same spec, and only then: a management API that is
        on but did not answer (a 5xx or a timeout on a loaded broker) left the retired retry
        queues unknown, so the next reconcile looks again.
        """
        digest = self._digest(spec)
        key = (url, spec.partition_id)
        with self._lock:
            if self._declared.get(key) == digest:
                return []
        seen = migration.observe(self, url, spec)
        actions = queue_plan.plan(
            spec.partition_id,
            [q.name for q in spec.queues],
            spec.retry_levels,
            spec.buried_max_length,
            seen,
            self.vhost_bound,
        )
        try:
            done = migration.carry_out(self, url, actions)
        except (pika.exceptions.AMQPError, TimeoutError) as exc:
            why = redact(f"migrating queues: {type(exc).__name__}: {exc}", url)
            raise BrokerError(why) from None
        unseen = seen is None and self.management_port is not None
        with self._lock:
            self._retired[key] = sorted(set(self._retired.get(key, [])) | set(done.retired))
            if not done.refused and not done.unfinished and not unseen:
                self._declared[key] = digest
        return done.refused

    def declared(self, url: str, spec: PartitionSpec) -> bool:
        """``declare`` finished this spec in this process: nothing is left for a later
        reconcile (a failed listing, a bound policy not set, an intake not replaced yet)."""
        with self._lock:
            return self._declared.get((url, spec.partition_id)) == self._digest(spec)

    @classmethod
    def _digest(cls, spec: PartitionSpec) -> str:
        return json.dumps([cls.declarations(spec), spec.buried_max_length], sort_keys=True)

    def retired(self, url: str, partition_id: str) -> list[str]:
        """Retry queues no level uses any more, still to be drained."""
        with self._lock:
            return list(self._retired.get((url, partition_id), []))

    @_in_lane
    def drain_retired(self, url: str, spec: PartitionSpec) -> list[str]:
        """Delete the retired retry queues that are empty; the ones left. Call only once no
        pod of an older config runs (it could publish to them)."""
        key = (url, spec.partition_id)
        left = migration.drain(self, url, self.retired(url, spec.partition_id))
        with self._lock:
            self._retired[key] = left
        return left

    def management_call(
        self, url: str, method: str, kind: str, name: str, body: Any = None
    ) -> int | None:
        """``management.call``: the HTTP status, None when the API is off or silent."""
        self._not_stopping()
        return management.call(self.management_port, self.timeout, url, method, kind, name, body)

    def management_get(self, url: str, kind: str, name: str, columns: str) -> dict[str, Any] | None:
        """``management.get``: one object by name ({} when it does not exist), or None."""
        self._not_stopping()
        return management.get(self.management_port, self.timeout, url, kind, name, columns)

    def management_list(
        self, url: str, kind: str, pattern: str, columns: str, timeout: float | None = None
    ) -> list[dict[str, Any]] | None:
        """``management.list_items``: every page of matching items, or None."""
        self._not_stopping()
        return management.list_items(
            self.management_port, timeout or self.timeout, url, kind, pattern, columns
        )

    def forget(self, url: str | None, partition_id: str) -> None:
        with self._lock:
            for key in [k for k in self._declared if k[1] == partition_id]:
                if url is None or key[0] == url:
                    del self._declared[key]

    def _count(self, url: str, name: str) -> tuple[int, int] | None:
        """(ready messages, consumers) of an existing queue, None if it does not exist."""
        try:
            ok = self.run(url, lambda ch: ch.queue_declare(name, passive=True))
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise BrokerError(redact(str(exc.reply_text), url)) from None
        return int(ok.method.message_count), int(ok.method.consumer_count)

    def _management(self, url: str, names: Iterable[str], prefix: str) -> dict[str, Any] | None:
        """The management API's numbers for ``names`` (all starting with ``prefix``), from
        a listing shared with the Partitions asking at the same time (``listing``)."""
        items = self._stats_listing.items(url, prefix)
        if items is None:
            return None
        return {name: items[name] for name in names if name in items}

    @_in_lane
    def stats(self, url: str, spec: PartitionSpec) -> list[dict[str, Any]]:
        """Per queue: ready, unacked, consumers, paused, retrying, buried."""
        pid = spec.partition_id
        names = [n for n, _ in self.declarations(spec)]
        mgmt = self._management(url, names, f"{pid}-")
        with self._lock:
            paused_now = self._paused.get((url, pid))
        out = []
        for q in spec.queues:
            main = naming.queue_name(pid, q.name)
            retry = [naming.retry_queue_name(pid, q.name, s) for s in spec.retry_levels]
            buried = naming.buried_queue_name(pid, q.name)
            paused = q.paused if paused_now is None else q.name in paused_now
            entry: dict[str, Any] = {"name": q.name, "paused": paused}
            if mgmt is not None:
                m = mgmt.get(main, {})
                entry["ready"] = int(m.get("messages_ready") or 0)
                entry["unacked"] = int(m.get("messages_unacknowledged") or 0)
                entry["consumers"] = int(m.get("consumers") or 0)
                entry["retrying"] = sum(int(mgmt.get(r, {}).get("messages") or 0) for r in retry)
                entry["buried"] = int(mgmt.get(buried, {}).get("messages") or 0)
            else:
                counted = self._count(url, main) or (0, 0)
                entry["ready"], entry["consumers"] = counted
            out.append(entry)
        return out

    @_in_lane
    def set_paused(self, url: str, spec: PartitionSpec) -> None:
        """Bring the broker's paused state to ``spec.queues[].paused``."""
        key = (url, spec.partition_id)
        wanted = {q.name for q in spec.queues if q.paused}
        with self._lock:
            known = self._paused.get(key)
        if known == wanted:
            return
        try:
            current = pause.paused_queues(url, spec.partition_id, [q.name for q in spec.queues])
        except Exception as exc:  # the worker's client raises its own errors
            raise BrokerError(redact(f"reading paused queues: {exc}", url)) from None
        for q in spec.queues:
            if (q.name in current) == q.paused:
                continue
            try:
                pause.set_paused(url, spec.partition_id, q.name, q.paused)
            except Exception as exc:
                raise BrokerError(redact(f"pause/resume {q.name}: {exc}", url)) from None
        with self._lock:
            self._paused[key] = wanted

    @_in_lane
    def delete_queue(self, url: str, name: str) -> None:
        """Delete one queue or stream (gone already: nothing to do)."""
        self.run(url, functools.partial(_delete_queue, name=name))

    def forget_partition(self, url: str, partition_id: str) -> None:
        """Drop what this process remembers of a partition's queues (they were deleted)."""
        self.forget(url, partition_id)
        with self._lock:
            self._paused.pop((url, partition_id), None)
            self._retired.pop((url, partition_id), None)
