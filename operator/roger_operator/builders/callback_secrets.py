"""Callback ``config`` values from Secrets, without ever copying a secret value.

In a Callback, ``config.<key>: {valueFrom: {secretKeyRef: {name, key}}}`` asks for a value
from a Secret of the namespace. The operator renders it as a worker env var from that Secret
(``secretKeyRef``: the kubelet reads the value, the operator never does) and writes into the
ConfigMap only the variable's name, ``{valueFrom: {env: ROGER_CALLBACK_<i>_<j>}}``, which
``roger.core.config.resolve_callback_config`` resolves in the job process. So a token is in
neither the ConfigMap, nor the status, nor a command line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from roger_operator.builders.model import CallbackResource

ENV_PREFIX = "ROGER_CALLBACK_"  # ROGER_*: the CRD keeps user env vars out of this space
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


@dataclass(frozen=True)
class SecretValue:
    """One config value from a Secret: which callback, which key, which env var, which Secret."""

    callback: str
    config_key: str
    env: str
    secret: str
    key: str


def _is_reference(value: Any) -> bool:
    return isinstance(value, Mapping) and "valueFrom" in value


def reference_problem(cb: CallbackResource) -> str | None:
    """What is wrong with a Callback's ``valueFrom`` values (None: nothing)."""
    for key, value in cb.config.items():
        if not _is_reference(value):
            continue
        source = value.get("valueFrom")
        ref = source.get("secretKeyRef") if isinstance(source, Mapping) else None
        if (
            set(value) != {"valueFrom"}
            or not isinstance(source, Mapping)
            or set(source) != {"secretKeyRef"}
            or not isinstance(ref, Mapping)
            or set(ref) != {"name", "key"}
        ):
            return (
                f"Callback {cb.name}: spec.config.{key}: a value from a Secret is "
                "{valueFrom: {secretKeyRef: {name: SECRET, key: KEY}}} and nothing else"
            )
        if not _DNS_SUBDOMAIN.match(str(ref["name"])) or not _SECRET_KEY.match(str(ref["key"])):
            return (
                f"Callback {cb.name}: spec.config.{key}: secretKeyRef needs a Secret name "
                "(lowercase DNS subdomain) and a key (letters, digits, '-', '_', '.')"
            )
    return None


def secret_values(callbacks: Sequence[CallbackResource]) -> list[SecretValue]:
    """Every value from a Secret, in callback order then config order (stable env names)."""
    out = []
    for i, cb in enumerate(callbacks):
        for j, (key, value) in enumerate(cb.config.items()):
            if _is_reference(value) and reference_problem(cb) is None:
                ref = value["valueFrom"]["secretKeyRef"]
                out.append(
                    SecretValue(
                        cb.name, key, f"{ENV_PREFIX}{i}_{j}", str(ref["name"]), str(ref["key"])
                    )
                )
    return out


def worker_config(index: int, cb: CallbackResource) -> dict[str, Any]:
    """The callback's ``config`` for the worker file: references become env var names."""
    out: dict[str, Any] = {}
    for j, (key, value) in enumerate(cb.config.items()):
        if _is_reference(value):
            out[key] = {"valueFrom": {"env": f"{ENV_PREFIX}{index}_{j}"}}
        else:
            out[key] = value
    return out


def env_entries(callbacks: Sequence[CallbackResource]) -> list[dict[str, Any]]:
    """The worker container's env vars for those values (``secretKeyRef``, never a value)."""
    return [
        {"name": v.env, "valueFrom": {"secretKeyRef": {"name": v.secret, "key": v.key}}}
        for v in secret_values(callbacks)
    ]
