"""Queue keys under concurrency: never two holders, and no key left held for days.

Regression: a key's token was read by taking it (``basic.get``) and putting it back. While
it was out, ``x-max-length: 1`` did not count it, so a concurrent take was confirmed:
two jobs held one key. Every reader and writer of a key's token now holds the key's lock.
"""

from __future__ import annotations

import threading
import time

import pika
import pytest

from roger.broker import state_client as sc
from roger.core import naming
from roger_devtools.polling import eventually
from tests.integration.state_loop import StateLoop
from tests.integration.support import delete_queues

pytestmark = pytest.mark.integration
ROUNDS = 20
PENDING = 5.0  # the pending hold of the key whose job is published (seconds)


def _cleanup(conn: pika.BlockingConnection, partition: str, keys: list[str]) -> None:
    names = [naming.queue_key_queue_name(partition, k) for k in keys]
    names += [naming.queue_key_lock_name(partition, k) for k in keys]
    names += [naming.control_stream_name(partition), naming.workers_stream_name(partition)]
    names += [naming.pause_stream_name(partition, "default")]
    delete_queues(conn, names)


def test_no_take_succeeds_while_the_holder_is_peeked_and_refused_releases(
    amqp_url: str, unique_name: str, conn: pika.BlockingConnection
) -> None:
    """A key held by one job throughout: three takers hammer it while peekers read the
    holder and non-holders (a client and a worker) try to release it, for 20 rounds. Not
    one take may succeed. Before the fix, takes got in within the first rounds.

    Six connections hammering one key's lock on a broker loaded by other tests can keep a
    client waiting past ``QUEUE_KEY_LOCK_WAIT``: its call fails with ``TimeoutError``, as
    documented. That is counted, not failed; any other error fails the test."""
    p = unique_name
    worker = StateLoop(amqp_url, p, ["default"])
    keys: list[str] = []
    stolen: list[str] = []
    refusals: list[str] = []
    timeouts: list[TimeoutError] = []
    errors: list[BaseException] = []
    conns = [pika.BlockingConnection(pika.URLParameters(amqp_url)) for _ in range(5)]
    try:
        for round_ in range(ROUNDS):
            key = f"race-{round_}"
            keys.append(key)
            assert sc.take_queue_key(conn, p, key, "holder", "default")
            assert sc.hold_queue_key(conn, p, key, "holder")
            stop = threading.Event()

            def taker(i: int, key: str = key, stop: threading.Event = stop) -> None:
                c = conns[i]
                try:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        if sc.take_queue_key(c, p, key, f"taker-{i}-{n}", "default"):
                            stolen.append(f"{key} by taker-{i}-{n}")
                        else:
                            refusals.append(key)
                except TimeoutError as exc:
                    timeouts.append(exc)
                except BaseException as exc:
                    errors.append(exc)

            def peeker(i: int, stop: threading.Event = stop, key: str = key) -> None:
                c = conns[i]
                try:
                    while not stop.is_set():
                        assert sc.queue_key_holder(c, p, key) == "holder"
                        assert not sc.release_queue_key(c, p, key, "intruder")
                except TimeoutError as exc:
                    timeouts.append(exc)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=taker, args=(i,)) for i in range(3)]
            threads += [threading.Thread(target=peeker, args=(i,)) for i in (3, 4)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:  # the worker's refused release peeks too
                refused = worker.call(lambda d, k=key: worker.state.release_queue_key(k, "old", d))
                assert refused is False
            stop.set()
            for t in threads:
                t.join(30)
            assert not errors, errors
            assert not stolen, f"a second holder took a held key: {stolen[:5]}"
            assert sc.queue_key_holder(conn, p, key) == "holder"
            assert worker.call(lambda d, k=key: worker.state.release_queue_key(k, "holder", d))
            assert sc.queue_key_holder(conn, p, key) is None
        print(f"{len(refusals)} takes refused, {len(timeouts)} calls timed out waiting for a lock")
        assert len(set(refusals)) >= ROUNDS // 2, "the takers hardly ever got to try"
    finally:
        worker.close()
        for c in conns:
            c.close()
        _cleanup(conn, p, keys)


def test_a_key_taken_but_never_published_frees_itself_soon(
    unique_name: str, conn: pika.BlockingConnection
) -> None:
    """A client that dies between taking a key and publishing its job: the key is free
    again after the pending hold (seconds here, a minute by default), not days. A key
    whose job was published (``hold_queue_key``) stays held past it."""
    p = unique_name
    try:
        # "kept" is held first: its hold must come within its pending hold, and each locked
        # step can take seconds on a broker busy with other tests' quorum queues
        kept_taken = time.monotonic()
        assert sc.take_queue_key(conn, p, "kept", "published", "default", pending_hold=PENDING)
        assert sc.hold_queue_key(conn, p, "kept", "published")
        assert sc.take_queue_key(conn, p, "orphan", "never-published", "default", pending_hold=1)
        assert not sc.take_queue_key(conn, p, "orphan", "second", "default")
        eventually(lambda: sc.take_queue_key(conn, p, "orphan", "second", "default"), 30)
        time.sleep(max(0.0, kept_taken + PENDING + 0.5 - time.monotonic()))  # past kept's too
        assert sc.queue_key_holder(conn, p, "orphan") == "second"
        assert sc.queue_key_holder(conn, p, "kept") == "published"
        assert not sc.take_queue_key(conn, p, "kept", "third", "default")
        # a hold after the job already left (the worker freed the key first) takes nothing
        assert sc.release_queue_key(conn, p, "kept", "published")
        assert not sc.hold_queue_key(conn, p, "kept", "published")
        assert sc.queue_key_holder(conn, p, "kept") is None
    finally:
        _cleanup(conn, p, ["orphan", "kept"])
