"""The 3-node cluster: replicated queues keep confirmed messages, the worker fails over,
a queue key on a stopped node is freed once it is back, and a node whose boot dies is
launched again.

The cluster (hack/rabbitmq-cluster.sh) runs beside the single test broker; these tests
start it themselves. Nodes stopped by a test are started again before the next test.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pika
import pytest

import roger
from roger.broker import state_client as sc
from roger.broker.state.queue_keys import NODE_DOWN_RETRY
from roger.core import naming
from roger_devtools.polling import eventually
from roger_devtools.workers import Workers
from tests.brokers import BROKER
from tests.integration.cluster_support import (
    NODES,
    Cluster,
    node_name,
    node_number,
    script_process,
)
from tests.integration.state_loop import StateLoop
from tests.integration.support import delete_queues, read_lines
from tests.jobs import basic

pytestmark = pytest.mark.integration

ALL = sorted(node_name(n) for n in NODES)


@pytest.fixture
def cluster(rabbitmq_cluster: Cluster) -> Iterator[Cluster]:
    yield rabbitmq_cluster
    for n in NODES:  # a node a test stopped runs again for the next test
        rabbitmq_cluster.start_node(n)


def _channel(url: str) -> tuple[pika.BlockingConnection, Any]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    return conn, ch


def test_quorum_queues_and_streams_get_a_member_on_every_node(
    cluster: Cluster, unique_name: str
) -> None:
    conn, ch = _channel(cluster.url(2))  # declared through one node only
    try:
        quorum, stream = f"{unique_name}-q", f"{unique_name}-s"
        ch.queue_declare(quorum, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
        for name, kind in ((quorum, "quorum"), (stream, "stream")):

            def replicated(name: str = name) -> dict[str, Any] | None:
                q = cluster.queue(name, via=3)
                return q if sorted(q["online"]) == ALL else None

            q = eventually(
                replicated, timeout=60, interval=1, message=f"{kind} {name} online on all nodes"
            )
            assert q is not None  # eventually returns a truthy value
            assert q["type"] == kind
            assert sorted(q["members"]) == ALL
            assert q["leader"] in ALL
        ch.queue_delete(quorum)
        ch.queue_delete(stream)
    finally:
        conn.close()


def test_a_confirmed_message_survives_stopping_the_queue_leader(
    cluster: Cluster, unique_name: str
) -> None:
    conn, ch = _channel(cluster.url(1))
    ch.queue_declare(unique_name, durable=True, arguments={"x-queue-type": "quorum"})
    conn.close()
    leader = node_number(str(cluster.queue(unique_name)["leader"]))
    # Published through the leader itself, confirmed, and then the leader goes away.
    conn, ch = _channel(cluster.url(leader))
    ch.basic_publish(
        "",
        unique_name,
        b"kept",
        properties=pika.BasicProperties(delivery_mode=2),
        mandatory=True,
    )  # returns only once the broker confirmed it (confirm_delivery)
    conn.close()
    cluster.stop_node(leader)
    survivor = next(n for n in NODES if n != leader)
    moved = eventually(
        lambda: (
            (cluster.queue(unique_name, via=survivor)["leader"] or "")
            not in ("", node_name(leader))
        ),
        timeout=60,
        interval=1,
        message="a new leader",
    )
    assert moved
    conn, ch = _channel(cluster.url(survivor))
    try:
        method, _props, body = ch.basic_get(unique_name, auto_ack=True)
        assert method is not None and body == b"kept"
        ch.queue_delete(unique_name)
    finally:
        conn.close()


def _worker_node(cluster: Cluster, worker_pid: int, via: int) -> int | None:
    """The node holding the worker's connection (its name ends with the worker's pid)."""
    for c in cluster.management("/connections?columns=name,node,client_properties", via):
        name = (c.get("client_properties") or {}).get("connection_name", "")
        if name.startswith("roger-worker ") and name.endswith(f" {worker_pid}"):
            return node_number(c["node"])
    return None


def test_the_worker_given_every_node_fails_over_when_its_node_stops(
    cluster: Cluster, unique_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    workers = Workers(cluster.url_list, unique_name, tmp_path, jobs=["tests.jobs.basic"])
    try:
        worker = workers.start(["default=1"], ready=False).wait_ready(timeout=60)
        pid = worker.proc.pid
        first = eventually(
            lambda: _worker_node(cluster, pid, 1), timeout=30, message="the worker's connection"
        )
        assert first is not None  # eventually returns a truthy value
        with roger.Client(cluster.url(first)) as client:
            client.enqueue(unique_name, basic.ok, {"n": 1, "out": str(out)})
        eventually(lambda: len(read_lines(out)) == 1, timeout=30, message="job 1 done")

        cluster.stop_node(first)
        survivor = next(n for n in NODES if n != first)
        second = eventually(
            lambda: _worker_node(cluster, pid, survivor),
            timeout=90,
            interval=1,
            message="the worker on another node",
        )
        assert second != first
        with roger.Client(cluster.url(survivor)) as client:
            client.enqueue(unique_name, basic.ok, {"n": 2, "out": str(out)})
        eventually(lambda: [line[1] for line in read_lines(out)] == ["1", "2"], timeout=60)
        assert worker.proc.poll() is None  # the same process, never restarted
    finally:
        workers.stop_all()


def test_a_key_whose_queue_node_is_down_is_freed_once_the_node_is_back(
    cluster: Cluster, unique_name: str
) -> None:
    """A key queue is a classic queue on the node of the client that took the key; while
    that node is down the broker refuses it (404). The worker's release waits for the node
    instead of giving up: before, the chaos run left two keys held (for days) after a
    node kill."""
    p, key = unique_name, "order-7"
    taker = pika.BlockingConnection(pika.URLParameters(cluster.url(2)))
    try:
        assert sc.take_queue_key(taker, p, key, "job-1", "default")
        assert sc.hold_queue_key(taker, p, key, "job-1")
    finally:
        taker.close()
    key_queue = naming.queue_key_queue_name(p, key)
    assert node_number(cluster.management(f"/queues/%2F/{key_queue}", via=1)["node"]) == 2
    cluster.stop_node(2)
    worker = StateLoop(cluster.url(1), p, ["default"])
    try:
        freed: Future[bool] = Future()
        worker.ioloop.add_callback_threadsafe(
            lambda: worker.state.release_queue_key(key, "job-1", freed.set_result)
        )
        time.sleep(NODE_DOWN_RETRY * 3)
        assert not freed.done()  # before: answered False at once, the key left held
        cluster.start_node(2)
        assert freed.result(180) is True
        conn = pika.BlockingConnection(pika.URLParameters(cluster.url(1)))
        try:
            assert sc.queue_key_holder(conn, p, key) is None
            assert sc.take_queue_key(conn, p, key, "job-2", "default")
        finally:
            delete_queues(conn, [key_queue, naming.queue_key_lock_name(p, key)])
            conn.close()
    finally:
        worker.close()


def test_a_node_whose_boot_dies_on_a_held_port_is_launched_again(cluster: Cluster) -> None:
    """A node restarted right after a SIGKILL or a slow stop can find one of its ports still
    held, and its boot dies. The start script notices the dead boot, waits for the port and
    launches the node once more. Before, it polled a node that was no longer starting for
    its whole patience (and the chaos run's start-node timed out after 300 s)."""
    n = 3
    cluster.stop_node(n)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the stop's TIME_WAITs
    blocker.bind(("127.0.0.1", BROKER.cluster_management_base + n))
    blocker.listen()
    start = script_process("start-node", str(n))
    log: list[str] = []
    try:
        assert start.stderr is not None
        for line in start.stderr:  # the port stays held until the first boot died of it
            log.append(line)
            if "died" in line:
                break
        blocker.close()
        log.extend(start.stderr)
        assert start.wait(timeout=240) == 0, "".join(log)
    finally:
        blocker.close()
        if start.poll() is None:
            start.kill()
    text = "".join(log)
    assert "died" in text and "launching it once more" in text, text
    assert cluster.management("/overview", via=n)["node"] == node_name(n)
