"""``FakePartitionState`` behaves like the real ``PartitionState`` on what it covers.

Each scenario runs twice: on the in-memory fake (a unit test) and on the real broker (an
integration test), through the same small ``World`` interface. A scenario that passes on
the real broker and fails on the fake (or the other way round) is a fake that lies.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Protocol

import pika
import pytest

from roger.broker import state_client as sc
from roger.broker.fake_state import FakePartitionState, FakeStateBroker
from roger.core import naming
from roger_devtools.polling import eventually
from tests.integration.state_loop import StateLoop
from tests.integration.support import delete_queues

QUEUES = ["default", "mail"]


class Member(Protocol):
    state: Any
    cancels: list[str]
    pauses: list[tuple[str, bool]]

    def call(self, fn: Callable[[Callable[[Any], None]], None], timeout: float = 10) -> Any: ...

    def close(self) -> None: ...


class World(Protocol):
    def member(self) -> Member: ...
    def cancel(self, job_id: str) -> None: ...
    def set_paused(self, queue: str, paused: bool) -> None: ...
    def take_queue_key(self, key: str, job_id: str) -> bool: ...
    def queue_key_holder(self, key: str) -> str | None: ...
    def waiting_count(self, key: str) -> int: ...
    def queue_bodies(self, queue: str) -> list[bytes]: ...


class FakeMember:
    def __init__(self, broker: FakeStateBroker) -> None:
        self.cancels: list[str] = []
        self.pauses: list[tuple[str, bool]] = []
        self.ready = threading.Event()
        self.state = FakePartitionState(
            broker.partition,
            QUEUES,
            on_ready=self.ready.set,
            on_cancel=self.cancels.append,
            on_pause=lambda q, p: self.pauses.append((q, p)),
            broker=broker,
        )
        self.state.attach(object())
        assert self.ready.is_set()

    def call(self, fn: Callable[[Callable[[Any], None]], None], timeout: float = 10) -> Any:
        fut: Future[Any] = Future()
        fn(fut.set_result)
        return fut.result(0)

    def close(self) -> None:
        self.state.detach()


class FakeWorld:
    def __init__(self, partition: str) -> None:
        self.broker = FakeStateBroker(partition)

    def member(self) -> Member:
        return FakeMember(self.broker)

    def cancel(self, job_id: str) -> None:
        self.broker.cancel(job_id)

    def set_paused(self, queue: str, paused: bool) -> None:
        self.broker.set_paused(queue, paused)

    def take_queue_key(self, key: str, job_id: str) -> bool:
        return self.broker.take_queue_key(key, job_id)

    def queue_key_holder(self, key: str) -> str | None:
        return self.broker.queue_key_holder(key)

    def waiting_count(self, key: str) -> int:
        return self.broker.waiting_count(key)

    def queue_bodies(self, queue: str) -> list[bytes]:
        return self.broker.queue_bodies(queue)

    def close(self) -> None:
        pass


class RealWorld:
    def __init__(self, url: str, partition: str) -> None:
        self.url, self.partition = url, partition
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.members: list[StateLoop] = []
        self.keys: set[str] = set()
        for q in QUEUES:
            self.conn.channel().queue_declare(
                naming.queue_name(partition, q), durable=True, arguments={"x-queue-type": "quorum"}
            )

    def member(self) -> Member:
        loop = StateLoop(self.url, self.partition, QUEUES)
        self.members.append(loop)
        return loop

    def cancel(self, job_id: str) -> None:
        sc.cancel(self.conn, self.partition, job_id)

    def set_paused(self, queue: str, paused: bool) -> None:
        sc.set_paused(self.conn, self.partition, queue, paused)

    def take_queue_key(self, key: str, job_id: str) -> bool:
        self.keys.add(key)
        return sc.take_queue_key(self.conn, self.partition, key, job_id, "default")

    def queue_key_holder(self, key: str) -> str | None:
        return sc.queue_key_holder(self.conn, self.partition, key)

    def waiting_count(self, key: str) -> int:
        self.keys.add(key)
        name = naming.execution_waiting_queue_name(self.partition, key)
        ch = self.conn.channel()
        try:
            return int(ch.queue_declare(name, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        finally:
            if ch.is_open:
                ch.close()

    def queue_bodies(self, queue: str) -> list[bytes]:
        ch = self.conn.channel()
        out = []
        while True:
            method, _props, body = ch.basic_get(naming.queue_name(self.partition, queue), True)
            if method is None:
                break
            out.append(body)
        ch.close()
        return out

    def close(self) -> None:
        for m in self.members:
            m.close()
        p = self.partition
        names = [naming.queue_name(p, q) for q in QUEUES]
        names += [naming.pause_stream_name(p, q) for q in QUEUES]
        names += [naming.control_stream_name(p), naming.workers_stream_name(p)]
        names += [naming.execution_waiting_queue_name(p, k) for k in self.keys]
        names += [naming.queue_key_queue_name(p, k) for k in self.keys]
        delete_queues(self.conn, names)
        self.conn.close()


@pytest.fixture(
    params=[
        pytest.param("fake", marks=pytest.mark.unit),
        pytest.param("real", marks=pytest.mark.integration),
    ]
)
def world(request: pytest.FixtureRequest, unique_name: str) -> Iterator[World]:
    made: FakeWorld | RealWorld
    if request.param == "fake":
        made = FakeWorld(unique_name)
    else:
        made = RealWorld(request.getfixturevalue("amqp_url"), unique_name)
    yield made
    made.close()


def _job(job_id: str, queue: str = "default") -> bytes:
    return json.dumps(
        {"id": job_id, "name": "m:f", "args": None, "queue": queue, "execution_key": "k"}
    ).encode()


PROPS = pika.BasicProperties(delivery_mode=2)


def test_execution_lock_is_exclusive_and_freed_by_unlock_or_death(world: World) -> None:
    a, b = world.member(), world.member()
    assert a.call(lambda done: a.state.try_lock("k", "ja", done)) is True
    assert a.call(lambda done: a.state.try_lock("k", "ja", done)) is True  # ours already
    assert a.call(lambda done: a.state.try_lock("k", "other", done)) is False
    assert b.call(lambda done: b.state.try_lock("k", "jb", done)) is False
    assert a.state.held == {"k": "ja"}
    assert a.call(lambda done: a.state.unlock("k", done)) is True
    assert a.state.held == {}
    assert b.call(lambda done: b.state.try_lock("k", "jb", done)) is True
    b.close()  # the holder dies: its lock goes with its connection
    assert eventually(lambda: a.call(lambda done: a.state.try_lock("k", "ja2", done)), 10)


def test_parked_jobs_go_back_one_at_a_time_in_order(world: World) -> None:
    a = world.member()
    assert a.call(lambda done: a.state.try_lock("k", "running", done)) is True
    for i in range(3):
        assert a.call(lambda done, i=i: a.state.park("k", _job(f"w{i}"), PROPS, done)) is True
    assert world.waiting_count("k") == 3
    assert "k" in a.state.control.waiting
    assert a.call(lambda done: a.state.release_next("k", done)) is True
    assert "k" not in a.state.held
    assert world.waiting_count("k") == 2
    assert [json.loads(b)["id"] for b in world.queue_bodies("default")] == ["w0"]


def test_recheck_moves_a_job_back_when_the_key_was_freed_meanwhile(world: World) -> None:
    holder, parker = world.member(), world.member()
    assert holder.call(lambda done: holder.state.try_lock("k", "running", done)) is True
    # recheck while the key is busy elsewhere: nothing moves
    assert parker.call(lambda done: parker.state.park("k", _job("w0"), PROPS, done)) is True
    assert parker.call(lambda done: parker.state.recheck("k", done)) is True
    assert world.waiting_count("k") == 1
    # the holder frees the key without looking at the waiting room; a recheck moves it
    assert holder.call(lambda done: holder.state.unlock("k", done)) is True
    assert parker.call(lambda done: parker.state.recheck("k", done)) is True
    assert world.waiting_count("k") == 0
    assert [json.loads(b)["id"] for b in world.queue_bodies("default")] == ["w0"]
    assert "k" not in parker.state.held  # the recheck's own lock is freed again


def test_cancels_are_known_before_ready_and_followed_live(world: World) -> None:
    world.cancel("early")
    a = world.member()
    assert a.state.ready and a.state.is_cancelled("early") and not a.state.is_cancelled("x")
    world.cancel("late")
    eventually(lambda: "late" in a.cancels, 5)
    assert a.call(lambda done: a.state.cancel_done("late", done)) is True
    assert a.state.cancel_handled("late")
    b = world.member()
    assert b.state.is_cancelled("late") and b.state.cancel_handled("late")
    assert not b.state.cancel_handled("early")


def test_pause_events_reach_workers_and_new_workers_start_paused(world: World) -> None:
    a = world.member()
    assert not a.state.is_paused("mail")
    world.set_paused("mail", True)
    eventually(lambda: ("mail", True) in a.pauses, 5)
    assert a.state.is_paused("mail") and not a.state.is_paused("default")
    assert a.state.pause.paused_queues() == ["mail"]
    b = world.member()
    assert b.state.is_paused("mail")
    world.set_paused("mail", False)
    eventually(lambda: ("mail", False) in a.pauses and ("mail", False) in b.pauses, 5)
    assert not b.state.is_paused("mail")


def test_queue_key_is_released_only_by_its_holder(world: World) -> None:
    a = world.member()
    assert world.take_queue_key("qk", "j1") is True
    assert world.take_queue_key("qk", "j2") is False
    assert a.call(lambda done: a.state.release_queue_key("qk", "j2", done)) is False
    assert world.queue_key_holder("qk") == "j1"
    assert a.call(lambda done: a.state.release_queue_key("qk", "j1", done)) is True
    assert world.queue_key_holder("qk") is None
    assert a.call(lambda done: a.state.release_queue_key("qk", "j1", done)) is True
    assert world.take_queue_key("qk", "j3") is True
