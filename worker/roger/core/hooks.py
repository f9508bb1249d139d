"""Roger's five lifecycle hooks and the optional ``Callback`` base class."""

from __future__ import annotations

from typing import Any, Final, Literal

HookName = Literal["before_run", "after_run", "on_error", "on_cancel", "on_buried"]

HOOKS: Final[tuple[HookName, ...]] = (
    "before_run",
    "after_run",
    "on_error",
    "on_cancel",
    "on_buried",
)

# Error kinds that are not exception class names (Roger's reasons).
TIMEOUT: Final = "timeout"
WORKER_CRASH: Final = "worker_crash"


class Callback:
    """Optional base for callback classes; any class with any subset of the hooks works.

    ``config`` from a ``Callback`` resource (or ``--config``) arrives as keyword arguments.
    """

    def __init__(self, **config: Any) -> None:
        self.config = config


def implemented_hooks(callback: object) -> tuple[HookName, ...]:
    """The hooks a callback object really implements (the base's no-ops don't count)."""
    return tuple(h for h in HOOKS if callable(getattr(callback, h, None)))
