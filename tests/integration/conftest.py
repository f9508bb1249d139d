"""Fixtures shared by the integration tests (real RabbitMQ).

``workers`` runs plain ``roger worker`` processes (tests/integration/worker_harness.py);
``partition_workers`` runs them on a generated ``pjobs`` module with a recorder
(tests/integration/partition_support.py), for the partition-wide features.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import roger
from tests.integration import cluster_support, partition_support
from tests.integration.worker_harness import Broker, Workers


@pytest.fixture
def broker(amqp_url: str, unique_name: str) -> Iterator[Broker]:
    b = Broker(amqp_url)
    yield b
    b.delete_partition(unique_name)
    b.close()


@pytest.fixture
def workers(amqp_url: str, unique_name: str, tmp_path: Path) -> Iterator[Workers]:
    ws = Workers(amqp_url, unique_name, tmp_path)
    yield ws
    ws.stop_all()


@pytest.fixture
def partition_workers(
    tmp_path: Path, amqp_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[partition_support.Workers]:
    w = partition_support.Workers(tmp_path, amqp_url, unique_name)
    monkeypatch.syspath_prepend(str(tmp_path))  # the client computes keys from pjobs
    yield w
    w.stop_all()


@pytest.fixture
def client(amqp_url: str) -> Iterator[roger.Client]:
    with roger.Client(amqp_url) as c:
        yield c


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> Iterator[cluster_support.Cluster]:
    """The 3-node cluster (hack/rabbitmq-cluster.sh up); every node runs again afterwards."""
    cluster_support.script("up", timeout=600)
    urls = tuple(cluster_support.script("urls").strip().split(","))
    c = cluster_support.Cluster(urls)
    yield c
    cluster_support.script("up", timeout=600)  # a test that stopped a node left it stopped
