"""The worker's Role (``WORKER_RULES``) is enough for Events, and nothing less breaks jobs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from roger.core.rbac import WORKER_RULES
from tests.e2e.kube_events_support import (
    create_partition,
    lifecycle,
    list_events,
    make_observer,
)
from tests.helpers import Kubectl

pytestmark = pytest.mark.e2e


def impersonating_kubeconfig(kubeconfig: str, user: str, path: Path) -> str:
    """A copy of the admin kubeconfig whose user acts as ``user`` (kubeconfig ``as``)."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    for u in config["users"]:
        u["user"]["as"] = user
    path.write_text(yaml.safe_dump(config))
    return str(path)


def service_account(kubectl: Kubectl, namespace: str, name: str, rules: list[dict]) -> None:
    objects = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}]
    if rules:
        objects += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": name},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        ]
    kubectl.apply(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}), "-n", namespace
    )


def test_worker_rules_are_enough(
    kubectl: Kubectl, kubeconfig: str, namespace: str, tmp_path: Path
) -> None:
    create_partition(kubectl, namespace, "tenant-rbac")
    service_account(kubectl, namespace, "roger-worker", [dict(r) for r in WORKER_RULES])
    user = f"system:serviceaccount:{namespace}:roger-worker"
    as_worker = impersonating_kubeconfig(kubeconfig, user, tmp_path / "kubeconfig")
    # Least privilege, checked by the API server itself.
    who = Kubectl(kubectl.base[0], kubeconfig, as_user=user)
    assert who.run("auth", "can-i", "create", "events", "-n", namespace).stdout.strip() == "yes"
    assert who.run("auth", "can-i", "patch", "events", "-n", namespace).stdout.strip() == "yes"
    for verb, what in (("list", "events"), ("delete", "events"), ("update", "partitions")):
        can = who.run("auth", "can-i", verb, what, "-n", namespace, check=False).stdout.strip()
        assert can == "no", (verb, what)

    obs = make_observer("tenant-rbac", namespace, as_worker)
    for i in range(50):
        obs.observe(lifecycle("on_error" if i % 5 == 0 else "after_run", "tenant-rbac", i))
    obs.close(10.0)
    assert obs.dropped == {} and obs.emitted == 50
    events = list_events(kubectl, namespace, "tenant-rbac")
    assert sorted((e["reason"], e["count"]) for e in events) == [
        ("JobFailed", 10),
        ("JobSucceeded", 40),
    ]


@pytest.mark.exclusive("bounds observe() latency at 10 ms: other tests' load distorts it")
@pytest.mark.parametrize("rules", ["none", "partitions-only"])
def test_forbidden_drops_events_and_jobs_go_on(
    kubectl: Kubectl, kubeconfig: str, namespace: str, tmp_path: Path, rules: str
) -> None:
    create_partition(kubectl, namespace, "tenant-denied")
    granted = (
        []
        if rules == "none"
        else [{"apiGroups": ["roger.dev"], "resources": ["partitions"], "verbs": ["get"]}]
    )
    service_account(kubectl, namespace, "no-events", granted)
    user = f"system:serviceaccount:{namespace}:no-events"
    denied = impersonating_kubeconfig(kubeconfig, user, tmp_path / "kubeconfig")
    registry = CollectorRegistry()
    obs = make_observer("tenant-denied", namespace, denied, registry)

    def forbidden() -> float | None:
        return registry.get_sample_value(
            "roger_kube_events_dropped_total", {"partition": "tenant-denied", "cause": "forbidden"}
        )

    # Jobs go on meanwhile: 500 lifecycle events at least, and on until the API's refusal
    # has been seen (its first answer may take seconds on a loaded machine, or time out
    # first: what arrives before the refusal is dropped under that other cause).
    took: list[float] = []
    sent, deadline = 0, time.monotonic() + 60
    while sent < 500 or (not forbidden() and time.monotonic() < deadline):
        t0 = time.perf_counter()
        obs.observe(lifecycle("after_run", "tenant-denied", sent))
        took.append(time.perf_counter() - t0)
        sent += 1
        time.sleep(0.002)
    obs.close(2.0)
    assert forbidden(), obs.stats()
    assert obs.observed == sent and obs.emitted == 0
    assert sum(obs.dropped.values()) == sent
    # Observing never waits for the API (whose answers took 1 ms to seconds here): the
    # slowest 1 % of calls stays far below one request; a lone scheduler stall may not.
    took.sort()
    assert took[int(len(took) * 0.99)] < 0.01 and took[-1] < 0.5, (took[-5:], len(took))
    assert list_events(kubectl, namespace, "tenant-denied") == []
