"""Shared pieces of the Kubernetes Events e2e tests: the Partition CRD, objects, listing."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from roger.core.config import parse_config
from roger.core.hooks import HookName
from roger.core.lifecycle import LifecycleEvent
from roger.kube import KubeEventsObserver, observer_from_config
from roger.kube.client import KubeEventsApi
from tests.helpers import Kubectl, eventually

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "partitions.roger.dev.yaml"

# Only used when the project's CRD file is not there (yet).
MINIMAL_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: partitions.roger.dev}
    spec:
      group: roger.dev
      scope: Namespaced
      names: {plural: partitions, singular: partition, kind: Partition}
      versions:
      - name: v1alpha1
        served: true
        storage: true
        schema:
          openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
    """
)


def ensure_partition_crd(kubectl: Kubectl) -> None:
    manifest = CRD_FILE.read_text() if CRD_FILE.exists() else MINIMAL_CRD
    if kubectl.run("get", "crd", "partitions.roger.dev", check=False).returncode != 0:
        kubectl.apply(manifest)
    kubectl.run("wait", "--for=condition=Established", "crd/partitions.roger.dev", "--timeout=60s")


def create_partition(kubectl: Kubectl, namespace: str, name: str) -> str:
    """A Partition object (spec valid for the project's CRD); returns its uid."""
    manifest = json.dumps(
        {
            "apiVersion": "roger.dev/v1alpha1",
            "kind": "Partition",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "amqp": {"secretRef": {"name": "absent"}},
                "worker": {"image": "roger-worker:e2e", "replicas": 0},
                "jobs": ["tests.jobs"],
                "queues": [{"name": "default", "maxWorkers": 1}],
            },
        }
    )
    kubectl.apply(manifest)
    obj = kubectl.get_json("partition", name, "-n", namespace)
    return str(obj["metadata"]["uid"])


def list_events(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    items = kubectl.get_json("events", "-n", namespace)["items"]
    return [
        e
        for e in items
        if e["involvedObject"].get("kind") == "Partition" and e["involvedObject"]["name"] == name
    ]


def worker_config(partition: str, namespace: str, **kube: Any) -> Any:
    return parse_config(
        {
            "partition": partition,
            "queues": {"default": 1},
            "jobs": ["tests.jobs"],
            "kube": {"namespace": namespace, **kube},
        }
    )


def make_observer(
    partition: str,
    namespace: str,
    kubeconfig: str,
    registry: CollectorRegistry | None = None,
    **kube: Any,
) -> KubeEventsObserver:
    obs = observer_from_config(
        worker_config(partition, namespace, **kube),
        env={"POD_NAME": "e2e-pod-0"},
        api=KubeEventsApi.from_environment(kubeconfig),
        registry=registry or CollectorRegistry(),
    )
    assert obs is not None
    return obs


def lifecycle(
    hook: HookName,
    partition: str,
    i: int,
    job: str = "tests.jobs.Send",
    error: tuple[str, str] | None = None,
) -> LifecycleEvent:
    if error is None and hook in ("on_error", "on_buried"):
        error = ("ValueError", f"boom {i}")
    return LifecycleEvent(
        hook=hook,
        partition=partition,
        queue="default",
        job_id=f"job-{i:06d}",
        job_name=job,
        retry_count=i % 3,
        at=time.time(),
        error=error,
        duration=0.01 if hook in ("after_run", "on_error", "on_buried") else None,
    )


def wait_events(
    kubectl: Kubectl, namespace: str, name: str, n: int, timeout: float = 30.0
) -> list[dict[str, Any]]:
    return eventually(
        lambda: (ev := list_events(kubectl, namespace, name)) and len(ev) >= n and ev,
        timeout=timeout,
        message=f"{n} Events about Partition {name}",
    )
