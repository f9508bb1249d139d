"""What the worker tells its observers (metrics, Kubernetes Events) about each hook.

Callbacks run beside the job; the worker's event loop learns afterwards which hook fired
and hands a ``LifecycleEvent`` to every observer. Observers must never block: the loop
that calls them is the one that consumes and acknowledges jobs.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple, Protocol

from roger.core.hooks import HookName

# Not a hook (no callback runs): the worker dropped the oldest buried job of a queue to
# keep ``.buried`` within ``buried_max_length``. Observers get it like a hook's event.
BURIED_DROPPED: Final = "buried_dropped"
EventName = HookName | Literal["buried_dropped"]


class LifecycleEvent(NamedTuple):
    """Immutable; a named tuple because the loop makes two per job (cheaper than a frozen
    dataclass)."""

    hook: EventName
    partition: str
    queue: str
    job_id: str
    job_name: str
    retry_count: int
    at: float  # time.time() when the hook fired
    error: tuple[str, str] | None = None  # (kind, message) for on_error / on_buried
    duration: float | None = None  # job run time, for after_run / on_error / on_buried


class LifecycleObserver(Protocol):
    def observe(self, event: LifecycleEvent) -> None:
        """Record the event; must return at once (queue work for another thread)."""

    def close(self, timeout: float) -> None:
        """Flush what can be flushed within ``timeout`` seconds, then stop."""
