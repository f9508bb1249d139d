"""Caller-chosen job ids (Roger's ``Job.create(module, args, id)``) on the real broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import roger
from roger.core import naming
from roger_devtools.polling import eventually
from roger_devtools.workers import Workers
from tests.integration.support import Broker, read_lines
from tests.integration.support import roger as roger_cli
from tests.jobs import basic

pytestmark = pytest.mark.integration


def test_enqueue_with_an_id_from_the_cli_and_the_client(
    amqp_url: str, client: roger.Client, broker: Broker, unique_name: str
) -> None:
    out = roger_cli(
        "enqueue", unique_name, "tests.jobs.basic:ok", "{}", "--id", "order-42", amqp_url=amqp_url
    )
    assert out.returncode == 0 and out.stdout.strip() == "order-42", out.stderr
    assert client.enqueue(unique_name, basic.ok, {}, id="invoice/7") == "invoice/7"
    got = broker.drain(naming.queue_name(unique_name, "default"))
    assert [(p.message_id, json.loads(b)["id"]) for p, b in got] == [
        ("order-42", "order-42"),
        ("invoice/7", "invoice/7"),
    ]
    bad = roger_cli(
        "enqueue", unique_name, "tests.jobs.basic:ok", "--id", "x" * 200, amqp_url=amqp_url
    )
    assert bad.returncode == 2 and "job id" in bad.stderr


def test_a_worker_runs_it_and_cancel_finds_it_by_that_id(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    workers.start(queues=["default=1"])
    client.enqueue(unique_name, basic.slow, {"sleep": 60, "out": str(out)}, id="blocker")
    eventually(lambda: out.exists(), 20, message="the blocker runs")
    client.enqueue(unique_name, basic.ok, {"n": "mine", "out": str(out)}, id="mine")
    client.cancel(unique_name, "blocker")
    eventually(
        lambda: ["ok", "mine"] in [r[:2] for r in read_lines(out)],
        30,
        message="the job with my id ran after the cancelled one",
    )
