"""The chart's tenant ClusterRoles on the real API server: they pass a server-side dry run,
and the aggregation controller adds them to the built-in ``edit``/``admin`` and ``view``
roles, so a RoleBinding to ``edit`` lets a tenant manage Partitions and Callbacks (never
their status), and ``view`` only reads them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from roger_devtools.polling import eventually
from tests.e2e.rbac_support import can
from tests.e2e.rbac_support import tenant_roles as installed_tenant_roles
from tests.helpers import Kubectl

pytestmark = pytest.mark.e2e


@pytest.fixture
def tenant_roles(kubectl: Kubectl) -> Iterator[list[str]]:
    with installed_tenant_roles(kubectl) as names:
        yield names


def test_tenant_roles_aggregate_into_the_built_in_roles(
    kubectl: Kubectl, kubeconfig: str, namespace: str, tenant_roles: list[str]
) -> None:
    assert sorted(n.rsplit("-", 1)[1] for n in tenant_roles) == ["edit", "view"]
    for who, role in (("tenant", "edit"), ("auditor", "view")):
        kubectl.run("-n", namespace, "create", "rolebinding", who, f"--clusterrole={role}",
                    f"--user={who}")  # fmt: skip

    def aggregated() -> bool:
        return can(kubectl, "tenant", "create", "partitions.roger.dev", namespace) and can(
            kubectl, "auditor", "list", "callbacks.roger.dev", namespace
        )

    eventually(aggregated, timeout=30, message="tenant roles aggregated into edit and view")
    for verb in ("create", "update", "delete", "get"):
        for resource in ("partitions.roger.dev", "callbacks.roger.dev"):
            assert can(kubectl, "tenant", verb, resource, namespace), (verb, resource)
    assert can(kubectl, "tenant", "update", "partitions.roger.dev/scale", namespace)
    assert not can(kubectl, "tenant", "update", "partitions.roger.dev/status", namespace)
    assert not can(kubectl, "tenant", "create", "partitions.roger.dev", "default")
    assert can(kubectl, "auditor", "get", "partitions.roger.dev", namespace)
    for verb in ("create", "update", "delete"):
        assert not can(kubectl, "auditor", verb, "partitions.roger.dev", namespace), verb
