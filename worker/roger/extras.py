"""The optional parts of roger-k8s, and the message a missing one gives.

``pip install roger-k8s`` is the worker and the client (pika, prometheus-client, PyYAML).
Kubernetes Events need the ``[events]`` extra, the operator the ``[operator]`` extra; code
that needs one asks here first, so that a missing package says which extra brings it
instead of a bare ``ModuleNotFoundError`` deep in a start-up.
"""

from __future__ import annotations

import importlib.util
from typing import Final

EXTRAS: Final = {
    "events": ("kubernetes",),
    "operator": ("kopf", "urllib3", "croniter"),
}


class MissingExtra(ImportError):
    """A feature's packages are not installed; the message names the extra to install."""


def absent_modules(extra: str) -> list[str]:
    """The extra's top-level modules that cannot be imported here."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def missing_extra_message(extra: str, feature: str, absent: list[str]) -> str:
    return f"{feature} cannot run without {', '.join(absent)}: pip install 'roger-k8s[{extra}]'"


def require_extra(extra: str, feature: str) -> None:
    """Raise ``MissingExtra`` (an ``ImportError``) unless the extra's modules import."""
    absent = absent_modules(extra)
    if absent:
        raise MissingExtra(missing_extra_message(extra, feature, absent))
