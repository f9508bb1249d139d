"""The worker under failure: timeouts, crashes, signals, kill -9, bad input, bad callbacks."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

import roger
from roger_devtools.polling import eventually
from roger_devtools.processes import alive
from roger_devtools.workers import WorkerProc, Workers
from tests.integration.support import (
    Broker,
    management,
    read_json_lines,
    read_lines,
)
from tests.jobs import basic

pytestmark = pytest.mark.integration


def test_timeout_stops_a_job_stuck_in_a_blocking_call(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    hooks, out = tmp_path / "hooks", tmp_path / "out"
    w = workers.start(callbacks=["tests.jobs.callbacks:Recorder"], hooks_file=hooks)
    t0 = time.monotonic()
    job_id = client.enqueue(unique_name, basic.stuck, {"out": str(out)})
    eventually(lambda: broker.count(f"{unique_name}-default.buried") == 1, 10, message="burial")
    assert time.monotonic() - t0 < 5
    [start] = read_lines(out)
    eventually(lambda: not alive(int(start[2])), 15, message="stuck process killed")
    failed = eventually(  # not retryable: on_error (as in Roger), kept in .buried
        lambda: [h for h in read_json_lines(hooks) if h["hook"] == "on_error"],
        15,
        message="on_error",
    )
    assert failed[0]["id"] == job_id and failed[0]["error"][0] == "timeout"
    assert failed[0]["state"] is None  # the process holding the state was killed
    assert not [h for h in read_json_lines(hooks) if h["hook"] == "on_buried"]
    client.enqueue(unique_name, basic.ok, {"out": str(out), "n": 2})
    eventually(lambda: len(read_lines(out)) == 2, 15, message="the worker goes on")
    assert w.metric("roger_job_outcomes_total", outcome="buried") == 1


def one_process_three_slots(workers: Workers, hooks: Path, **kw: Any) -> WorkerProc:
    """A worker whose queue runs its 3 slots in one job process, hooks recorded."""
    return workers.start(
        queues=["default=3"],
        extra=["--job-processes", "1"],
        callbacks=["tests.jobs.callbacks:Recorder"],
        hooks_file=hooks,
        **kw,
    )


def test_a_timeout_kills_its_process_and_the_jobs_beside_it_run_again(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    """Slots of one job process share its fate: the stuck job times out (and is buried),
    the two jobs running beside it are put back and run again to success elsewhere."""
    hooks, out = tmp_path / "hooks", tmp_path / "out"
    w = one_process_three_slots(workers, hooks)
    for n in (1, 2):
        client.enqueue(unique_name, basic.slow, {"out": str(out), "n": n, "sleep": 2})
    eventually(lambda: len(read_lines(out)) == 2, 15, message="both running")
    eventually(lambda: w.metric("roger_jobs_running") == 2, 15, message="the running gauge")
    stuck_id = client.enqueue(unique_name, basic.stuck, {"out": str(out), "n": 3})
    eventually(lambda: broker.count(f"{unique_name}-default.buried") == 1, 10, message="burial")
    ends = eventually(
        lambda: [r for r in read_lines(out) if r[0] == "end"] or None, 10, message="both ended"
    )
    eventually(
        lambda: len([r for r in read_lines(out) if r[0] == "end"]) == 2, 15, message="both ended"
    )
    lines = read_lines(out)
    first_pid = {r[2] for r in lines if r[0] == "start"} - {r[2] for r in ends}
    for n in ("1", "2"):
        starts = [r for r in lines if r[0] == "start" and r[1] == n]
        assert len(starts) == 2, lines  # interrupted once, then run to the end
        assert starts[0][2] in first_pid and starts[1][2] != starts[0][2]
    done = eventually(
        lambda: (
            [(h["hook"], h["id"]) for h in read_json_lines(hooks) if h["hook"] != "before_run"]
            if len([h for h in read_json_lines(hooks) if h["hook"] != "before_run"]) >= 3
            else None
        ),
        15,
        message="hooks",
    )
    assert sorted(hook for hook, _ in done) == ["after_run", "after_run", "on_error"]
    assert ("on_error", stuck_id) in done  # not retryable: on_error, kept in .buried
    assert w.metric("roger_job_outcomes_total", outcome="succeeded") == 2
    assert w.metric("roger_job_outcomes_total", outcome="buried") == 1
    assert w.metric("roger_jobs_running") == 0


def test_a_crash_beside_other_jobs_is_charged_to_its_culprit_alone(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    """A process running three jobs dies of one of them: nobody can tell which, so all
    three go back and each runs alone once (quarantine); only the crasher is charged."""
    hooks, out = tmp_path / "hooks", tmp_path / "out"
    w = one_process_three_slots(workers, hooks, retry_levels="1")
    slow_ids = [
        client.enqueue(unique_name, basic.slow, {"out": str(out), "n": n, "sleep": 1})
        for n in (1, 2)
    ]
    eventually(lambda: len(read_lines(out)) == 2, 15, message="both running")
    crash_id = client.enqueue(unique_name, basic.crash, {"out": str(out), "n": 3})
    eventually(lambda: broker.count(f"{unique_name}-default.buried") == 1, 30, message="burial")
    eventually(
        lambda: len([r for r in read_lines(out) if r[0] == "end"]) == 2, 15, message="both ended"
    )
    settled = eventually(
        lambda: (
            sorted((h["hook"], h["id"], (h.get("error") or [""])[0]) for h in hs)
            if len(hs := [h for h in read_json_lines(hooks) if h["hook"] != "before_run"]) >= 4
            else None
        ),
        15,
        message="hooks",
    )
    assert settled == sorted(
        [
            ("after_run", slow_ids[0], ""),
            ("after_run", slow_ids[1], ""),
            ("on_error", crash_id, "worker_crash"),
            ("on_buried", crash_id, "worker_crash"),
        ]
    )
    assert w.metric("roger_job_outcomes_total", outcome="succeeded") == 2
    assert w.metric("roger_job_outcomes_total", outcome="buried") == 1
    assert w.metric("roger_job_outcomes_total", outcome="retried") == 1


def test_os_exit_is_a_worker_crash_and_the_worker_goes_on(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    hooks, out = tmp_path / "hooks", tmp_path / "out"
    w = workers.start(
        callbacks=["tests.jobs.callbacks:Recorder"], hooks_file=hooks, retry_levels="1"
    )
    client.enqueue(unique_name, basic.crash, {"out": str(out)})
    eventually(lambda: broker.count(f"{unique_name}-default.buried") == 1, 15, message="burial")
    errors = eventually(
        lambda: (
            [
                (h["hook"], h["error"][0])
                for h in read_json_lines(hooks)
                if h["hook"] in ("on_error", "on_buried")
            ]
            if len(read_json_lines(hooks)) >= 4
            else None
        ),
        15,
        message="2 error hooks",
    )
    assert errors == [("on_error", "worker_crash"), ("on_buried", "worker_crash")]
    assert len(read_lines(out)) == 2  # ran twice: first run and one retry
    client.enqueue(unique_name, basic.ok, {"out": str(out), "n": 3})
    eventually(lambda: len(read_lines(out)) == 3, 15, message="the worker goes on")
    assert w.proc.poll() is None


def test_sigterm_lets_running_jobs_finish_and_puts_the_rest_back(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    w = workers.start(queues=["default=2"], extra=["--shutdown-timeout", "10"])
    for n in range(5):
        client.enqueue(unique_name, basic.slow, {"out": str(out), "n": n, "sleep": 1.5})
    eventually(lambda: len(read_lines(out)) == 2, 15, message="2 started")
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0, w.output()
    records = read_lines(out)
    assert sorted(r[0] for r in records) == ["end", "end", "start", "start"]
    assert broker.count(f"{unique_name}-default") == 3


def test_sigterm_past_the_timeout_kills_and_requeues(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    w = workers.start(queues=["default=1"], extra=["--shutdown-timeout", "1"])
    client.enqueue(unique_name, basic.slow, {"out": str(out), "sleep": 60})
    [start] = eventually(lambda: read_lines(out), 15, message="started")
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0, w.output()
    assert time.monotonic() - t0 < 5
    eventually(lambda: not alive(int(start[2])), 15, message="job process gone")
    eventually(lambda: broker.count(f"{unique_name}-default") == 1, 15, message="message back")


def test_kill_9_mid_job_reruns_it_on_the_next_worker(
    workers: Workers, client: roger.Client, unique_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    a = workers.start(queues=["default=1"], tag="A")
    client.enqueue(unique_name, basic.slow, {"out": str(out), "sleep": 1.0})
    [start] = eventually(lambda: read_lines(out), 15, message="started on A")
    assert start[0] == "start" and start[3] == "A"
    a.kill9()
    eventually(lambda: not alive(int(start[2])), 15, message="A's job process died with it")
    workers.start(queues=["default=1"], tag="B")
    eventually(lambda: [r for r in read_lines(out) if r[0] == "end"], 20, message="ended on B")
    assert [(r[0], r[3]) for r in read_lines(out)] == [("start", "A"), ("start", "B"), ("end", "B")]


BAD = [
    (b"not json at all", "not_json"),
    (b'{"id":"x1","name":"tests.jobs.basic:ok","args":NaN,"queue":"default"}', "not_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'{"id":"x2","name":"tests.jobs.basic:ok","queue":"default"}', "missing_field"),
    (
        b'{"id":"x3","name":"tests.jobs.basic:ok","args":1,"queue":"default","retry_count":"x"}',
        "invalid_field",
    ),
    (b'{"id":"x4","name":"tests.jobs.basic:nope","args":1,"queue":"default"}', "unknown_job"),
]


def test_bad_input_is_parked_counted_and_never_run(
    workers: Workers, broker: Broker, client: roger.Client, unique_name: str, tmp_path: Path
) -> None:
    w = workers.start()
    target = tmp_path / "pwned"
    main = f"{unique_name}-default"
    bad = [
        *BAD,
        (
            json.dumps(
                {"id": "x5", "name": "os:system", "args": f"touch {target}", "queue": "default"}
            ).encode(),
            "job_not_allowed",
        ),
    ]
    for i, (body, _) in enumerate(bad):
        broker.publish(main, body, message_id=f"m{i}", correlation_id="c", headers={"h": i})
    eventually(lambda: broker.count(f"{main}.invalid") == len(bad), 15, message="all parked")
    parked = broker.drain(f"{main}.invalid")
    got = {}
    for props, body in parked:
        i = props.headers["h"]
        assert body == bad[i][0]  # the original body, untouched
        assert props.message_id == f"m{i}" and props.delivery_mode == 2
        original = json.loads(props.headers["x-roger-original-properties"])
        assert original["message_id"] == f"m{i}" and original["correlation_id"] == "c"
        assert props.headers["x-roger-original-queue"] == main
        got[i] = props.headers["x-roger-invalid-reason"]
    assert got == {i: reason for i, (_, reason) in enumerate(bad)}
    assert not target.exists()
    for reason in {r for _, r in bad}:
        expected = sum(r == reason for _, r in bad)
        assert w.metric("roger_messages_parked_total", reason=reason) == expected
    assert broker.count(main) == 0  # acknowledged, not redelivered
    out = tmp_path / "out"
    client.enqueue(unique_name, basic.ok, {"out": str(out)})
    eventually(lambda: read_lines(out), 15, message="the worker goes on")
    assert broker.count(f"{main}.invalid") == 0


def test_raising_callbacks_change_nothing_and_are_counted(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    hooks, out = tmp_path / "hooks", tmp_path / "out"
    w = workers.start(
        callbacks=["tests.jobs.callbacks:Raises", "tests.jobs.callbacks:Recorder"],
        hooks_file=hooks,
    )
    job_id = client.enqueue(unique_name, basic.ok, {"out": str(out)})
    eventually(
        lambda: w.metric("roger_job_outcomes_total", outcome="succeeded") == 1, 15, message="done"
    )
    assert len(read_lines(out)) == 1
    after = eventually(
        lambda: [h for h in read_json_lines(hooks) if h["hook"] == "after_run"],
        15,
        message="after_run",
    )
    assert after[0]["state"] == {"token": job_id}  # the other callback's state is intact
    eventually(
        lambda: w.metric("roger_callback_failures_total") == 2, 15, message="failures counted"
    )
    for hook in ("before_run", "after_run"):
        assert (
            w.metric(
                "roger_callback_failures_total",
                callback="tests.jobs.callbacks:Raises",
                hook=hook,
                reason="exception",
            )
            == 1
        )
    assert broker.count(f"{unique_name}-default.retry.1") == 0


def test_hanging_callback_neither_changes_the_outcome_nor_stalls_others(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    w = workers.start(
        queues=["default=2"],
        callbacks=["tests.jobs.callbacks:HangsAfter"],
        extra=["--callback-timeout", "1"],
    )
    client.enqueue(unique_name, basic.ok, {"out": str(out), "n": 1, "hang": True})
    eventually(lambda: read_lines(out), 15, message="first job ran")
    for n in range(2, 6):
        client.enqueue(unique_name, basic.ok, {"out": str(out), "n": n})
    eventually(lambda: len(read_lines(out)) == 5, 5, message="others not stalled")
    eventually(
        lambda: w.metric("roger_callback_failures_total", hook="after_run", reason="timeout") == 1,
        15,
        message="hang counted",
    )
    assert w.metric("roger_job_outcomes_total", outcome="succeeded") == 5
    assert w.metric("roger_job_outcomes_total", outcome="retried") == 0
    assert broker.count(f"{unique_name}-default") == 0
    client.enqueue(unique_name, basic.ok, {"out": str(out), "n": 6})
    eventually(lambda: len(read_lines(out)) == 6, 15, message="replacement process works")


def test_metrics_health_and_readiness_endpoints(workers: Workers) -> None:
    w = workers.start()
    assert w.get("/healthz")[0] == 200
    assert w.get("/readyz")[0] == 200
    status, text = w.get("/metrics")
    assert status == 200
    for name in ("roger_worker_info", "roger_jobs_running", "roger_queue_consumers"):
        assert name in text
    eventually(
        lambda: w.metric("roger_queue_consumers", queue="default") == 1, 10, message="queue sampled"
    )


def test_reconnects_after_the_connection_is_closed(
    workers: Workers, client: roger.Client, unique_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    w = workers.start()
    name = f"roger-worker {unique_name} {os.uname().nodename} {w.proc.pid}"
    conns = eventually(
        lambda: [
            c
            for c in management("/connections?columns=name,client_properties")
            if c.get("client_properties", {}).get("connection_name") == name
        ],
        30,
        interval=1,
        message="connection listed",
    )
    management("/connections/" + urllib.parse.quote(conns[0]["name"], safe=""), "DELETE")
    eventually(lambda: w.metric("roger_broker_reconnects_total") == 1, 30, message="reconnected")
    client.enqueue(unique_name, basic.ok, {"out": str(out)})
    eventually(lambda: read_lines(out), 20, message="jobs run again")
    assert w.proc.poll() is None


def test_a_deleted_queue_is_declared_again_and_consumed(
    workers: Workers, broker: Broker, amqp_url: str, unique_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    w = workers.start()
    broker.delete(f"{unique_name}-default")
    eventually(lambda: w.metric("roger_broker_reconnects_total") == 1, 30, message="reconnected")
    eventually(
        lambda: (
            broker.count(f"{unique_name}-default") == 0
            and broker.consumers(f"{unique_name}-default") == 1
        ),
        30,
        message="consumer back",
    )
    with roger.Client(amqp_url) as c:
        c.enqueue(unique_name, basic.ok, {"out": str(out)})
    eventually(lambda: read_lines(out), 20, message="jobs run again")
