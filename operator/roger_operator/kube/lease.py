"""Leader election on a ``coordination.k8s.io/v1`` Lease, so only one replica reconciles.

kopf's peering only pauses lower-priority operators; it is not an election. So the
operator runs kopf only once it holds the Lease (``kubernetes.leaderelection``, the
client's own implementation, with its ``LeaseLock``): a standby waits in ``acquire``; the
leader renews in a thread and, if it cannot renew for ``renew_deadline`` seconds, exits at
once (before the Lease expires for the others), as client-go controllers do. A clean stop
gives the Lease up, so the standby takes over without waiting for it to expire.

Takeover after a leader dies: at most ``lease_duration + retry_period`` seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger("roger_operator.lease")


def default_identity() -> str:
    """Pod name (or host) and process id: unique per process, readable in the Lease."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{os.getpid()}"


class _Election(leaderelection.LeaderElection):  # type: ignore[misc]
    """The client's election, with a stop switch: once released, never renew again."""

    def __init__(self, config: Any, guard: threading.Lock, stopped: threading.Event) -> None:
        super().__init__(config)  # type: ignore[no-untyped-call]
        self._guard = guard
        self._stopped = stopped

    def try_acquire_or_renew(self) -> bool:
        with self._guard:
            if self._stopped.is_set():
                return False
            return bool(super().try_acquire_or_renew())  # type: ignore[no-untyped-call]


class LeaderElector:
    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        name: str,
        identity: str | None = None,
        lease_duration: int = 8,  # whole seconds: the Lease stores an integer
        renew_deadline: float = 6.0,
        retry_period: float = 2.0,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.api = k8s.CoordinationV1Api(api_client)
        lock = LeaseLock(name, namespace, self.identity)  # type: ignore[no-untyped-call]
        lock.api_instance = self.api  # the operator's configuration, not the global one
        config = electionconfig.Config(  # type: ignore[no-untyped-call]
            lock, lease_duration, renew_deadline, retry_period, lambda: None, lambda: None
        )
        self._guard = threading.Lock()
        self._stopped = threading.Event()
        self._election = _Election(config, self._guard, self._stopped)
        # The client logs every retry at INFO ("yet to finish lease_duration ...").
        logging.getLogger("leaderelection").setLevel(logging.WARNING)

    def acquire(self) -> None:
        """Block until this process holds the Lease."""
        where = f"{self.namespace}/{self.name}"
        log.info("standby: waiting for Lease %s (identity %s)", where, self.identity)
        self._election.acquire()  # type: ignore[no-untyped-call]
        log.info("leading: holding Lease %s/%s as %s", self.namespace, self.name, self.identity)

    def keep(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew in a daemon thread; ``on_lost`` runs if renewing fails (not after release)."""

        def renew() -> None:
            self._election.renew_loop()  # type: ignore[no-untyped-call]
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
                lease = self.api.read_namespaced_lease(self.name, self.namespace)
                if lease.spec is None or lease.spec.holder_identity != self.identity:
                    return
                lease.spec.holder_identity = None
                self.api.replace_namespaced_lease(self.name, self.namespace, lease)
                log.info("released Lease %s/%s", self.namespace, self.name)
            except k8s.ApiException as exc:  # it expires by itself
                log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
