"""What a kubelet decides about one container, without I/O: probes, restarts, its status.

``localpods`` runs worker Pods' containers as local processes on kwok's fake nodes; kwok
marks every Pod Ready at once. These rules let ``localpods`` report what a kubelet would:
startup, liveness and readiness probes with their initialDelaySeconds, periodSeconds,
timeoutSeconds, successThreshold and failureThreshold; a container killed when its startup
or liveness probe fails; restarts with the kubelet's back-off (10 s doubling to 5 min); a
Ready condition and ``containerStatuses[]`` from all of that.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

BACKOFF_FIRST = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET = 600.0  # a container that ran this long restarts without back-off
# Images localpods can "pull": the project's (the worker image in every flavour).
RUNNABLE_IMAGES: tuple[str, ...] = ("roger-*", "*/roger-*", "example/jobs-worker:*")
OWN_CONDITIONS = ("Ready", "ContainersReady")
TERMINATION_MESSAGE_BYTES = 4096  # as the kubelet's FallbackToLogsOnError: the log's tail
TERMINATION_MESSAGE_LINES = 80


@dataclass(frozen=True)
class Probe:
    """An httpGet probe of a container spec (other handlers are not supported locally)."""

    kind: str  # startup | liveness | readiness
    path: str
    port: int | str
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    grace: float | None = None  # probe-level terminationGracePeriodSeconds

    @classmethod
    def from_spec(cls, kind: str, spec: Mapping[str, Any] | None) -> Probe | None:
        if not spec or "httpGet" not in spec:
            return None
        get = spec["httpGet"]
        grace = spec.get("terminationGracePeriodSeconds")
        return cls(
            kind=kind,
            path=str(get.get("path") or "/"),
            port=get["port"],
            initial_delay=float(spec.get("initialDelaySeconds") or 0),
            period=float(spec.get("periodSeconds") or 10),
            timeout=float(spec.get("timeoutSeconds") or 1),
            # liveness and startup probes must use 1 (the API server enforces it)
            success_threshold=int(spec.get("successThreshold") or 1),
            failure_threshold=int(spec.get("failureThreshold") or 3),
            grace=float(grace) if grace is not None else None,
        )


@dataclass
class ProbeState:
    """Consecutive results of one probe of one running container.

    ``result`` is what the kubelet acts on: readiness starts False, liveness and startup
    start "not failed" (None) and become False only after ``failure_threshold`` failures.
    """

    probe: Probe
    next_at: float
    successes: int = 0
    failures: int = 0
    result: bool | None = None

    @classmethod
    def start(cls, probe: Probe, started_at: float) -> ProbeState:
        return cls(probe, started_at + probe.initial_delay)

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, now: float) -> None:
        self.next_at = now + self.probe.period
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.probe.success_threshold:
                self.result = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= self.probe.failure_threshold:
                self.result = False


def probes_of(container: Mapping[str, Any]) -> dict[str, Probe]:
    found = {}
    for kind in ("startup", "liveness", "readiness"):
        probe = Probe.from_spec(kind, container.get(f"{kind}Probe"))
        if probe is not None:
            found[kind] = probe
    return found


def local_port(port: int | str, container: Mapping[str, Any], mapped: Mapping[int, int]) -> int:
    """The loopback port of a probe's port (a number or a container port's name), after
    ``mapped`` (container port -> the local port the process listens on)."""
    number: int | None = port if isinstance(port, int) else None
    if isinstance(port, str):
        if port.isdigit():
            number = int(port)
        for p in container.get("ports") or ():
            if p.get("name") == port:
                number = int(p["containerPort"])
    if number is None:
        raise ValueError(f"probe port {port!r} is not a port of the container")
    return mapped.get(number, number)


def runnable(image: str, patterns: Iterable[str] = RUNNABLE_IMAGES) -> bool:
    return any(fnmatch.fnmatchcase(image, p) for p in patterns)


def restart_delay(restarts: int, ran_for: float) -> float:
    """Seconds before restarting a container that exited for the ``restarts``-th time."""
    if ran_for >= BACKOFF_RESET or restarts <= 1:
        return 0.0
    return float(min(BACKOFF_FIRST * 2 ** (restarts - 2), BACKOFF_MAX))


def termination_message(log_tail: bytes) -> str:
    """``FallbackToLogsOnError``: the last lines of the container's log."""
    text = log_tail[-TERMINATION_MESSAGE_BYTES:].decode(errors="replace")
    return "\n".join(text.splitlines()[-TERMINATION_MESSAGE_LINES:])


def pod_status_patch(
    current: Mapping[str, Any], container_status: Mapping[str, Any], now: str
) -> dict[str, Any] | None:
    """A merge patch of the pod's status for one container's status (``conditions`` and
    ``containerStatuses`` replaced whole, so no stale state is left), None if unchanged.

    Phase stays Running: kwok's pod-ready Stage matches Pending pods only, so a Running
    pod's status is ours alone (a kubelet would keep a pod whose image cannot be pulled
    Pending; kwok would then mark it Ready again).
    """
    ready = bool(container_status.get("ready"))
    value = "True" if ready else "False"
    conditions = []
    for c in current.get("conditions") or ():
        if c.get("type") not in OWN_CONDITIONS:
            conditions.append(dict(c))
    previous = {c.get("type"): c for c in current.get("conditions") or ()}
    for ctype in OWN_CONDITIONS:
        old = previous.get(ctype) or {}
        condition: dict[str, Any] = {"type": ctype, "status": value}
        condition["lastTransitionTime"] = (
            old["lastTransitionTime"]
            if old.get("status") == value and old.get("lastTransitionTime")
            else now
        )
        if not ready:
            condition["reason"] = "ContainersNotReady"
            condition["message"] = f"containers with unready status: [{container_status['name']}]"
        conditions.append(condition)
    statuses = [dict(container_status)]
    if conditions == list(current.get("conditions") or ()) and statuses == list(
        current.get("containerStatuses") or ()
    ):
        return None
    return {"status": {"conditions": conditions, "containerStatuses": statuses}}
