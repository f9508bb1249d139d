"""Partition-wide state primitives on the real broker (no worker runtime involved)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pika
import pytest

from roger.broker import state_client as sc
from roger.core import naming
from roger.core import state as st
from roger.core import worker_status as ws
from roger_devtools.polling import eventually
from tests.integration.state_loop import StateLoop
from tests.integration.support import delete_queues

pytestmark = pytest.mark.integration


@pytest.fixture
def loops() -> Iterator[list[StateLoop]]:
    made: list[StateLoop] = []
    yield made
    for loop in made:
        loop.close()


def test_queue_key_test_and_set_under_8_concurrent_producers(
    amqp_url: str, unique_name: str, conn: pika.BlockingConnection
) -> None:
    for round_ in range(5):
        key = f"order:{round_}:{unique_name}"
        conns = [pika.BlockingConnection(pika.URLParameters(amqp_url)) for _ in range(8)]
        barrier = threading.Barrier(8)
        won: list[bool | None] = [None] * 8

        def go(
            i: int, key: str = key, conns: list = conns, won: list = won, barrier=barrier
        ) -> None:
            barrier.wait()
            won[i] = sc.take_queue_key(conns[i], unique_name, key, f"job-{i}", "default")

        threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for c in conns:
            c.close()
        assert won.count(True) == 1, won
        winner = f"job-{won.index(True)}"
        assert sc.queue_key_holder(conn, unique_name, key) == winner
        # someone else's release does not free it; the holder's does
        assert not sc.release_queue_key(conn, unique_name, key, "job-intruder")
        assert sc.queue_key_holder(conn, unique_name, key) == winner
        assert sc.release_queue_key(conn, unique_name, key, winner)
        assert sc.queue_key_holder(conn, unique_name, key) is None
        assert sc.take_queue_key(conn, unique_name, key, "job-next", "default")
        assert sc.release_queue_key(conn, unique_name, key)


def test_worker_releases_queue_key_only_for_its_job(
    amqp_url: str, unique_name: str, conn: pika.BlockingConnection, loops: list[StateLoop]
) -> None:
    key = "any string / with spaces é"
    assert sc.take_queue_key(conn, unique_name, key, "j1", "default")
    assert not sc.take_queue_key(conn, unique_name, key, "j2", "default")
    loop = StateLoop(amqp_url, unique_name, ["default"])
    loops.append(loop)
    assert loop.call(lambda done: loop.state.release_queue_key(key, "old-job", done)) is False
    assert sc.queue_key_holder(conn, unique_name, key) == "j1"
    assert loop.call(lambda done: loop.state.release_queue_key(key, "j1", done)) is True
    assert sc.queue_key_holder(conn, unique_name, key) is None
    # the empty key queue is deleted, not left behind
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.queue_declare(naming.queue_key_queue_name(unique_name, key), passive=True)
    assert err.value.reply_code == 404
    # releasing a key nobody holds is fine
    assert loop.call(lambda done: loop.state.release_queue_key(key, "j1", done)) is True


def test_execution_lock_is_exclusive_and_freed_when_its_connection_dies(
    amqp_url: str, unique_name: str, loops: list[StateLoop]
) -> None:
    a = StateLoop(amqp_url, unique_name, ["default"])
    b = StateLoop(amqp_url, unique_name, ["default"])
    loops += [a, b]
    assert a.call(lambda done: a.state.try_lock("user-42", "job-a", done)) is True
    assert b.call(lambda done: b.state.try_lock("user-42", "job-b", done)) is False
    # b's connection is intact after the refusal (it used a channel of its own)
    assert b.call(lambda done: b.state.try_lock("user-43", "job-b", done)) is True
    assert b.conn.is_open
    a.close()  # the worker holding the key dies
    assert eventually(
        lambda: b.call(lambda done: b.state.try_lock("user-42", "job-b", done)), timeout=10
    )
    # released explicitly, it can be taken by another connection again
    c = StateLoop(amqp_url, unique_name, ["default"])
    loops.append(c)
    assert c.call(lambda done: c.state.try_lock("user-42", "job-c", done)) is False
    assert b.call(lambda done: b.state.unlock("user-42", done)) is True
    assert c.call(lambda done: c.state.try_lock("user-42", "job-c", done)) is True


def _job_body(job_id: str, queue: str = "default") -> bytes:
    return json.dumps(
        {"id": job_id, "name": "m:f", "args": None, "queue": queue, "execution_key": "k"}
    ).encode()


def test_waiting_room_parks_and_releases_one_at_a_time(
    amqp_url: str, unique_name: str, conn: pika.BlockingConnection, loops: list[StateLoop]
) -> None:
    main = naming.queue_name(unique_name, "default")
    conn.channel().queue_declare(main, durable=True, arguments={"x-queue-type": "quorum"})
    a = StateLoop(amqp_url, unique_name, ["default"])
    loops.append(a)
    props = pika.BasicProperties(delivery_mode=2, message_id="x")
    assert a.call(lambda done: a.state.try_lock("k", "running", done)) is True
    for i in range(3):
        assert a.call(lambda done, i=i: a.state.park("k", _job_body(f"w{i}"), props, done))
    waiting = naming.execution_waiting_queue_name(unique_name, "k")
    ch = conn.channel()
    assert ch.queue_declare(waiting, passive=True).method.message_count == 3
    # the running job finishes: exactly one waiting job goes back, and the key is free
    assert a.call(lambda done: a.state.release_next("k", done)) is True
    assert ch.queue_declare(waiting, passive=True).method.message_count == 2
    _m, _p, body = ch.basic_get(main, auto_ack=True)
    assert json.loads(body)["id"] == "w0"
    assert "k" not in a.state.held
    delete_queues(conn, [main, waiting])


def test_waiting_jobs_are_swept_back_when_the_holder_died(
    amqp_url: str,
    unique_name: str,
    conn: pika.BlockingConnection,
    loops: list[StateLoop],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from roger.broker.state import locks

    monkeypatch.setattr(locks, "SWEEP_INTERVAL", 0.5)
    main = naming.queue_name(unique_name, "default")
    conn.channel().queue_declare(main, durable=True, arguments={"x-queue-type": "quorum"})
    holder = StateLoop(amqp_url, unique_name, ["default"])
    parker = StateLoop(amqp_url, unique_name, ["default"])
    loops += [holder, parker]
    props = pika.BasicProperties(delivery_mode=2)
    assert holder.call(lambda done: holder.state.try_lock("k", "running", done))
    assert parker.call(lambda done: parker.state.try_lock("k", "w0", done)) is False
    assert parker.call(lambda done: parker.state.park("k", _job_body("w0"), props, done))
    holder.close()  # dies holding the key: nobody will call release_next
    # a third worker (started later) learns the waiting key from the control stream
    sweeper = StateLoop(amqp_url, unique_name, ["default"])
    loops.append(sweeper)
    assert "k" in sweeper.state.control.waiting
    ch = conn.channel()
    eventually(lambda: ch.queue_declare(main, passive=True).method.message_count == 1, 15)
    delete_queues(conn, [main, naming.execution_waiting_queue_name(unique_name, "k")])


def test_cancel_issued_before_any_worker_runs_is_replayed(
    amqp_url: str, unique_name: str, conn: pika.BlockingConnection, loops: list[StateLoop]
) -> None:
    sc.cancel(conn, unique_name, "job-early")
    a = StateLoop(amqp_url, unique_name, ["default"])
    loops.append(a)
    # ready means caught up: the cancel is known before any job could be taken
    assert a.state.is_cancelled("job-early")
    assert not a.state.is_cancelled("job-other")
    # live: a running worker hears a new cancel within a moment
    sc.cancel(conn, unique_name, "job-late")
    eventually(lambda: "job-late" in a.cancels, 5)
    # on_cancel ran for job-late somewhere: recorded, and replayed by a new worker
    assert a.call(lambda done: a.state.cancel_done("job-late", done)) is True
    a.close()
    b = StateLoop(amqp_url, unique_name, ["default"])
    loops.append(b)
    assert b.state.is_cancelled("job-early") and b.state.is_cancelled("job-late")
    assert b.state.cancel_handled("job-late") and not b.state.cancel_handled("job-early")


def test_cancelled_ids_expire_after_the_horizon(
    amqp_url: str, unique_name: str, conn: pika.BlockingConnection, loops: list[StateLoop]
) -> None:
    # an event older than the horizon is ignored on replay (the stream drops it too)
    ev = st.cancel("job-ancient", time.time() - st.HORIZON - 60)
    sc.publish_control(conn, unique_name, ev)
    sc.cancel(conn, unique_name, "job-recent")
    a = StateLoop(amqp_url, unique_name, ["default"])
    loops.append(a)
    assert a.state.is_cancelled("job-recent") and not a.state.is_cancelled("job-ancient")
    # and a remembered one is forgotten once it is older than the horizon
    a.state.clock = lambda: time.time() + st.HORIZON + 1
    assert a.state.control.expire(a.state.clock()) >= 1
    assert not a.state.is_cancelled("job-recent")
    assert st.control_stream_arguments()["x-max-age"] == "7D"


def test_pause_reaches_a_running_worker_and_survives_its_restart(
    amqp_url: str, unique_name: str, conn: pika.BlockingConnection, loops: list[StateLoop]
) -> None:
    a = StateLoop(amqp_url, unique_name, ["default", "mail"])
    loops.append(a)
    assert not a.state.is_paused("default")
    sc.set_paused(conn, unique_name, "mail", True)
    eventually(lambda: ("mail", True) in a.pauses, 5)
    assert a.state.is_paused("mail") and not a.state.is_paused("default")
    a.close()
    b = StateLoop(amqp_url, unique_name, ["default", "mail"])
    loops.append(b)
    assert b.state.is_paused("mail")  # known before ready: no job is taken from it
    sc.set_paused(conn, unique_name, "mail", False)
    eventually(lambda: ("mail", False) in b.pauses, 5)
    assert sc.paused_queues(conn, unique_name, ["default", "mail"]) == []
    sc.set_paused(conn, unique_name, "default", True)
    assert sc.paused_queues(conn, unique_name, ["default", "mail"]) == ["default"]


def test_pause_state_survives_stream_retention(
    unique_name: str, conn: pika.BlockingConnection
) -> None:
    sc.set_paused(conn, unique_name, "default", True)  # the event that must not be lost
    # then far more than the retention limit of other queues' notices... and of this
    # queue's own stream: fill it with resume/pause pairs, ending paused
    name = naming.pause_stream_name(unique_name, "default")
    ch = conn.channel()
    ch.confirm_delivery()
    n = 0
    while n * 120 < st.PAUSE_MAX_BYTES * 1.5:
        for ev in (st.resume("default", time.time()), st.pause("default", time.time())):
            ch.basic_publish("", name, st.encode(ev), sc.PERSISTENT)
        n += 2
    ch.basic_publish("", name, st.encode(st.pause("default", time.time())), sc.PERSISTENT)
    # retention has dropped the beginning of the stream
    first = sc._read_stream(conn, name, "first")
    assert len(first) < n
    assert sc.is_paused(conn, unique_name, "default")
    # the last event stays however old: a resume then nothing else
    sc.set_paused(conn, unique_name, "default", False)
    assert not sc.is_paused(conn, unique_name, "default")


def test_worker_status_records_show_running_jobs(
    amqp_url: str, unique_name: str, conn: pika.BlockingConnection, loops: list[StateLoop]
) -> None:
    a = StateLoop(amqp_url, unique_name, ["default"], ident="host-a:1")
    loops.append(a)
    rec = ws.WorkerStatus(
        worker="host-a:1",
        at=time.time(),
        queues={"default": 4},
        paused=(),
        running=(ws.RunningJob("j1", "m:f", "default", time.time(), "user-1"),),
    )
    assert a.call(lambda done: a.state.publish_status(rec, done)) is True
    stopped = ws.WorkerStatus(worker="host-b:2", at=time.time(), queues={}, stopping=True)
    assert a.call(lambda done: a.state.publish_status(stopped, done)) is True
    live = sc.live_workers(conn, unique_name)
    assert [w.worker for w in live] == ["host-a:1"]
    assert live[0].running[0].id == "j1" and live[0].running[0].execution_key == "user-1"
