"""The 3-node RabbitMQ cluster of hack/rabbitmq-cluster.sh, as tests see it.

The cluster's version follows the session's broker (tests/brokers.py): 3.10 nodes are
``roger-cN@localhost``, 4.0 nodes ``roger4-cN@localhost``. The script is the only way in:
tests start, stop and query nodes with it, as a person would.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from roger_devtools.chaos_cluster import cluster_script, cluster_script_process
from roger_devtools.management import management
from tests.brokers import BROKER

NODES = (1, 2, 3)


def script(*args: str, timeout: float = 300) -> str:
    return cluster_script(*args, version=BROKER.version, timeout=timeout)


def script_process(*args: str) -> subprocess.Popen[str]:
    """The script running, its log (stderr) a pipe: for a test that acts while it runs."""
    return cluster_script_process(*args, version=BROKER.version)


def node_name(n: int) -> str:
    return f"{BROKER.cluster_node_prefix}{n}@localhost"


def node_number(name: str) -> int:
    return int(name.split("@")[0].removeprefix(BROKER.cluster_node_prefix))


@dataclass(frozen=True)
class Cluster:
    urls: tuple[str, ...]  # node 1, 2, 3

    @property
    def url_list(self) -> str:
        """All three, comma-separated: what ROGER_AMQP_URL takes."""
        return ",".join(self.urls)

    def url(self, n: int) -> str:
        return self.urls[n - 1]

    def queue(self, name: str, via: int = 1) -> dict[str, Any]:
        """type, leader, members and online nodes of a queue, as rabbitmqctl reports them."""
        out = script(
            "ctl",
            str(via),
            "list_queues",
            "name",
            "type",
            "leader",
            "members",
            "online",
            "--formatter",
            "json",
        )
        for q in json.loads(out):
            if q["name"] == name:
                return dict(q)
        raise AssertionError(f"queue {name} not listed by {node_name(via)}")

    def stop_node(self, n: int) -> None:
        script("stop-node", str(n))

    def start_node(self, n: int) -> None:
        script("start-node", str(n))

    def management(self, path: str, via: int) -> Any:
        port = BROKER.cluster_management_base + via
        return management(path, api=f"http://127.0.0.1:{port}/api")
