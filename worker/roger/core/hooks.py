"""Roger's five lifecycle hooks and the optional ``Callback`` base class."""

from __future__ import annotations

import inspect
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
CONSUMER_TIMEOUT: Final = "consumer_timeout"  # held past the broker's consumer_timeout


class Callback:
    """Optional base for callback classes; any class with any subset of the hooks works.

    ``config`` from a ``Callback`` resource (or ``--config``) arrives as keyword arguments.
    """

    def __init__(self, **config: Any) -> None:
        self.config = config


def implemented_hooks(callback: object) -> tuple[HookName, ...]:
    """The hooks a callback object really implements (the base's no-ops don't count)."""
    return tuple(h for h in HOOKS if callable(getattr(callback, h, None)))


def class_hooks(cls: type) -> tuple[HookName, ...]:
    """The hooks a class defines, read without running any of its code (no ``getattr``, so
    no metaclass ``__getattr__`` or descriptor runs)."""
    found: list[HookName] = []
    for hook in HOOKS:
        attr = inspect.getattr_static(cls, hook, None)
        if callable(attr) or isinstance(attr, classmethod | staticmethod):
            found.append(hook)
    return tuple(found)


def callback_refusal(obj: object) -> str | None:
    """Why ``obj`` may not be a callback (None when it may): a callback ``module`` must name a
    class that implements at least one of the five hooks, so a Callback can only ever run
    callback code, never an arbitrary callable of the image (``subprocess:Popen``,
    ``os:system``)."""
    if not inspect.isclass(obj):
        if inspect.isbuiltin(obj):
            what = "a built-in function"
        elif inspect.isfunction(obj) or inspect.ismethod(obj):
            what = "a function"
        elif inspect.ismodule(obj):
            what = "a module"
        else:
            what = f"a {type(obj).__name__} object"
        return f"it is {what}, not a class"
    if not class_hooks(obj):
        return (
            f"class {obj.__qualname__} implements none of the hooks {', '.join(HOOKS)}"
            " (a callback class defines at least one of them)"
        )
    return None
