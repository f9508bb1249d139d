"""Several broker addresses: an unreachable first one never stops the worker or the operator.

Runs against the single test broker (3.10 or 4.0) with a dead address in front of it; the
3-node cluster tests (test_rabbitmq_cluster.py) prove failover between live nodes.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from pika.exceptions import AMQPConnectionError

import roger
from roger_devtools.polling import eventually
from roger_devtools.ports import free_port
from roger_devtools.silent_server import silent_server
from roger_devtools.workers import Workers
from roger_operator.rabbit.broker import Broker, BrokerError, redact

pytestmark = pytest.mark.integration


def _dead_address(password: str = "guest") -> str:
    return f"amqp://guest:{password}@127.0.0.1:{free_port()}/%2F"  # nothing listens there


def test_the_worker_skips_an_unreachable_first_address(
    amqp_url: str, unique_name: str, tmp_path: Path
) -> None:
    urls = f"{_dead_address()},{amqp_url}"
    workers = Workers(urls, unique_name, tmp_path, jobs=["tests.jobs.basic"])
    try:
        worker = workers.start(ready=False).wait_ready(timeout=30)
        assert "cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:" in worker.output()
    finally:
        workers.stop_all()


def test_the_operator_connects_through_the_next_address(amqp_url: str, unique_name: str) -> None:
    broker = Broker(management_port=None)
    try:
        ok = broker.run(
            f"{_dead_address()},{amqp_url}",
            lambda ch: ch.queue_declare(unique_name, durable=True, arguments={}),
        )
        assert ok.method.queue == unique_name
        broker.run(amqp_url, lambda ch: ch.queue_delete(unique_name))
    finally:
        broker.close()


def test_operator_errors_hide_the_password_of_every_address() -> None:
    urls = f"{_dead_address('first-secret')},{_dead_address('second-secret')}"
    broker = Broker(management_port=None, timeout=2)
    with pytest.raises(BrokerError) as info:
        broker.run(urls, lambda ch: None)
    text = str(info.value) + redact(f"x {urls} y first-secret second-secret", urls)
    assert "first-secret" not in text and "second-secret" not in text


def test_the_client_skips_an_unreachable_first_address(
    amqp_url: str, unique_name: str, broker: Any
) -> None:
    with roger.Client(f"{_dead_address()},{amqp_url}") as client:
        client.enqueue(unique_name, "tests.jobs.basic:ok", {"n": 1})
    assert broker.count(f"{unique_name}-default") == 1


def test_a_hung_first_address_is_skipped_by_the_client_and_the_operator(
    amqp_url: str, unique_name: str
) -> None:
    """A broker that accepts and never answers fails its handshake (pika's public
    ``AMQPConnectionError``, never an internal type) and the next address is used."""
    with silent_server() as hung:
        quick = f"{hung.amqp_url}?stack_timeout=2"  # pika's default waits 15 s
        with roger.Client(quick) as alone, pytest.raises(AMQPConnectionError):
            alone.pause(unique_name, "default")
        with roger.Client(f"{quick},{amqp_url}") as client:
            client.pause(unique_name, "default")
            assert client.info(unique_name, queues=("default",)).paused == ["default"]
            client.resume(unique_name, "default")
        broker = Broker(management_port=None, timeout=2)
        try:
            with pytest.raises(BrokerError, match=r"did not answer|Timeout"):
                broker.claim(hung.amqp_url, unique_name, "ns/owner")
            broker.claim(f"{hung.amqp_url},{amqp_url}", unique_name, "ns/owner")
            assert broker.release(amqp_url, unique_name, "ns/owner")
        finally:
            broker.close()
        assert hung.accepted >= 3


def test_a_worker_that_never_reached_its_broker_stops_cleanly(
    unique_name: str, tmp_path: Path
) -> None:
    """SIGTERM while the connection is still opening (a hung broker): exit 0, no traceback."""
    with silent_server() as hung:
        workers = Workers(hung.amqp_url, unique_name, tmp_path, jobs=["tests.jobs.basic"])
        worker = workers.start(ready=False)
        try:
            eventually(lambda: hung.accepted, 30, message="the worker connects")
            worker.signal(signal.SIGTERM)
            assert worker.wait(30) == 0, worker.output()
            assert "Traceback" not in worker.output()
        finally:
            workers.stop_all()
