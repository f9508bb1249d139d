"""A Schedule ``* * * * *`` enqueues exactly one job a minute, for 2 minutes, while its
operator leader is killed (SIGKILL) just before the first tick and a standby takes over:
the standby enqueues the tick it missed once, then the next tick on time. Beside it, the
same Schedule with ``concurrencyPolicy: Forbid`` enqueues its first job only (no worker
runs it, so its queue key stays held) and skips the next tick.

Two operator processes with leader election watch only this test's namespace (named
``test_schedule_*``: no other test operator's glob matches it). The Partition runs no
worker, so every job the Schedule enqueued is still in its queue, to be counted and named.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import yaml

from roger.core import naming
from roger_devtools.polling import eventually
from tests.e2e.operator_support import (
    OperatorProcess,
    get_or_none,
    leader_elected_operators,
    partition_manifest,
    secret_manifest,
    short_id,
)
from tests.helpers import Kubectl
from tests.integration.support import Broker

# Not exclusive: a tick's look starts at the tick (handlers.run_schedule), so its job is
# enqueued within tens of milliseconds even on a loaded machine (18 ms with both cores
# saturated by busy loops), far inside ON_TIME. `make test` runs it in a stream of its own.
pytestmark = pytest.mark.e2e
LEASE = "roger-operator-schedule-test"
TICKS = 2
ARMED = 15  # seconds at least between creating the Schedules and their first tick
ON_TIME = 1.0  # seconds after its tick by which an undisturbed tick's job is enqueued


@pytest.fixture
def operators(
    kubectl: Kubectl, namespace: str, kubeconfig: str, amqp_url: str, tmp_path: Path
) -> Iterator[list[OperatorProcess]]:
    kubectl.apply(secret_manifest(namespace, amqp_url))
    ops = leader_elected_operators(kubeconfig, namespace, LEASE, tmp_path, "--lease-duration", "4")
    yield ops
    try:
        for kind in ("schedules", "partitions"):
            kubectl.run("-n", namespace, "delete", kind, "--all", "--wait=false", check=False)
        eventually(
            lambda: not kubectl.get_json("-n", namespace, "schedules,partitions")["items"],
            timeout=120,
            message="the test's Schedule and Partition gone",
        )
    finally:
        codes = [
            (op.stop(timeout=60), op.tail())
            for op in ops
            if op.proc is not None and op.proc.poll() is None
        ]
    for code, tail in codes:  # each Schedule's daemon ends with its operator, cleanly
        assert code == 0, f"operator exit code {code} on SIGTERM\n{tail}"
        assert "Traceback" not in tail and "did not exit in time" not in tail, tail


def leader(k: Kubectl, ns: str, ops: list[OperatorProcess]) -> OperatorProcess | None:
    lease = get_or_none(k, "-n", ns, "lease", LEASE)
    identity = str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")
    for op in ops:
        if op.proc is not None and op.proc.poll() is None and identity.endswith(f"-{op.proc.pid}"):
            return op
    return None


def queued(amqp_url: str, queue: str) -> list[tuple[str, float]]:
    """(job id, queued_at) of every job in the queue, left there (the channel close
    returns them)."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        out = []
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=False)
            if method is None:
                return out
            out.append((str(props.message_id), float(json.loads(body)["queued_at"])))
    except pika.exceptions.ChannelClosedByBroker:
        return []
    finally:
        if conn.is_open:
            conn.close()


def tick_of(job_id: str) -> datetime.datetime:
    stamp = job_id.rsplit(".", 1)[1]
    return datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)


def test_schedule_enqueues_one_job_a_minute_across_a_leader_kill(
    operators: list[OperatorProcess], kubectl: Kubectl, namespace: str, amqp_url: str
) -> None:
    pid = short_id()
    queue = naming.queue_name(pid, "default")
    kubectl.apply(partition_manifest(pid, namespace, worker={"replicas": 0}))
    schedule = {
        "apiVersion": "roger.dev/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": "every-minute", "namespace": namespace},
        "spec": {
            "partitionRef": {"name": pid},
            "schedule": "* * * * *",
            "job": "tests.jobs.basic:ok",
            "args": {"n": "tick"},
        },
    }
    # The first tick is the next minute: the Schedules are created at least ARMED seconds
    # before it (the leader has read them by then), and after the minute before it (whose
    # tick would come first). creationTimestamp has whole seconds: 2 s past that minute.
    if 60 - time.time() % 60 < ARMED:
        time.sleep(60 - time.time() % 60 + 2)
    first_tick = math.floor(time.time() / 60) * 60 + 60
    kubectl.apply(yaml.safe_dump(schedule))
    forbid = {
        **schedule,
        "metadata": {"name": "forbid", "namespace": namespace},
        "spec": {**schedule["spec"], "queue": "email", "concurrencyPolicy": "Forbid"},
    }
    kubectl.apply(yaml.safe_dump(forbid))
    t0 = time.time()
    email = naming.queue_name(pid, "email")
    try:
        _run(operators, kubectl, namespace, amqp_url, queue, email, t0, first_tick)
    finally:
        broker = Broker(amqp_url)
        broker.delete_partition(pid)
        broker.close()


def _run(
    operators: list[OperatorProcess],
    kubectl: Kubectl,
    namespace: str,
    amqp_url: str,
    queue: str,
    email: str,
    t0: float,
    first_tick: float,
) -> None:

    def jobs() -> list[tuple[str, float]]:
        return queued(amqp_url, queue)

    # Kill the leader 3 s before the first tick: the standby takes the Lease (4 s) and
    # enqueues the tick it missed, once; the next tick is undisturbed.
    time.sleep(max(0.0, first_tick - 3 - time.time()))
    assert not jobs(), "a job before the first tick"
    killed = leader(kubectl, namespace, operators)
    assert killed is not None, "no leader holds the Lease"
    killed.stop(signal.SIGKILL)
    killed.start(timeout=120)  # back as the standby
    eventually(lambda: len(jobs()) >= TICKS, timeout=first_tick + 90 - time.time())
    time.sleep(5)  # nothing more for the ticks passed (the next one is ~55 s away)

    got = jobs()
    ticks = [tick_of(j) for j, _ in got]
    print(f"ran {time.time() - t0:.0f}s; jobs {[j for j, _ in got]}")
    lates = [q - t.timestamp() for (_, q), t in zip(got, ticks, strict=True)]
    print(f"enqueued after their tick by {[round(x, 3) for x in lates]} s")
    assert len(got) == TICKS and len(set(ticks)) == TICKS, got
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)] == [60]
    assert tick_of(got[0][0]).timestamp() == first_tick, got
    assert lates[0] <= 20, "the standby enqueues the missed tick once it leads"
    assert lates[1] <= ON_TIME, lates  # the next tick, undisturbed, on time
    status = kubectl.get_json("-n", namespace, "schedule", "every-minute")["status"]
    assert status["lastJobId"] == got[-1][0]
    assert status["lastScheduleTime"] == ticks[-1].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["conditions"][0]["reason"] in ("Enqueued", "Scheduled")
    [(first, _)] = queued(amqp_url, email)  # Forbid: one job, its key held since
    assert tick_of(first) == ticks[0], first
    forbidden = kubectl.get_json("-n", namespace, "schedule", "forbid")["status"]
    assert forbidden["lastJobId"] == first
    assert forbidden["lastScheduleTime"] == status["lastScheduleTime"]  # skipped ticks count
    assert forbidden["conditions"][0]["reason"] in ("Skipped", "Scheduled")
