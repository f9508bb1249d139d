"""Startup of the partition state when several workers (and the operator) start at once.

Regression: RabbitMQ 3.10 resolves a timestamp ``x-stream-offset`` on a stream whose log is
still empty (its first workers creating it at the same moment) to "the next offset", which
can lie past events being written then. A worker whose consumer attached past its own
``sync`` nonce waited for it forever ("metrics on :PORT", then nothing; idle in the pika
ioloop). The worker now confirms the nonce before subscribing, subscribes again when the
nonce does not come back, and drops the connection past a deadline.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.select_connection import IOLoop, SelectConnection

import roger
from roger.broker import state_client as sc
from roger.broker.state import PartitionState
from roger.core import naming, topology
from roger_devtools.polling import GiveUp, eventually
from roger_devtools.recording import recording_workers
from roger_devtools.workers import WorkerProc, Workers
from tests.integration.support import delete_queues

pytestmark = pytest.mark.integration

QUEUES = ["default", "email", "reports"]
QUEUE_ARGS = [f"{q}=1" for q in QUEUES]


def _delete(url: str, names: list[str]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        delete_queues(conn, names)
    finally:
        conn.close()


def _state_names(partition: str) -> list[str]:
    return [
        naming.control_stream_name(partition),
        naming.workers_stream_name(partition),
        *[naming.pause_stream_name(partition, q) for q in QUEUES],
    ]


class _Member:
    """A PartitionState on its own connection that reconnects like the worker's Link."""

    def __init__(self, url: str, partition: str, go: threading.Barrier) -> None:
        self.url, self.go = url, go
        self.ioloop = IOLoop()
        self.ready = threading.Event()
        self.cancels: list[str] = []
        self.state = PartitionState(
            partition, QUEUES, on_ready=self.ready.set, on_cancel=self.cancels.append
        )
        self.conn: Any = None
        self.stopping = False
        self.connects = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._connect()
        self.ioloop.start()

    def _opened(self, conn: Any) -> None:
        if self.connects == 1:
            self.go.wait(10)  # every member (and the test) connected: go at once
        self.state.attach(conn)

    def _connect(self) -> None:
        self.connects += 1
        self.conn = SelectConnection(
            pika.URLParameters(self.url),
            on_open_callback=self._opened,
            on_open_error_callback=lambda _c, _e: self._again(),
            on_close_callback=lambda _c, _r: self._again(),
            custom_ioloop=self.ioloop,
        )

    def _again(self) -> None:
        self.state.detach()
        if self.stopping:
            self.ioloop.stop()
        else:
            self.ioloop.call_later(0.5, self._connect)

    def stop(self) -> None:
        def close() -> None:
            self.stopping = True
            if self.conn is not None and self.conn.is_open:
                self.conn.close()
            else:
                self.ioloop.stop()

        self.ioloop.add_callback_threadsafe(close)
        self.thread.join(5)


@pytest.fixture
def busy_cpus() -> Iterator[None]:
    """Two busy loops: on a loaded machine the broker's window in which a consumer can
    attach past the first chunk of a new stream is wide enough to hit (about one start in
    thirty on two cores); the live failure happened on such a machine."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for h in hogs:
        h.kill()
        h.wait(5)


@pytest.mark.exclusive("saturates both cores on purpose: the other tests would run starved")
def test_states_created_at_once_on_a_fresh_partition_all_catch_up(
    amqp_url: str, busy_cpus: None
) -> None:
    """Two members create the partition's streams at the same instant on a busy machine (a
    cancel racing them, now before, now after them), sixty times: each catches up within
    its deadline and learns the cancel. Before the fix, on two busy cores, one start in
    forty attached past its own nonce and waited for it forever: this failed most runs."""
    rounds, members_per_round = 60, 2
    for _ in range(rounds):
        partition = f"t-startup-race-{uuid.uuid4().hex[:8]}"
        go = threading.Barrier(members_per_round + 1)
        members = [_Member(amqp_url, partition, go) for _ in range(members_per_round)]
        for m in members:
            m.thread.start()
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            go.wait(10)
            time.sleep(random.uniform(0, 0.3))  # now before the members, now after
            job_id = f"job-{uuid.uuid4().hex[:8]}"
            for attempt in range(5):  # the racing creation may refuse the first publish
                try:
                    sc.cancel(conn, partition, job_id)
                    break
                except (pika.exceptions.AMQPError, OSError):
                    if attempt == 4:
                        raise
                    if not conn.is_open:
                        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
                    time.sleep(0.2)
            for m in members:
                assert m.ready.wait(30), (
                    f"member never caught up ({m.connects} connects): "
                    f"waiting for {m.state.waiting_for()}"
                )

            def all_know(j: str = job_id, ms: list[_Member] = members) -> bool:
                return all(j in m.cancels for m in ms)

            eventually(all_know, timeout=15)
        finally:
            for m in members:
                m.stop()
            if conn.is_open:
                conn.close()
            _delete(amqp_url, _state_names(partition))


# -- real worker processes ----------------------------------------------------------------


def _operator_like(url: str, partition: str, stop: threading.Event) -> None:
    """What the operator does to a partition while its workers start: declare every
    queue with the worker's own arguments, read the paused queues (``Client.info``)."""
    while not stop.is_set():
        try:
            conn = pika.BlockingConnection(pika.URLParameters(url))
            try:
                ch = conn.channel()
                for q in QUEUES:
                    for name, args in topology.declarations(partition, q, (1, 3, 5)):
                        ch.queue_declare(name, durable=True, arguments=args)
            finally:
                conn.close()
            with roger.Client(url) as client:
                client.info(partition, queues=tuple(QUEUES), retry_levels=())
        except (pika.exceptions.AMQPError, OSError):
            pass  # the racing creation of the streams may refuse one; go on
        stop.wait(0.05)


def _until_all_ready(workers: Workers, started: list[WorkerProc], timeout: float = 60) -> None:
    """Every worker answers /readyz 200 within ``timeout``; one that exits fails at once."""
    pending = list(started)

    def all_ready() -> bool:
        if any(w.proc.poll() is not None for w in started):
            raise GiveUp(f"a worker exited: {workers.logs()}")
        pending[:] = [w for w in pending if w.get("/readyz")[0] != 200]
        return not pending

    try:
        eventually(all_ready, timeout, message="every worker ready")
    except GiveUp:
        raise
    except AssertionError:
        ports = sorted(w.port for w in pending)
        raise AssertionError(f"workers on {ports} never ready: {workers.logs()}") from None


@pytest.fixture
def partition_names(amqp_url: str) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for p in made:
        names = _state_names(p)
        for q in QUEUES:
            names += [n for n, _ in topology.declarations(p, q, (1, 3, 5))]
            names += [n for n, _ in topology.declarations(p, q, (1,))]
        _delete(amqp_url, sorted(set(names)))


def test_workers_started_at_once_with_the_operator_all_become_ready(
    tmp_path: Path, amqp_url: str, partition_names: list[str]
) -> None:
    """Four ``roger worker`` processes of a new partition start at the same time, three
    times, while an operator-like client declares the partition's queues and reads its
    pause state: every worker answers /readyz 200 within the deadline."""
    for n in range(3):
        partition = f"t-startup-{uuid.uuid4().hex[:8]}"
        partition_names.append(partition)
        workdir = tmp_path / f"round-{n}"
        workdir.mkdir()
        workers, _ = recording_workers(workdir, amqp_url, partition)
        stop = threading.Event()
        operator = threading.Thread(
            target=_operator_like, args=(amqp_url, partition, stop), daemon=True
        )
        try:
            operator.start()
            _until_all_ready(workers, [workers.start(QUEUE_ARGS, ready=False) for _ in range(4)])
        finally:
            stop.set()
            operator.join(10)
            workers.stop_all()
