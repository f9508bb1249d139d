"""What every handler shares: clients, in-memory stores fed by watch events, locks."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from roger_operator.builders.autoscale import Memory
from roger_operator.builders.model import CallbackResource
from roger_operator.kube import Kube
from roger_operator.rabbit import Broker, BrokerBusy

Key = tuple[str, str]  # (namespace, name)


def without_managed_fields(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """``body`` without ``metadata.managedFields`` (shallow copies; ``body`` unchanged).

    Nothing here reads them, and they are about half of a cached Deployment's memory (the
    operator's and the controller-manager's field sets): caches keep objects without."""
    meta = body.get("metadata")
    if not isinstance(meta, Mapping) or "managedFields" not in meta:
        return body
    return {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


@dataclass
class Context:
    kube: Kube
    broker: Broker
    status_interval: float = 30.0
    # Deletion bounds (handlers.deletion): extra seconds after the workers' grace period,
    # and how long an unreachable RabbitMQ is waited for before the finalizer gives up.
    delete_margin: float = 60.0  # management API samples lag on a busy broker
    delete_broker_timeout: float = 300.0
    # Watch-fed caches (never the source of truth for writes; reads fall back to the API).
    partitions: dict[Key, Mapping[str, Any]] = field(default_factory=dict)
    callbacks: dict[Key, CallbackResource] = field(default_factory=dict)
    # What this process wrote: (kind, namespace, name) -> (resourceVersion, generation).
    applied: dict[tuple[str, str, str], tuple[str, int]] = field(default_factory=dict)
    # The status last written per Partition (only the operator writes status).
    written: dict[Key, Mapping[str, Any]] = field(default_factory=dict)
    # Ready or NotReady per Partition, as last written, and their counts per namespace
    # (``set_phase``: written from many handler threads at once).
    phases: dict[Key, str] = field(default_factory=dict)
    _phase_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # Latest Deployment of each Partition, from its watch and from apply responses.
    deployments: dict[Key, Mapping[str, Any]] = field(default_factory=dict)
    # AMQP URL per (namespace, secret, key), with when it was read: used by the stats refresh
    # only (every reconcile reads the Secret again). Memory only, never logged.
    urls: dict[tuple[str, str, str], tuple[str, float]] = field(default_factory=dict)
    url_ttl: float = 3600.0  # dropped at once when the broker refuses it
    autoscale_interval: float = 5.0  # seconds between autoscaling evaluations; 0: off
    autoscale: dict[Key, Memory] = field(default_factory=dict)
    # Partitions that may have old config ConfigMaps to delete (handlers.configs).
    configs_pending: set[Key] = field(default_factory=set)
    # Partitions with retired retry queues left to drain (handlers.partition.drain_retired).
    drains_pending: set[Key] = field(default_factory=set)
    # Schedules: the last tick this process enqueued (the watch may not show its status
    # write yet), and one roger.Client per broker URL.
    schedule_ticks: dict[Key, tuple[datetime.datetime, str]] = field(default_factory=dict)
    clients: dict[str, Any] = field(default_factory=dict)
    # Partitions whose finalizer runs, by uid: a reconcile or refresh that took its body
    # before the deletion (the status refresh, a child's event) and waited for the lock
    # must not declare queues or apply children again once the cleanup deleted them.
    deleting: dict[Key, str] = field(default_factory=dict)
    # KEDA objects (kind, namespace, name) looked for once since this process started.
    keda_checked: set[tuple[str, str, str]] = field(default_factory=set)
    # Partitions whose broker call outlasted its wait (``BrokerBusy``) and goes on in its
    # lane: once it ends, ``wake`` has the Partition reconciled again (the status refresher
    # makes it due at once), so nothing else needs to retry it meanwhile.
    broker_waits: set[Key] = field(default_factory=set)
    # The change (uid, generation) each Partition's last reconcile finished without a
    # problem: kopf calls its create handler again for a change already handled when the
    # watch brings kopf's own patch back late (``partition.already_handled``).
    handled: dict[Key, tuple[str, int]] = field(default_factory=dict)
    wake: Callable[[Key], None] = lambda key: None
    # Set by ``stop`` (a stop signal): handlers that start from now do nothing.
    stopping: threading.Event = field(default_factory=threading.Event)
    _locks: dict[Key, threading.RLock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        """The operator is stopping: kopf waits for every handler already handed to a
        thread, so none may start work now, and broker calls raise ``Stopping``."""
        self.stopping.set()
        self.broker.stop_calls()

    def remember_deployment(self, key: Key, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """Keep the newest Deployment seen (watch events and apply responses race)."""
        body = without_managed_fields(body)
        with self._guard:
            old = self.deployments.get(key)
            if old is None or _rv(body) >= _rv(old):
                self.deployments[key] = body
                return body
            return old

    def being_deleted(self, key: Key, body: Mapping[str, Any]) -> bool:
        """``body`` is (a copy of) a Partition whose finalizer has started."""
        uid = (body.get("metadata") or {}).get("uid")
        return uid is not None and self.deleting.get(key) == uid

    def holds(self, key: Key, body: Mapping[str, Any]) -> bool:
        """The cache still has this very Partition (same uid) and its finalizer has not
        started: what a status refresh, whose bodies come from the cache, needs. (Once a
        Partition is gone, its DELETED event drops it from both ``partitions`` and
        ``deleting``, so ``being_deleted`` alone would let a late refresh through.)"""
        cached = self.partitions.get(key)
        uid = (body.get("metadata") or {}).get("uid")
        return (
            cached is not None
            and (cached.get("metadata") or {}).get("uid") == uid
            and not self.being_deleted(key, body)
        )

    def retry_when_done(self, key: Key, busy: BrokerBusy) -> None:
        """Reconcile ``key`` again once the broker call behind ``busy`` has ended (once,
        however many of its calls were busy)."""
        with self._guard:
            if key in self.broker_waits:
                return
            self.broker_waits.add(key)

        def done() -> None:
            with self._guard:
                self.broker_waits.discard(key)
            self.wake(key)

        busy.when_done(done)

    def set_phase(self, key: Key, phase: str) -> None:
        with self._guard:
            self._count_phase(key, phase)

    def phase_counts(self, namespace: str) -> dict[str, int]:
        """Partitions of ``namespace`` by phase (Ready, NotReady; 0 when none)."""
        with self._guard:
            return {"Ready": 0, "NotReady": 0, **self._phase_counts.get(namespace, {})}

    def _count_phase(self, key: Key, phase: str | None) -> None:
        """Record (None: drop) ``key``'s phase and keep the counts; under ``_guard``."""
        old = self.phases.pop(key, None)
        counts = self._phase_counts.setdefault(key[0], {})
        if old is not None:
            counts[old] -= 1
        if phase is not None:
            self.phases[key] = phase
            counts[phase] = counts.get(phase, 0) + 1

    def lock(self, key: Key) -> threading.RLock:
        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.RLock()
            return lock

    def forget(self, key: Key) -> None:
        with self._guard:
            self._locks.pop(key, None)
            self._locks.pop((key[0], f"{key[1]}#autoscale"), None)  # handlers/autoscale.py
            self.partitions.pop(key, None)
            self.written.pop(key, None)
            self._count_phase(key, None)
            self.deployments.pop(key, None)
            self.handled.pop(key, None)
            self.autoscale.pop(key, None)
            self.configs_pending.discard(key)
            self.drains_pending.discard(key)


def _rv(body: Mapping[str, Any]) -> int:
    """resourceVersion as a number (etcd revisions); unparsable ones sort first."""
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0
