"""Which ``kubectl get`` calls the tests' API fast path answers (tests/kube_api.py)."""

from __future__ import annotations

import pytest

from tests.kube_api import parse

pytestmark = pytest.mark.unit


def _get(*args: str) -> tuple[str, ...]:
    return ("get", *args, "-o", "json")


def test_a_named_object_in_a_namespace() -> None:
    got = parse(_get("-n", "ns1", "partition", "p"))
    assert got is not None
    assert got.path == "/apis/roger.dev/v1alpha1/namespaces/ns1/partitions/p"
    assert parse(_get("partition", "p", "-n", "ns1")) == got  # flags anywhere, as kubectl


def test_lists_selectors_all_namespaces_and_cluster_scope() -> None:
    pods = parse(_get("pods", "-A", "-l", "app=x"))
    assert pods is not None and (pods.path, pods.selector) == ("/api/v1/pods", "app=x")
    events = parse(_get("-n", "a", "events.events.k8s.io"))
    assert events is not None and events.path == "/apis/events.k8s.io/v1/namespaces/a/events"
    crd = parse(_get("-n", "a", "crd", "partitions.roger.dev"))
    assert crd is not None and crd.path == (
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/partitions.roger.dev"
    )
    scale = parse(_get("-n", "a", "partition", "p", "--subresource", "scale"))
    assert scale is not None and scale.path.endswith("/partitions/p/scale")
    assert parse(_get("deployments")) == parse(_get("-n", "default", "deployment"))


@pytest.mark.parametrize(
    "args",
    [
        ("get", "pods"),  # not JSON
        ("get", "pods", "-o", "yaml"),
        ("apply", "-f", "x", "-o", "json"),
        _get("widget", "w"),  # a resource not in the table
        _get("schedules,partitions"),  # several kinds
        _get("deployment/roger-p"),  # kind/name
        _get("pods", "--field-selector", "x=y"),  # a flag not answered
        _get("-A", "partition", "p"),  # kubectl refuses this itself
        _get("pods", "a", "-l", "x=y"),
        _get("pods", "a", "b"),
    ],
)
def test_everything_else_goes_to_kubectl(args: tuple[str, ...]) -> None:
    assert parse(args) is None
