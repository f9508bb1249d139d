"""Which RabbitMQ the test session runs against: 3.10 (the host's, default) or 4.0.

``ROGER_TEST_RABBITMQ=4.0`` (``make test-integration RABBITMQ=4.0``) selects the 4.0 broker
that hack/rabbitmq4.sh runs from a trixie root; ``ROGER_TEST_AMQP_URL`` still overrides the
URL. Tests that restart the broker or read its management API take the script and ports
from here, so one switch moves the whole tier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class BrokerTarget:
    version: str
    script: str  # up|down|status, relative to the repository root
    amqp_port: int
    management_port: int
    # The 3-node cluster of this version (hack/rabbitmq-cluster.sh): node N is
    # f"{cluster_node_prefix}{N}@localhost" with management port cluster_management_base + N.
    cluster_node_prefix: str
    cluster_management_base: int

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def management_api(self) -> str:
        return f"http://127.0.0.1:{self.management_port}/api"


TARGETS = {
    "3.10": BrokerTarget("3.10", "hack/rabbitmq.sh", 5672, 15672, "roger-c", 15680),
    "4.0": BrokerTarget("4.0", "hack/rabbitmq4.sh", 5673, 15673, "roger4-c", 15880),
}


def selected() -> BrokerTarget:
    version = os.environ.get("ROGER_TEST_RABBITMQ", "3.10")
    if version not in TARGETS:
        raise RuntimeError(f"ROGER_TEST_RABBITMQ={version!r}: expected one of {sorted(TARGETS)}")
    return TARGETS[version]


BROKER = selected()
