"""The chart's tenant ClusterRoles on the real API server: they pass a server-side dry run,
and the aggregation controller adds them to the built-in ``edit``/``admin`` and ``view``
roles, so a RoleBinding to ``edit`` lets a tenant manage Partitions and Callbacks (never
their status), and ``view`` only reads them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import yaml

from roger_devtools.polling import eventually
from tests.chart import of_kind, render
from tests.e2e.observe_support import apply_crds
from tests.helpers import TEST_TAG, Kubectl

pytestmark = pytest.mark.e2e


@pytest.fixture
def kubectl(kubectl_bin: str, kubeconfig: str) -> Kubectl:
    return Kubectl(kubectl_bin, kubeconfig)


@pytest.fixture
def tenant_roles(kubectl: Kubectl) -> Iterator[list[str]]:
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
    yield names
    kubectl.run("delete", "clusterrole", *names, "--wait=false", check=False)


def _can(kubectl: Kubectl, user: str, verb: str, resource: str, namespace: str) -> bool:
    resource, _, sub = resource.partition("/")
    flags = [f"--subresource={sub}"] if sub else []
    args = ("auth", "can-i", "--as", user, verb, resource, "-n", namespace, *flags)
    return kubectl.run(*args, check=False).stdout.strip() == "yes"


def test_tenant_roles_aggregate_into_the_built_in_roles(
    kubectl: Kubectl, kubeconfig: str, namespace: str, tenant_roles: list[str]
) -> None:
    assert sorted(n.rsplit("-", 1)[1] for n in tenant_roles) == ["edit", "view"]
    apply_crds(kubectl)
    for who, role in (("tenant", "edit"), ("auditor", "view")):
        kubectl.run("-n", namespace, "create", "rolebinding", who, f"--clusterrole={role}",
                    f"--user={who}")  # fmt: skip

    def aggregated() -> bool:
        return _can(kubectl, "tenant", "create", "partitions.roger.dev", namespace) and _can(
            kubectl, "auditor", "list", "callbacks.roger.dev", namespace
        )

    eventually(aggregated, timeout=30, message="tenant roles aggregated into edit and view")
    for verb in ("create", "update", "delete", "get"):
        for resource in ("partitions.roger.dev", "callbacks.roger.dev"):
            assert _can(kubectl, "tenant", verb, resource, namespace), (verb, resource)
    assert _can(kubectl, "tenant", "update", "partitions.roger.dev/scale", namespace)
    assert not _can(kubectl, "tenant", "update", "partitions.roger.dev/status", namespace)
    assert not _can(kubectl, "tenant", "create", "partitions.roger.dev", "default")
    assert _can(kubectl, "auditor", "get", "partitions.roger.dev", namespace)
    for verb in ("create", "update", "delete"):
        assert not _can(kubectl, "auditor", verb, "partitions.roger.dev", namespace), verb
