"""The real node of hack/node.sh as the e2e test and the demo address it: its name (also its
bridge address, where Pods reach the broker and the API server), how a Pod asks for it, and
a Partition whose worker Pods run there as real containers."""

from __future__ import annotations

from typing import Any, Final

NODE: Final = "10.213.0.1"  # hack/node.sh: the node's name and its bridge address
# hack/node.sh labels and taints the node so that only Pods that ask for it land there.
ON_THE_NODE: Final[dict[str, Any]] = {
    "nodeSelector": {"roger.dev/real-node": "true"},
    "tolerations": [{"key": "roger.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
}
MEMORY_LIMIT: Final = 256 * 2**20  # a worker Pod's limit: the example crunch_numbers job exceeds it


def bridge_url(amqp_url: str, host: str) -> str:
    """``amqp_url`` (on ``host``, loopback) as a Pod on the node reaches it."""
    return amqp_url.replace(f"@{host}:", f"@{NODE}:")


def worker_partition(name: str, namespace: str, image: str) -> dict[str, Any]:
    """A Partition of the example jobs and the audit Callback, its one worker Pod on the node
    (image from the node's own store, never pulled), one job process, 256 MiB."""
    return {
        "apiVersion": "roger.dev/v1alpha1",
        "kind": "Partition",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "amqp": {"secretRef": {"name": "rabbitmq", "key": "url"}},
            "worker": {
                "image": image,
                "imagePullPolicy": "Never",
                "replicas": 1,
                "jobProcesses": 1,
                "resources": {"limits": {"memory": "256Mi"}, "requests": {"memory": "64Mi"}},
                "podTemplate": ON_THE_NODE,
            },
            "jobs": ["myapp.jobs"],
            "callbacks": ["audit"],
            "queues": [
                {"name": "default", "maxWorkers": 2},
                {"name": "email", "maxWorkers": 1},
                {"name": "reports", "maxWorkers": 1},
            ],
            # crunch_numbers holds too much for 2 s: OOM-killed at least once, then the
            # second retry (7 s in) fits and succeeds.
            "retry": {"levels": [2, 5]},
        },
    }
