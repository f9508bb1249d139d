"""Freeing a job's queue key when the lock's holder vanished, or the worker's connection did.

The lock (``<p>.qkey.<digest>.lock``) is an exclusive queue; the broker drops it only once
it notices its connection is dead (missed AMQP heartbeats). A client waits
``QUEUE_KEY_LOCK_WAIT`` for it and fails its call; a worker freeing the key of a job that
left must not give up as soon, or the key stays held for ``QUEUE_KEY_MAX_HOLD`` (days) and
every later job with that key is refused as a duplicate.

A vanished host is a process stopped with SIGSTOP: its TCP connection stays up and silent.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from concurrent.futures import Future

import pika
import pytest

from roger.broker import state_client as sc
from roger.core import naming
from roger.core import state as st
from tests.integration.state_loop import StateLoop
from tests.integration.support import delete_queues

pytestmark = pytest.mark.integration

HOLDER_HEARTBEAT = 5  # seconds; the broker noticed a silent client after ~16 s (measured)
CLIENT_WAIT = 3.0  # QUEUE_KEY_LOCK_WAIT in this test: well before the broker notices
FREED_WITHIN = 180.0  # seconds: a bound for a loaded machine (the broker notices in ~16-40 s)


# Takes the key's lock the way every reader and writer of a token does, then idles.
def _cleanup(conn: pika.BlockingConnection, partition: str, key: str) -> None:
    names = [
        naming.queue_key_queue_name(partition, key),
        naming.queue_key_lock_name(partition, key),
    ]
    names += [naming.control_stream_name(partition), naming.workers_stream_name(partition)]
    delete_queues(conn, [*names, naming.pause_stream_name(partition, "default")])


LOCK_AND_IDLE = """
import sys, pika
conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
conn.channel().queue_declare(sys.argv[2], exclusive=True, auto_delete=False)
print("locked", flush=True)
while True:
    conn.process_data_events(1)
"""


def test_a_key_locked_by_a_vanished_client_is_freed_once_the_broker_drops_the_lock(
    amqp_url: str,
    unique_name: str,
    conn: pika.BlockingConnection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    p, key = unique_name, "nightly-report"
    monkeypatch.setattr(st, "QUEUE_KEY_LOCK_WAIT", CLIENT_WAIT)
    assert sc.take_queue_key(conn, p, key, "job-1", "default")
    assert sc.hold_queue_key(conn, p, key, "job-1")
    worker = StateLoop(amqp_url, p, ["default"])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LOCK_AND_IDLE,
            f"{amqp_url}{'&' if '?' in amqp_url else '?'}heartbeat={HOLDER_HEARTBEAT}",
            naming.queue_key_lock_name(p, key),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        holder.send_signal(signal.SIGSTOP)  # its host is gone: nothing more from it
        with pytest.raises(TimeoutError, match="stayed locked"):
            sc.queue_key_holder(conn, p, key)  # a client gives up after its wait

        caplog.set_level(logging.INFO, logger="roger.state")
        started = time.monotonic()
        freed = worker.call(
            lambda done: worker.state.release_queue_key(key, "job-1", done),
            timeout=FREED_WITHIN,
        )
        waited = time.monotonic() - started
        said = [r.getMessage() for r in caplog.records if r.name == "roger.state"]
        assert freed is True, said
        assert waited > CLIENT_WAIT, "the broker dropped the lock early: nothing was proven"
        assert any("still trying to free it" in line for line in said), said
        print(f"freed after {waited:.1f}s; the worker said: {said}")
        assert sc.queue_key_holder(conn, p, key) is None
        assert sc.take_queue_key(conn, p, key, "job-2", "default")  # the next job gets in
    finally:
        holder.kill()
        holder.wait(10)
        worker.close()
        _cleanup(conn, p, key)


def test_a_release_cut_short_by_a_lost_connection_runs_again_on_the_next_one(
    amqp_url: str, unique_name: str, conn: pika.BlockingConnection
) -> None:
    """The worker settled a job and was freeing its key when its connection dropped (here
    it waits for a lock another client holds): the next connection frees the key. Before,
    the release was simply gone and the key stayed held for days."""
    p, key = unique_name, "sync-user-42"
    assert sc.take_queue_key(conn, p, key, "job-1", "default")
    assert sc.hold_queue_key(conn, p, key, "job-1")
    worker = StateLoop(amqp_url, p, ["default"])
    other = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        other.channel().queue_declare(
            naming.queue_key_lock_name(p, key), exclusive=True, auto_delete=False
        )
        freed: Future[bool] = Future()
        worker.ioloop.add_callback_threadsafe(
            lambda: worker.state.release_queue_key(key, "job-1", freed.set_result)
        )
        time.sleep(1.0)  # the release is waiting for the lock
        assert not freed.done()
        worker.reconnect(amqp_url)
        other.close()  # the lock is free: only the new connection can free the key now
        assert freed.result(FREED_WITHIN) is True
        assert sc.queue_key_holder(conn, p, key) is None
        assert sc.take_queue_key(conn, p, key, "job-2", "default")
        # run again, a release never frees a newer job's key
        worker.reconnect(amqp_url)
        assert sc.queue_key_holder(conn, p, key) == "job-2"
    finally:
        if other.is_open:
            other.close()
        worker.close()
        _cleanup(conn, p, key)
