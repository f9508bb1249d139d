"""A queue key's lock held by a client whose host vanished: the worker still frees the key.

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
        delete_queues(
            conn,
            [
                naming.queue_key_queue_name(p, key),
                naming.queue_key_lock_name(p, key),
                naming.control_stream_name(p),
                naming.workers_stream_name(p),
                naming.pause_stream_name(p, "default"),
            ],
        )
