"""What the worker loop reports besides lifecycle events; metrics implement it.

A protocol keeps the loop free of prometheus: tests and ``--metrics-port``-less runs use
``NullTelemetry``.
"""

from __future__ import annotations

from typing import Protocol

from roger.core.lifecycle import LifecycleEvent


class Telemetry(Protocol):
    def observe(self, event: LifecycleEvent) -> None: ...
    def running(self, queue: str, delta: int) -> None: ...
    def outcome(self, queue: str, job: str, outcome: str, duration: float | None) -> None: ...
    def parked(self, queue: str, reason: str) -> None: ...
    def callback_failed(self, callback: str, hook: str, reason: str) -> None: ...
    def queue_sample(self, queue: str, counts: dict[str, int]) -> None: ...
    def reconnected(self) -> None: ...
    def ack_timed_out(self, queue: str) -> None: ...
    def ack_timeout_risk(self, queue: str, at_risk: bool) -> None: ...
    def prepare(self, queues: list[str]) -> None: ...
    def queue_paused(self, queue: str, paused: bool) -> None: ...
    def close(self, timeout: float) -> None: ...


class NullTelemetry:
    def observe(self, event: LifecycleEvent) -> None:
        pass

    def running(self, queue: str, delta: int) -> None:
        pass

    def outcome(self, queue: str, job: str, outcome: str, duration: float | None) -> None:
        pass

    def parked(self, queue: str, reason: str) -> None:
        pass

    def callback_failed(self, callback: str, hook: str, reason: str) -> None:
        pass

    def queue_sample(self, queue: str, counts: dict[str, int]) -> None:
        pass

    def ack_timed_out(self, queue: str) -> None:
        pass

    def ack_timeout_risk(self, queue: str, at_risk: bool) -> None:
        pass

    def reconnected(self) -> None:
        pass

    def prepare(self, queues: list[str]) -> None:
        pass

    def queue_paused(self, queue: str, paused: bool) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass
