"""How ``kubectl roger`` reads Kubernetes: the user's own kubectl, with the user's flags.

No credentials of its own: ``kubectl`` (found on ``PATH``, or ``$KUBECTL``) reads the
Partition and its broker Secret as the user, so Kubernetes RBAC decides; a refusal is one
line naming the object. Which Secret and partition id a Partition means is
``roger.core.partition_ref``, the operator's function too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from roger.cli.common import UsageError
from roger.core.amqp_urls import AmqpUrlError
from roger.core.partition_ref import (
    BrokerRef,
    PartitionRefError,
    broker_ref,
    secret_value,
    with_address,
)

RESOURCE = "partitions.roger.dev"
# kubectl's global flags that take a value, passed through to every kubectl call.
PASSED_FLAGS = (
    "--kubeconfig",
    "--context",
    "--cluster",
    "--user",
    "--token",
    "--server",
    "--as",
    "--as-group",
    "--as-uid",
    "--request-timeout",
)
BROKER_ADDRESS_ENV = "ROGER_BROKER_ADDRESS"


class KubeRefused(Exception):
    """kubectl could not read an object: one line saying which and why."""


@dataclass
class KubeFlags:
    """What the plugin takes out of the command line before the roger verb sees it."""

    passed: list[str] = field(default_factory=list)  # kubectl's own flags, as given
    namespace: str | None = None
    all_namespaces: bool = False
    broker_address: str | None = None


def split_kube_flags(argv: Sequence[str]) -> tuple[KubeFlags, list[str]]:
    """kubectl's flags (anywhere on the line, ``--flag v`` or ``--flag=v``) apart from the
    verb's arguments; after ``--`` everything is the verb's."""
    flags = KubeFlags()
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i + 1 :])
            break
        name, eq, inline = arg.partition("=")
        takes = name in PASSED_FLAGS or name in ("-n", "--namespace", "--broker-address")
        short_n = arg.startswith("-n") and len(arg) > 2 and not arg.startswith("--")
        if takes or short_n:
            if short_n:
                name, value = "-n", arg[2:].removeprefix("=")
            elif eq:
                value = inline
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise UsageError(f"{name} needs a value")
            if name in ("-n", "--namespace"):
                flags.namespace = value
            elif name == "--broker-address":
                flags.broker_address = value
            else:
                flags.passed += [name, value]
        elif arg in ("-A", "--all-namespaces"):
            flags.all_namespaces = True
        else:
            rest.append(arg)
        i += 1
    return flags, rest


def refusal(stderr: str, what: str) -> str:
    """One line for a failed read of ``what`` (e.g. ``Secret demo/rabbitmq``)."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    detail = lines[-1] if lines else "kubectl failed"
    if "(Forbidden)" in detail or " is forbidden: " in detail:
        who = detail.split(" is forbidden: ", 1)[-1]
        return f"cannot read {what}: Kubernetes RBAC forbids it ({who})"
    if "(NotFound)" in detail:
        return f"{what} not found"
    return f"cannot read {what}: {detail}"


class Kube:
    """The user's kubectl, with the user's flags."""

    def __init__(self, flags: KubeFlags) -> None:
        binary = os.environ.get("KUBECTL") or shutil.which("kubectl")
        if not binary:
            raise UsageError("kubectl not found on PATH (or set $KUBECTL)")
        self.base = [binary, *flags.passed]
        self.flags = flags

    def get(self, what: str, *args: str) -> Any:
        proc = subprocess.run(
            [*self.base, "get", *args, "-o", "json"], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise KubeRefused(refusal(proc.stderr, what))
        return json.loads(proc.stdout)

    def namespace_args(self, namespace: str | None = None) -> list[str]:
        ns = namespace or self.flags.namespace
        return ["-n", ns] if ns else []  # none: the context's namespace, as kubectl does

    def partition(self, name: str) -> dict[str, Any]:
        where = f" in namespace {self.flags.namespace}" if self.flags.namespace else ""
        return dict(self.get(f"Partition {name}{where}", RESOURCE, name, *self.namespace_args()))

    def partitions(self) -> list[dict[str, Any]]:
        scope = ["-A"] if self.flags.all_namespaces else self.namespace_args()
        return list(self.get("Partitions", RESOURCE, *scope)["items"])

    def broker_url(
        self, partition: dict[str, Any], secrets: dict[tuple[str, str], Any] | None = None
    ) -> tuple[BrokerRef, str]:
        """The Partition's partition id and broker URL, read from its Secret (``secrets``:
        Secrets already read, by namespace and name: Partitions often share one)."""
        meta = partition.get("metadata") or {}
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        try:
            ref = broker_ref(partition)
        except PartitionRefError as exc:
            raise KubeRefused(f"Partition {ns}/{name}: {exc}") from None
        what = f"Secret {ns}/{ref.secret_name} (the broker of Partition {name})"
        cache = {} if secrets is None else secrets
        if (ns, ref.secret_name) not in cache:
            cache[ns, ref.secret_name] = self.get(what, "secret", ref.secret_name, "-n", ns)
        secret = cache[ns, ref.secret_name]
        try:
            url = secret_value(secret, ref.secret_key)
            if url is None:
                raise PartitionRefError(f"it has no key {ref.secret_key}")
            address = self.flags.broker_address or os.environ.get(BROKER_ADDRESS_ENV)
            return ref, with_address(url, address) if address else url
        except (PartitionRefError, AmqpUrlError) as exc:
            raise KubeRefused(f"{what}: {exc}") from None
