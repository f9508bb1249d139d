"""The chart's tenant ClusterRoles (aggregated into ``edit`` and ``view``) on the local
cluster, and ``kubectl auth can-i`` as someone else: for the tests of who may do what."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import yaml

from tests.chart import of_kind, render
from tests.helpers import TEST_TAG, Kubectl


@contextmanager
def tenant_roles(kubectl: Kubectl) -> Iterator[list[str]]:
    """The chart's tenant roles under a name prefix of their own (deleted afterwards)."""
    prefix = f"{TEST_TAG}-roles-{uuid.uuid4().hex[:6]}"
    roles = [
        r
        for r in of_kind(render(f"rbac.tenantRoles.namePrefix={prefix}"), "ClusterRole")
        if r["metadata"]["name"].startswith(prefix)
    ]
    text = yaml.safe_dump_all(roles)
    kubectl.run("apply", "--dry-run=server", "-f", "-", stdin=text)
    kubectl.apply(text)
    names = [r["metadata"]["name"] for r in roles]
    try:
        yield names
    finally:
        kubectl.run("delete", "clusterrole", *names, "--wait=false", check=False)


def can(kubectl: Kubectl, user: str, verb: str, resource: str, namespace: str) -> bool:
    resource, _, sub = resource.partition("/")
    flags = [f"--subresource={sub}"] if sub else []
    args = ("auth", "can-i", "--as", user, verb, resource, "-n", namespace, *flags)
    return kubectl.run(*args, check=False).stdout.strip() == "yes"
