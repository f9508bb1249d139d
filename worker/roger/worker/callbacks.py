"""Resolving a callback path (``package.module:Class``) to a class that may run as one.

One rule for the worker's start-up check (``roger worker`` refuses a bad callback before
starting anything) and for the job processes that instantiate the classes: import the
module, look the name up without calling anything, and refuse whatever is not a class with
at least one hook (``roger.core.hooks.callback_refusal``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from roger.core.config import CallbackSpec, ConfigError, resolve_callback_config
from roger.core.hooks import callback_refusal


class CallbackRejected(Exception):
    """A callback that may not run; the message names it and says why."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"callback {path} rejected: {why}")
        self.path = path
        self.why = why


def resolve_class(path: str) -> type:
    """The class ``path`` names; ``CallbackRejected`` if it is not a callback class."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is the callback's problem
        raise CallbackRejected(
            path, f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    obj = inspect.getattr_static(module, attr, None)
    if obj is None:
        raise CallbackRejected(path, f"{attr!r} not found in module {module_name!r}")
    why = callback_refusal(obj)
    if why is not None:
        raise CallbackRejected(path, why)
    assert isinstance(obj, type)
    return obj


def check(spec: CallbackSpec, env: Mapping[str, str]) -> type:
    """Everything a callback needs before the worker starts: its class and its config's
    environment variables (values from Secrets)."""
    cls = resolve_class(spec.path)
    try:
        resolve_callback_config(spec.config, env)
    except ConfigError as exc:
        raise CallbackRejected(spec.path, str(exc)) from None
    return cls


def instantiate(path: str, config: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    """A callback object, made in a job process (values from the environment read there, so
    secrets never travel on a command line)."""
    return resolve_class(path)(**resolve_callback_config(config, env))
