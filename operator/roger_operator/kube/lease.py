"""Leader election on a ``coordination.k8s.io/v1`` Lease, so only one replica reconciles.

kopf's peering only pauses lower-priority operators; it is not an election. So the
operator runs kopf only once it holds the Lease: a standby waits in ``acquire``; the
leader renews in a thread and, if it cannot renew for ``renew_deadline`` seconds, exits at
once (before the Lease expires for the others), as client-go controllers do. A clean stop
gives the Lease up, so the standby takes over without waiting for it to expire.

The algorithm is client-go's (``leaderelection.go``): a Lease held by another identity is
taken only once its record has not changed for ``lease_duration`` seconds *by this
process's own clock* (when it last saw the record change, never the holder's timestamps,
so clock skew between nodes cannot shorten a lease); every write carries the
``resourceVersion`` it read, so of two candidates only one wins (409 for the other).
``decide`` is that rule, pure; ``LeaderElector`` does the reads and writes.

Takeover after a leader dies: at most ``lease_duration + retry_period`` seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from roger_operator.kube.client import Kube, KubeError, micro_time

log = logging.getLogger("roger_operator.lease")

API: Final = "/apis/coordination.k8s.io/v1"


def default_identity() -> str:
    """Pod name (or host) and process id: unique per process, readable in the Lease."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{os.getpid()}"


@dataclasses.dataclass
class Observed:
    """The Lease record as this process last saw it change, and when (monotonic)."""

    record: Mapping[str, Any] | None = None
    at: float = float("-inf")


def decide(
    spec: Mapping[str, Any] | None, identity: str, observed: Observed, now: float, duration: int
) -> str:
    """``"take"`` (write the Lease as ours) or ``"wait"`` (another holder's lease is live).

    ``spec`` is the Lease's spec as just read (None: no Lease yet). ``observed`` must already
    be updated with this read: a record unchanged for ``duration`` seconds of our clock has
    expired, whatever its own timestamps say. ``duration`` is ours, used when the record
    names none."""
    if spec is None or spec.get("holderIdentity") in (None, "", identity):
        return "take"
    lasts = int(spec.get("leaseDurationSeconds") or duration)
    return "take" if now - observed.at > lasts else "wait"


def our_spec(
    spec: Mapping[str, Any] | None, identity: str, duration: int, wall: float
) -> dict[str, Any]:
    """The spec this process writes: a renewal if it holds the Lease, else a takeover (a
    new acquireTime and one more transition; none for a Lease it creates)."""
    previous = spec or {}
    held = previous.get("holderIdentity") == identity
    transitions = int(previous.get("leaseTransitions") or 0)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": duration,
        "renewTime": micro_time(wall),
        "acquireTime": previous.get("acquireTime") if held else micro_time(wall),
        "leaseTransitions": transitions + (spec is not None and not held),
    }


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str | None = None,
        lease_duration: int = 8,  # whole seconds: the Lease stores an integer
        renew_deadline: float = 6.0,
        retry_period: float = 2.0,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._observed = Observed()
        self._guard = threading.Lock()
        self._stopped = threading.Event()

    @property
    def _path(self) -> str:
        return f"{API}/namespaces/{self.namespace}/leases/{self.name}"

    def try_acquire_or_renew(self) -> bool:
        """One round: True if this process holds the Lease after it (never after release)."""
        with self._guard:
            if self._stopped.is_set():
                return False
            try:
                return self._round()
            except KubeError as exc:
                log.debug("Lease %s/%s: %s", self.namespace, self.name, exc)
                return False

    def _round(self) -> bool:
        lease = self.kube.get(self._path)
        now = time.monotonic()
        spec = None if lease is None else dict(lease.get("spec") or {})
        if spec != self._observed.record:
            self._observed = Observed(spec, now)
        if decide(spec, self.identity, self._observed, now, self.lease_duration) == "wait":
            return False
        mine = our_spec(spec, self.identity, self.lease_duration, time.time())
        if spec is None:
            written = self.kube.request(
                "POST",
                f"{API}/namespaces/{self.namespace}/leases",
                body={
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": mine,
                },
            )
        else:
            written = self.kube.request("PUT", self._path, body={**lease, "spec": mine})
        self._observed = Observed(dict(written.get("spec") or {}), time.monotonic())
        return True

    def acquire(self) -> None:
        """Block until this process holds the Lease."""
        where = f"{self.namespace}/{self.name}"
        log.info("standby: waiting for Lease %s (identity %s)", where, self.identity)
        while not self.try_acquire_or_renew():
            time.sleep(self.retry_period)
        log.info("leading: holding Lease %s as %s", where, self.identity)

    def renew_until_lost(self) -> None:
        """Renew every ``retry_period``; return once a renewal has not succeeded for
        ``renew_deadline`` seconds (or after ``release``)."""
        last = time.monotonic()
        while not self._stopped.is_set():
            time.sleep(self.retry_period)
            if self.try_acquire_or_renew():
                last = time.monotonic()
            elif time.monotonic() - last >= self.renew_deadline:
                return

    def keep(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew in a daemon thread; ``on_lost`` runs if renewing fails (not after release)."""

        def renew() -> None:
            self.renew_until_lost()
            if not self._stopped.is_set():
                log.error("lost Lease %s/%s: stopping", self.namespace, self.name)
                on_lost()

        thread = threading.Thread(target=renew, name="lease-renew", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Stop renewing and give the Lease up if this process still holds it."""
        with self._guard:
            self._stopped.set()
            try:
                lease = self.kube.get(self._path)
                spec = dict((lease or {}).get("spec") or {})
                if lease is None or spec.get("holderIdentity") != self.identity:
                    return
                # As client-go releases: no holder, and a lease that ends in a second.
                spec.update(holderIdentity=None, leaseDurationSeconds=1)
                spec["renewTime"] = micro_time()
                self.kube.request("PUT", self._path, body={**lease, "spec": spec})
                log.info("released Lease %s/%s", self.namespace, self.name)
            except KubeError as exc:  # it expires by itself
                log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
