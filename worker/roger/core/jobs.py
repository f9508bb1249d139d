"""The ``@roger.job`` decorator and the registry of runnable jobs.

Only functions decorated here, found in the modules a worker lists with ``--jobs``, can
run: a message naming anything else (``os:system``) is parked, never imported or called.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, overload

KeyFn = Callable[[Any], "str | None"]


@dataclass(eq=False)
class JobDefinition:
    """A decorated job function and the settings Roger needs to run it."""

    func: Callable[[Any], Any]
    name: str  # "module:function"
    queue: str = "default"
    retryable: bool = False
    max_execution_time: float | None = None
    queue_key: KeyFn | None = None
    execution_key: KeyFn | None = None

    def __call__(self, args: Any) -> Any:
        return self.func(args)

    def keys(self, args: Any) -> tuple[str | None, str | None]:
        """The (queue_key, execution_key) of one invocation, for the message."""
        qk = self.queue_key(args) if self.queue_key else None
        ek = self.execution_key(args) if self.execution_key else None
        return _key(qk, "queue_key"), _key(ek, "execution_key")


def _key(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{what} must return a string or None; got {value!r}")


def _define(
    func: Callable[[Any], Any],
    queue: str,
    retryable: bool,
    max_execution_time: float | None,
    queue_key: KeyFn | None,
    execution_key: KeyFn | None,
) -> JobDefinition:
    if max_execution_time is not None and max_execution_time < 1:
        raise ValueError("max_execution_time is in seconds and at least 1 (Roger's minimum)")
    definition = JobDefinition(
        func=func,
        name=f"{func.__module__}:{func.__qualname__}",
        queue=queue,
        retryable=retryable,
        max_execution_time=max_execution_time,
        queue_key=queue_key,
        execution_key=execution_key,
    )
    functools.update_wrapper(definition, func)
    return definition


@overload
def job(func: Callable[[Any], Any]) -> JobDefinition: ...


@overload
def job(
    func: None = None,
    *,
    queue: str = "default",
    retryable: bool = False,
    max_execution_time: float | None = None,
    queue_key: KeyFn | None = None,
    execution_key: KeyFn | None = None,
) -> Callable[[Callable[[Any], Any]], JobDefinition]: ...


def job(
    func: Callable[[Any], Any] | None = None,
    *,
    queue: str = "default",
    retryable: bool = False,
    max_execution_time: float | None = None,
    queue_key: KeyFn | None = None,
    execution_key: KeyFn | None = None,
) -> JobDefinition | Callable[[Callable[[Any], Any]], JobDefinition]:
    """Declare a job: ``@roger.job`` or ``@roger.job(queue="mail", retryable=True)``."""

    def wrap(f: Callable[[Any], Any]) -> JobDefinition:
        return _define(f, queue, retryable, max_execution_time, queue_key, execution_key)

    return wrap(func) if func is not None else wrap


def module_jobs(module: ModuleType) -> dict[str, JobDefinition]:
    """The jobs a module defines (re-exported jobs of other modules do not count)."""
    return {
        v.name: v
        for v in vars(module).values()
        if isinstance(v, JobDefinition) and v.name.split(":", 1)[0] == module.__name__
    }


class JobRegistry:
    """Runnable jobs by name, built from the worker's ``--jobs`` modules."""

    def __init__(self, modules: Iterable[ModuleType]) -> None:
        modules = tuple(modules)
        self.modules = tuple(m.__name__ for m in modules)
        self.jobs: dict[str, JobDefinition] = {}
        for module in modules:
            self.jobs.update(module_jobs(module))

    def lookup(self, name: str) -> JobDefinition | str:
        """The job, or why it must not run: ``unknown_job`` or ``job_not_allowed``."""
        found = self.jobs.get(name)
        if found is not None:
            return found
        return "unknown_job" if name.split(":", 1)[0] in self.modules else "job_not_allowed"
