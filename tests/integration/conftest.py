"""Fixtures shared by the integration tests (real RabbitMQ).

``workers`` runs plain ``roger worker`` processes on the tests' job modules (``tests.jobs``);
``partition_workers`` runs them on a generated ``pjobs`` module whose jobs and callback
``recorder`` reads back, for the partition-wide features. Both are
``roger_devtools.workers.Workers``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

import roger
from roger_devtools.recording import Recorder, recording_workers
from roger_devtools.workers import Workers
from tests.integration import cluster_support
from tests.integration.support import Broker


@pytest.fixture
def conn(amqp_url: str) -> Iterator[pika.BlockingConnection]:
    """A blocking connection to the test broker, for tests of broker-level primitives."""
    c = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def broker(amqp_url: str, unique_name: str) -> Iterator[Broker]:
    b = Broker(amqp_url)
    yield b
    b.delete_partition(unique_name)
    b.close()


@pytest.fixture
def workers(amqp_url: str, unique_name: str, tmp_path: Path) -> Iterator[Workers]:
    ws = Workers(amqp_url, unique_name, tmp_path, jobs=["tests.jobs.basic"])
    yield ws
    ws.stop_all()


@pytest.fixture
def recording(
    tmp_path: Path, amqp_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Workers, Recorder]]:
    ws, recorder = recording_workers(tmp_path, amqp_url, unique_name)
    monkeypatch.syspath_prepend(str(tmp_path))  # the client computes keys from pjobs
    yield ws, recorder
    ws.stop_all()


@pytest.fixture
def partition_workers(recording: tuple[Workers, Recorder]) -> Workers:
    return recording[0]


@pytest.fixture
def recorder(recording: tuple[Workers, Recorder]) -> Recorder:
    return recording[1]


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
