"""A job that holds its delivery past the broker's consumer_timeout (issue 12).

On a node of its own with a 4 s consumer_timeout checked every second
(hack/rabbitmq-timeout.sh; RabbitMQ 3.10 or 4.0, as the tier under test), a worker runs a
long job in ``default`` while a chain of short jobs keeps ``mail`` busy. The broker closes
``default``'s channel and has its deliveries again. Promised: the long job never runs
twice at once (it is stopped here, and its redelivery is charged: buried, as it is not
retryable, with the error kind ``consumer_timeout``), the jobs of ``mail`` each run exactly
once (no reconnect: their channel is untouched), and the worker process is the same one.
Before the fix the worker dropped its connection: the long job ran again beside itself
and the mail job in flight ran twice.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

import roger
from roger.core import metric_names, naming
from roger_devtools.polling import eventually
from roger_devtools.recording import recording_workers
from tests.brokers import BROKER
from tests.integration.support import ROOT, Broker, queue_names

pytestmark = pytest.mark.integration
TIMEOUT_S = 4.0
MAIL_JOBS = 8  # 1.5 s each, one at a time: mail is busy for 12 s from the start


@pytest.fixture(scope="module")
def short_timeout_url() -> Iterator[str]:
    env = {
        **os.environ,
        "ROGER_TIMEOUT_RABBITMQ": BROKER.version,
        "ROGER_CONSUMER_TIMEOUT_MS": str(int(TIMEOUT_S * 1000)),
    }
    script = ["bash", "hack/rabbitmq-timeout.sh"]
    subprocess.run([*script, "up"], cwd=ROOT, env=env, check=True, timeout=600)
    url = subprocess.run(
        [*script, "url"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    yield url
    subprocess.run([*script, "down"], cwd=ROOT, env=env, check=False, timeout=300)


def test_a_job_past_the_consumer_timeout_never_runs_twice_and_other_queues_go_on(
    short_timeout_url: str, unique_name: str, tmp_path: Path
) -> None:
    url, p = short_timeout_url, unique_name
    workers, recorder = recording_workers(tmp_path, url, p)
    broker = Broker(url)
    try:
        w = workers.start(["default=2", "mail=1"])
        pid = w.proc.pid
        with roger.Client(url) as client:
            client.enqueue(p, "pjobs:sleepy", {"tag": "long", "s": 3600})
            eventually(lambda: recorder.events("start", id="long"), 20)
            for i in range(MAIL_JOBS):
                client.enqueue(p, "pjobs:sleepy", {"tag": f"m{i}", "s": 1.5}, queue="mail")
            eventually(
                lambda: all(recorder.events("end", id=f"m{i}") for i in range(MAIL_JOBS)),
                60,
                message=workers.logs(),
            )
            buried = naming.buried_queue_name(p, "default")
            eventually(lambda: broker.count(buried) == 1, 30, message=workers.logs())
        time.sleep(TIMEOUT_S + 2)  # a second close, or a rerun, would show by now

        assert len(recorder.events("start", id="long")) == 1, workers.logs()
        for i in range(MAIL_JOBS):
            assert len(recorder.events("start", id=f"m{i}")) == 1, (i, workers.logs())
        [(props, _body)] = broker.peek(buried)
        assert props.headers["x-roger-error-kind"] == "consumer_timeout"
        assert broker.count(naming.queue_name(p, "default")) == 0
        assert w.proc.poll() is None and w.proc.pid == pid
        assert w.metric(metric_names.BROKER_RECONNECTS + "_total") == 0, workers.logs()
        assert w.metric(metric_names.CONSUMER_TIMEOUTS + "_total", queue="default") == 1
        assert w.metric(metric_names.CONSUMER_TIMEOUTS + "_total", queue="mail") == 0
    finally:
        workers.stop_all()
        broker.delete(*queue_names(p, "default", (1,)), *queue_names(p, "mail", (1,)))
        broker.close()


def _closed_within(
    url: str,
    queue: str,
    seconds: float,
    queue_args: dict[str, Any] | None = None,
    consumer_args: dict[str, Any] | None = None,
) -> bool:
    """Consume one message of a fresh quorum queue without acknowledging it: whether the
    broker closes the channel for its consumer timeout within ``seconds``."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.queue_delete(queue)
        declared = {"x-queue-type": "quorum", **(queue_args or {})}
        ch.queue_declare(queue, durable=True, arguments=declared)
        ch.basic_publish("", queue, b"held", pika.BasicProperties(delivery_mode=2))
        ch.basic_consume(queue, lambda *_: None, arguments=consumer_args or {})
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and ch.is_open:
            conn.process_data_events(0.2)
        return bool(ch.is_closed)  # nothing else on this node closes it
    finally:
        with contextlib.suppress(Exception):
            conn.channel().queue_delete(queue)
        conn.close()


def test_which_consumer_timeout_settings_the_broker_honours(
    short_timeout_url: str, unique_name: str
) -> None:
    """Why the worker cannot lengthen the timeout for its own jobs (docs/reliability.md):
    a longer ``x-consumer-timeout`` consumer argument is ignored by 3.10.8 and 4.0.5 alike;
    the queue argument is honoured by 4.0 (3.12+), ignored by 3.10; and the queues are the
    operator's to declare (a redeclaration with another value changes nothing)."""
    longer = {"x-consumer-timeout": 60_000}
    assert _closed_within(short_timeout_url, unique_name, 10, consumer_args=longer)
    by_queue = _closed_within(short_timeout_url, unique_name, 10, queue_args=longer)
    assert by_queue is (BROKER.version == "3.10"), BROKER.version
