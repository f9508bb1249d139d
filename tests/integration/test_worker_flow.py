"""The worker on the real broker: topology, concurrency, acks, retries, burial, hooks."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path

import pytest

import roger
from roger_devtools.polling import eventually
from roger_devtools.workers import Workers
from tests.integration.support import (
    Broker,
    management,
    queue_names,
    read_json_lines,
    read_lines,
)
from tests.jobs import basic

pytestmark = pytest.mark.integration


def test_topology_is_durable_quorum_with_ttl_retry_queues(
    workers: Workers, unique_name: str
) -> None:
    workers.start(queues=["default=1"], extra=["--buried-max-length", "7"])
    base = f"{unique_name}-default"
    info = {q["name"]: q for q in management("/queues/%2F") if q["name"].startswith(base)}
    assert set(info) == set(queue_names(unique_name))
    for q in info.values():
        assert q["durable"] and q["type"] == "quorum", q
    for s in (1, 2):
        args = info[f"{base}.retry.{s}"]["arguments"]
        assert args["x-message-ttl"] == s * 1000
        assert args["x-dead-letter-exchange"] == ""
        assert args["x-dead-letter-routing-key"] == base
        assert args["x-dead-letter-strategy"] == "at-least-once"
        assert args["x-overflow"] == "reject-publish"
    # No length bound among .buried's arguments (RabbitMQ cannot change one in place): the
    # worker keeps the bound itself, the operator with a policy (queue_plan).
    assert "x-max-length" not in info[f"{base}.buried"]["arguments"]


def test_worker_uses_a_buried_queue_that_carries_a_bound_from_an_earlier_version(
    workers: Workers, broker: Broker, amqp_url: str, unique_name: str
) -> None:
    """``.buried`` declared with ``x-max-length`` (as earlier versions did) is used as it
    is: the worker becomes ready (no 406) and buries into it."""
    buried = f"{unique_name}-default.buried"
    legacy = {"x-queue-type": "quorum", "x-max-length": 5}
    broker.ch.queue_declare(buried, durable=True, arguments=legacy)
    worker = workers.start(queues=["default=1"], extra=["--buried-max-length", "7"])
    with roger.Client(amqp_url) as client:
        client.enqueue(unique_name, basic.fails_once_not_retryable, {}, queue="default")
    eventually(lambda: broker.count(buried) == 1, timeout=30, message="buried into it")
    assert worker.get("/readyz")[0] == 200
    info = {q["name"]: q for q in management("/queues/%2F") if q["name"] == buried}
    assert info[buried]["arguments"]["x-max-length"] == 5  # untouched


def test_enqueue_is_persistent_and_confirmed(
    client: roger.Client, broker: Broker, unique_name: str
) -> None:
    job_id = client.enqueue(unique_name, basic.ok, {"n": 1})
    [(props, body)] = broker.drain(f"{unique_name}-default")
    assert props.delivery_mode == 2
    assert props.message_id == job_id
    assert props.app_id == unique_name
    assert props.content_type == "application/json"
    assert props.type == "tests.jobs.basic:ok"
    data = json.loads(body)
    assert data["id"] == job_id and data["args"] == {"n": 1} and data["retry_count"] == 0
    assert data["name"] == "tests.jobs.basic:ok" and data["queue"] == "default"


def test_concurrency_is_max_workers_and_ack_waits_for_outcome(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    workers.start(queues=["default=3"])
    for n in range(9):
        client.enqueue(unique_name, basic.ok, {"out": str(out), "n": n, "sleep": 1.0})
    # While the first three run, six are ready and three are unacknowledged (prefetch 3).
    eventually(lambda: broker.count(f"{unique_name}-default") == 6, 10, message="6 ready")
    time.sleep(0.3)
    assert broker.count(f"{unique_name}-default") == 6
    eventually(lambda: len(read_lines(out)) == 9, 20, message="9 jobs done")
    ends = sorted(float(r[-1]) for r in read_lines(out))
    # three at a time, about one second each: three waves
    assert ends[-1] - ends[0] >= 1.5, ends
    waves = [ends[i + 3] - ends[i] for i in range(6)]
    assert min(waves) > 0.5, ends


def test_success_runs_hooks_in_order_with_state(
    workers: Workers, client: roger.Client, unique_name: str, tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks"
    w = workers.start(callbacks=["tests.jobs.callbacks:Recorder"], hooks_file=hooks)
    job_id = client.enqueue(unique_name, basic.ok, {"n": 1})
    eventually(lambda: len(read_json_lines(hooks)) == 2, 15, message="after_run")
    before, after = read_json_lines(hooks)
    assert before["hook"] == "before_run" and before["id"] == job_id
    assert after == {
        "hook": "after_run",
        "id": job_id,
        "result": "fine",
        "state": {"token": job_id},
    }
    eventually(
        lambda: w.metric("roger_job_outcomes_total", outcome="succeeded") == 1,
        15,
        message="metrics",
    )
    assert w.metric("roger_lifecycle_events_total", hook="before_run") == 1
    assert w.metric("roger_lifecycle_events_total", hook="after_run") == 1


def test_retries_through_ttl_queues_then_burial(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    hooks, out = tmp_path / "hooks", tmp_path / "out"
    w = workers.start(callbacks=["tests.jobs.callbacks:Recorder"], hooks_file=hooks)
    t0 = time.time()
    job_id = client.enqueue(unique_name, basic.flaky, {"out": str(out), "n": 1})
    eventually(lambda: broker.count(f"{unique_name}-default.buried") == 1, 20, message="burial")
    runs = [float(r[-1]) for r in read_lines(out)]
    assert len(runs) == 3  # first run + two retries (levels 1,2)
    assert runs[1] - runs[0] >= 0.9 and runs[2] - runs[1] >= 1.9, (runs, t0)
    got = [(h["hook"], h.get("retry")) for h in read_json_lines(hooks)]
    assert got == [
        ("before_run", 0),
        ("on_error", 0),
        ("before_run", 1),
        ("on_error", 1),
        ("before_run", 2),
        ("on_buried", 2),
    ]
    for h in read_json_lines(hooks):
        if h["hook"] in ("on_error", "on_buried"):
            assert h["error"] == ["ValueError", "boom 1"] and h["state"] == {"token": job_id}
    [(props, body)] = broker.drain(f"{unique_name}-default.buried")
    assert json.loads(body)["retry_count"] == 2 and props.message_id == job_id
    assert props.headers["x-roger-error-kind"] == "ValueError"
    assert props.headers["x-roger-buried-reason"] == "retries_exhausted"
    assert broker.count(f"{unique_name}-default") == 0
    assert w.metric("roger_job_retries_total") == 2
    assert w.metric("roger_job_outcomes_total", outcome="buried") == 1
    assert w.metric("roger_lifecycle_events_total", hook="on_error") == 2


def test_not_retryable_failure_runs_on_error_and_is_kept_in_buried(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    """As in Roger, a job without a retry sequence gets ``on_error`` (never ``on_buried``);
    its message is kept in the bounded ``.buried`` queue, marked ``not_retryable``."""
    hooks = tmp_path / "hooks"
    w = workers.start(
        callbacks=["tests.jobs.callbacks:Recorder"],
        hooks_file=hooks,
        extra=["--buried-max-length", "2"],
    )
    for n in range(3):
        client.enqueue(unique_name, basic.fails_once_not_retryable, {"n": n})
    eventually(
        lambda: sum(h["hook"] == "on_error" for h in read_json_lines(hooks)) == 3,
        15,
        message="3 failures",
    )
    # on_error runs beside the job, before its burial: the third burial drops the oldest
    # first (counted), then lands; the queue never holds more than its bound.
    buried = f"{unique_name}-default.buried"
    eventually(
        lambda: w.metric("roger_buried_dropped_total", queue="default") == 1,
        15,
        message="the oldest dropped",
    )
    eventually(lambda: broker.count(buried) == 2, 10, message="2 buried")
    time.sleep(0.5)
    assert broker.count(buried) == 2
    assert w.metric("roger_buried_dropped_total", queue="default") == 1
    assert not any(h["hook"] == "on_buried" for h in read_json_lines(hooks))
    for props, _ in broker.peek(buried):
        assert props.headers["x-roger-buried-reason"] == "not_retryable"


def test_client_survives_a_dropped_connection(
    amqp_url: str, broker: Broker, unique_name: str
) -> None:
    name = f"roger-client {unique_name}"
    with roger.Client(amqp_url, name=name) as c:
        c.enqueue(unique_name, basic.ok, {"n": 1})
        conns = eventually(
            lambda: [
                x
                for x in management("/connections?columns=name,client_properties")
                if x.get("client_properties", {}).get("connection_name") == name
            ],
            30,
            interval=1,
            message="client connection listed",
        )
        management("/connections/" + urllib.parse.quote(conns[0]["name"], safe=""), "DELETE")
        time.sleep(1)  # the broker closes it; the client only learns on its next call
        c.enqueue(unique_name, basic.ok, {"n": 2})  # reconnects once, transparently
    assert broker.count(f"{unique_name}-default") == 2


def test_zero_max_workers_declares_but_does_not_consume(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str
) -> None:
    workers.start(queues=["default=1", "idle=0"])
    idle = f"{unique_name}-idle"
    assert broker.count(idle) == 0 and broker.count(f"{idle}.buried") == 0  # declared
    assert broker.consumers(idle) == 0
    client.enqueue(unique_name, basic.ok, {"n": 1}, queue="idle")
    time.sleep(1)
    assert broker.count(idle) == 1  # nobody takes it
    assert broker.consumers(f"{unique_name}-default") == 1


def test_a_burial_into_a_deleted_queue_is_not_acked_until_it_sits_in_one(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str
) -> None:
    """RabbitMQ confirms a publish that no queue took: had the worker trusted that confirm,
    the job would be acked and gone. Returned (mandatory), it is not acked; the worker
    re-declares its topology and the job ends in .buried after all."""
    w = workers.start()
    buried = f"{unique_name}-default.buried"
    broker._channel().queue_delete(buried)
    assert broker.count(buried) == -1
    client.enqueue(unique_name, basic.fails_once_not_retryable, {"n": 1})
    eventually(lambda: broker.count(buried) == 1, timeout=60, message="buried after all")
    assert broker.count(f"{unique_name}-default") == 0
    assert w.proc.poll() is None
