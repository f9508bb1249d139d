"""Cancel, pause, queue keys and execution keys with two or more real worker processes."""

from __future__ import annotations

import itertools
import time

import pika
import pytest

import roger
from roger_devtools.polling import eventually
from roger_devtools.recording import Recorder
from roger_devtools.workers import Workers
from tests.integration.support import message_count

pytestmark = pytest.mark.integration
# seconds for a first job to start: a bound for a broker loaded by two other test streams
# (10 s was once not enough), not the claim
STARTS_WITHIN = 30.0


def test_cancel_running_and_queued_jobs_across_two_workers(
    partition_workers: Workers, recorder: Recorder, client: roger.Client, amqp_url: str
) -> None:
    p = partition_workers.partition
    partition_workers.start_consuming(["default=1"], count=2)
    running = [client.enqueue(p, "pjobs:sleepy", {"tag": f"r{i}", "s": 3600}) for i in range(2)]
    eventually(lambda: len(recorder.events("start")) == 2, 20, message="both running")
    pids = {e["pid"] for e in recorder.events("start")}
    assert len(pids) == 2
    queued = client.enqueue(p, "pjobs:sleepy", {"tag": "q", "s": 0})
    client.cancel(p, queued)  # waits in the broker: both workers are busy
    time.sleep(0.5)
    latencies = []
    for job_id in running:
        t0 = time.time()
        client.cancel(p, job_id)
        got = eventually(lambda j=job_id: recorder.events("on_cancel", job_id=j), 5)
        latencies.append(got[0]["t"] - t0)
    assert max(latencies) < 2.0, latencies
    # the queued one is delivered once a slot frees up: skipped, on_cancel, never run
    eventually(lambda: recorder.events("on_cancel", job_id=queued), 10)
    time.sleep(1.5)
    for job_id in [*running, queued]:
        assert len(recorder.events("on_cancel", job_id=job_id)) == 1
        assert not recorder.events("on_error", job_id=job_id)
    assert not recorder.events("start", id="q") and not recorder.events("before_run", job_id=queued)
    for level in ("default.retry.1", "default.buried"):
        assert message_count(amqp_url, f"{p}-{level}") == 0  # not retried, not buried
    assert message_count(amqp_url, f"{p}-default") == 0


def test_cancel_issued_while_no_worker_runs(
    partition_workers: Workers, recorder: Recorder, client: roger.Client, amqp_url: str
) -> None:
    p = partition_workers.partition
    ids = [client.enqueue(p, "pjobs:sleepy", {"tag": f"j{i}", "s": 0}) for i in range(4)]
    client.cancel(p, ids[0])
    client.cancel(p, ids[2])
    partition_workers.start_consuming(["default=2"], count=2)
    eventually(lambda: len(recorder.events("after_run")) == 2, 20)
    eventually(lambda: len(recorder.events("on_cancel")) == 2, 20)
    assert {e["job_id"] for e in recorder.events("on_cancel")} == {ids[0], ids[2]}
    assert {e["job_id"] for e in recorder.events("after_run")} == {ids[1], ids[3]}
    assert not recorder.events("before_run", job_id=ids[0])


def test_queue_key_refused_while_held_and_freed_when_the_job_leaves(
    partition_workers: Workers, recorder: Recorder, client: roger.Client
) -> None:
    p = partition_workers.partition
    partition_workers.start_consuming(["default=2"], count=2)
    # held while running; freed on success
    client.enqueue(p, "pjobs:keyed", {"qk": "ok", "tag": "ok1", "s": 1})
    with pytest.raises(roger.DuplicateJob):
        client.enqueue(p, "pjobs:keyed", {"qk": "ok", "tag": "ok2"})
    eventually(lambda: recorder.events("end", id="ok1"), 20)
    eventually(lambda: _enqueue_ok(client, p, "pjobs:keyed", {"qk": "ok", "tag": "ok3"}), 20)
    # freed when it fails for good (not retryable: on_error, kept in .buried)
    client.enqueue(p, "pjobs:keyed", {"qk": "bad", "tag": "b1", "fail": True})
    eventually(lambda: _enqueue_ok(client, p, "pjobs:keyed", {"qk": "bad", "tag": "b2"}), 20)
    assert recorder.events("on_error") and not recorder.events("on_buried")
    # freed when cancelled (running)
    jid = client.enqueue(p, "pjobs:keyed", {"qk": "cx", "tag": "c1", "s": 3600})
    eventually(lambda: recorder.events("start", id="c1"), 10)
    with pytest.raises(roger.DuplicateJob):
        client.enqueue(p, "pjobs:keyed", {"qk": "cx", "tag": "c2"})
    client.cancel(p, jid)
    eventually(lambda: _enqueue_ok(client, p, "pjobs:keyed", {"qk": "cx", "tag": "c3"}), 20)
    # freed when parked: a job name the workers may not run
    client.enqueue(p, "pjobs:keyed", {"qk": "pk", "tag": "p1"}, queue="default")
    # (same job, fine) - and a name outside the workers' modules, keyed by hand
    from roger.broker import state_client

    conn = client._conn
    assert state_client.take_queue_key(conn, p, "parked-key", "parked-job", "default")
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish(
        "",
        f"{p}-default",
        b'{"id":"parked-job","name":"os:system","args":"true","queue":"default",'
        b'"queue_key":"parked-key"}',
        pika.BasicProperties(delivery_mode=2),
    )
    eventually(lambda: state_client.queue_key_holder(conn, p, "parked-key") is None, 10)


def _enqueue_ok(client: roger.Client, p: str, job: str, args: dict) -> bool:
    try:
        client.enqueue(p, job, args)
    except roger.DuplicateJob:
        return False
    return True


def _overlaps(spans: list[tuple[float, float]]) -> int:
    spans = sorted(spans)
    return sum(1 for (_s1, e1), (s2, _e2) in itertools.pairwise(spans) if s2 < e1)


def test_execution_key_serialises_jobs_across_replicas(
    partition_workers: Workers, recorder: Recorder, client: roger.Client
) -> None:
    p = partition_workers.partition
    partition_workers.start_consuming(["default=3"], count=2)
    for i in range(6):
        client.enqueue(p, "pjobs:keyed", {"xk": "acct-1", "tag": f"k{i}", "s": 0.4})
    for i in range(3):
        client.enqueue(p, "pjobs:keyed", {"xk": f"other-{i}", "tag": f"o{i}", "s": 0.4})
    eventually(lambda: len(recorder.events("end")) == 9, 40, message="all nine ran")
    spans = []
    for i in range(6):
        start = recorder.events("start", id=f"k{i}")
        end = recorder.events("end", id=f"k{i}")
        assert len(start) == 1 and len(end) == 1
        spans.append((start[0]["t"], end[0]["t"]))
    assert _overlaps(spans) == 0, spans
    assert len({e["pid"] for e in recorder.events("start", xk="acct-1")}) >= 1


def test_execution_key_jobs_not_lost_when_the_holder_is_killed(
    partition_workers: Workers, recorder: Recorder, client: roger.Client
) -> None:
    p = partition_workers.partition
    [a] = partition_workers.start_consuming(["default=2"])
    client.enqueue(p, "pjobs:keyed", {"xk": "solo", "tag": "first", "s": 20})
    eventually(lambda: recorder.events("start", id="first"), STARTS_WITHIN)
    partition_workers.start_consuming(["default=2"])
    for i in range(3):
        client.enqueue(p, "pjobs:keyed", {"xk": "solo", "tag": f"w{i}", "s": 0.2})
    time.sleep(2)  # they are parked in the waiting room (the key is busy)
    assert not recorder.events("end", id="first"), "the holder must still hold the key here"
    assert not any(recorder.events("start", id=f"w{i}") for i in range(3))
    a.kill9()  # dies holding the key; 'first' goes back to the queue
    eventually(lambda: all(recorder.events("end", id=f"w{i}") for i in range(3)), 60)
    eventually(lambda: len(recorder.events("start", id="first")) == 2, 30)


def test_pause_and_resume_reach_running_workers_and_survive_restart(
    partition_workers: Workers, recorder: Recorder, client: roger.Client, amqp_url: str
) -> None:
    p = partition_workers.partition
    a, _ = partition_workers.start_consuming(["default=2"], count=2)
    client.enqueue(p, "pjobs:sleepy", {"tag": "inflight", "s": 2})
    eventually(lambda: recorder.events("start", id="inflight"), STARTS_WITHIN)
    client.pause(p, "default")
    eventually(lambda: client.info(p).queues["default"].consumers == 0, 5)
    for i in range(5):
        client.enqueue(p, "pjobs:sleepy", {"tag": f"p{i}", "s": 0})
    eventually(lambda: recorder.events("end", id="inflight"), 10)  # in-flight job finished
    # a restarted worker still sees the pause
    a.kill9()
    partition_workers.start_consuming(["default=2"])
    time.sleep(2)
    info = client.info(p)
    assert info.paused == ["default"] and info.queues["default"].paused
    assert info.queues["default"].messages == 5  # kept its jobs
    assert not any(recorder.events("start", id=f"p{i}") for i in range(5))
    # the killed worker stays listed until its heartbeat is stale (HEARTBEAT_STALE)
    assert len(info.workers) >= 2
    newest = max(info.workers, key=lambda w: w["at"])  # the restarted worker's record
    assert newest["paused"] == ["default"]
    client.resume(p, "default")
    eventually(lambda: all(recorder.events("end", id=f"p{i}") for i in range(5)), 10)
