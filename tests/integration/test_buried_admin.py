"""``roger buried list|show|replay|drop`` on the real broker (docs/admin.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pika
import pytest

import roger
from roger.core import buried as bu
from roger.core import naming, topology
from roger_devtools.polling import eventually
from roger_devtools.workers import Workers
from tests.integration.support import ROOT, Broker, bury_legacy, declare, env, read_lines
from tests.integration.support import roger as roger_cli
from tests.jobs import basic

pytestmark = pytest.mark.integration


def listed(partition: str, amqp_url: str, *extra: str) -> list[dict[str, Any]]:
    out = roger_cli("buried", "list", partition, "-o", "json", *extra, amqp_url=amqp_url)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def ids_in_queue(broker: Broker, queue: str) -> Counter[str]:
    return Counter(json.loads(body)["id"] for _props, body in broker.drain(queue))


def test_worker_burial_listed_shown_replayed_and_buried_again(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    workers.start(ready=False).wait_ready(90)  # declares are slow on a loaded shared broker
    ids = [
        client.enqueue(unique_name, basic.fails_once_not_retryable, {"n": n, "out": str(out)})
        for n in range(2)
    ]
    intake = naming.buried_queue_name(unique_name, "default")
    eventually(lambda: broker.count(intake) == 2, 20, message="burials")
    first = listed(unique_name, workers.amqp_url)
    assert sorted(j["id"] for j in first) == sorted(ids)
    assert {j["error_kind"] for j in first} == {"KeyError"}
    assert all(j["attempts"] == 1 and j["reason"] == "not_retryable" for j in first)
    # read by offset: listing again consumes and reorders nothing
    assert listed(unique_name, workers.amqp_url) == first
    assert broker.count(intake) == 0  # filed into the log, where it stays
    shown = roger_cli("buried", "show", unique_name, ids[0], amqp_url=workers.amqp_url)
    detail = json.loads(shown.stdout)
    assert detail["args"]["n"] == 0 and detail["error_kind"] == "KeyError", shown.stderr
    assert "KeyError" in (detail["stacktrace"] or "")

    replay = roger_cli("buried", "replay", unique_name, "--id", ids[0], amqp_url=workers.amqp_url)
    assert replay.returncode == 0 and f"replayed {ids[0]}" in replay.stdout, replay.stderr
    eventually(lambda: broker.count(intake) == 1, 20, message="buried again")
    runs = [line[1] for line in read_lines(out)]
    assert sorted(runs) == ["0", "0", "1"]  # ran again once, as a fresh attempt
    again = {j["id"]: j for j in listed(unique_name, workers.amqp_url)}
    assert set(again) == set(ids)
    assert again[ids[0]]["replayed_count"] == 1 and again[ids[1]]["replayed_count"] == 0
    assert again[ids[0]]["attempts"] == 1  # retry_count was reset


def test_replay_bound_dry_run_and_force(amqp_url: str, broker: Broker, unique_name: str) -> None:
    declare(broker, unique_name)
    bury_legacy(broker, unique_name, ["tired"], **{bu.REPLAYED_COUNT: bu.MAX_REPLAYS})
    bury_legacy(broker, unique_name, ["fresh"])
    dry = roger_cli("buried", "replay", unique_name, "--all", "--dry-run", amqp_url=amqp_url)
    assert "would replay fresh" in dry.stdout and "refused tired" in dry.stderr
    assert broker.count(naming.queue_name(unique_name, "default")) == 0
    refused = roger_cli("buried", "replay", unique_name, "--all", amqp_url=amqp_url)
    assert refused.returncode == 4 and "refused tired" in refused.stderr
    assert [j["id"] for j in listed(unique_name, amqp_url)] == ["tired"]
    forced = roger_cli("buried", "replay", unique_name, "--all", "--force", amqp_url=amqp_url)
    assert forced.returncode == 0, forced.stderr
    main = naming.queue_name(unique_name, "default")
    eventually(lambda: broker.count(main) == 2, 10, message="both replayed")
    got = {json.loads(b)["id"]: p.headers for p, b in broker.drain(main)}
    assert got["tired"][bu.REPLAYED_COUNT] == bu.MAX_REPLAYS + 1
    assert got["fresh"][bu.REPLAYED_COUNT] == 1 and bu.REPLAYED_AT in got["fresh"]
    assert listed(unique_name, amqp_url) == []


def test_drop_by_error_kind(amqp_url: str, broker: Broker, unique_name: str) -> None:
    declare(broker, unique_name)
    bury_legacy(broker, unique_name, ["a", "b"], kind="ValueError")
    bury_legacy(broker, unique_name, ["c"], kind="KeyError")
    assert [j["id"] for j in listed(unique_name, amqp_url, "--error", "KeyError")] == ["c"]
    needs = roger_cli("buried", "drop", unique_name, amqp_url=amqp_url)
    assert needs.returncode == 2  # --id or --all is required
    dry = roger_cli(
        "buried",
        "drop",
        unique_name,
        "--all",
        "--error",
        "ValueError",
        "--dry-run",
        amqp_url=amqp_url,
    )
    assert "2 would be dropped" in dry.stdout
    assert len(listed(unique_name, amqp_url)) == 3
    drop = roger_cli(
        "buried", "drop", unique_name, "--all", "--error", "ValueError", amqp_url=amqp_url
    )
    assert drop.returncode == 0 and "2 dropped" in drop.stdout, drop.stderr
    assert [j["id"] for j in listed(unique_name, amqp_url)] == ["c"]
    assert broker.count(naming.queue_name(unique_name, "default")) == 0


def test_client_api(client: roger.Client, broker: Broker, unique_name: str) -> None:
    declare(broker, unique_name)
    bury_legacy(broker, unique_name, ["x", "y"])
    assert [j.id for j in client.buried(unique_name)] == ["x", "y"]
    assert client.buried_job(unique_name, "y").args == {"id": "y"}
    report = client.replay_buried(unique_name, ids=["y"])
    assert [j.id for j in report.replayed] == ["y"]
    assert [j.id for j in client.drop_buried(unique_name, all_jobs=True)] == ["x"]
    assert client.buried(unique_name) == []


@pytest.mark.parametrize("tombstoned", [False, True])
def test_an_interrupted_move_is_finished_once(
    client: roger.Client, broker: Broker, unique_name: str, tombstoned: bool
) -> None:
    """The two windows a kill can leave: a copy in ``.replaying`` before its tombstone was
    written, and after. Either way the next replay moves it exactly once."""
    declare(broker, unique_name)
    bury_legacy(broker, unique_name, ["j1", "j2"])
    [j1, _] = client.buried(unique_name)  # files them into the log
    body, headers = bu.replayed_message(j1, time.time())
    staging = naming.replay_staging_name(unique_name, "default")
    ch = broker._channel()
    ch.queue_declare(
        staging, durable=True, arguments=topology.replay_staging_arguments(unique_name, "default")
    )
    ch.basic_publish("", staging, body, pika.BasicProperties(delivery_mode=2, headers=headers))
    if tombstoned:
        log = naming.buried_log_name(unique_name, "default")
        tomb = bu.tombstone_headers(j1.burial_id, bu.REPLAYED, time.time())
        ch.basic_publish("", log, b"", pika.BasicProperties(delivery_mode=2, headers=tomb))
    report = client.replay_buried(unique_name, all_jobs=True)
    assert report.recovered == 1 and [j.id for j in report.replayed] == ["j2"]
    main = naming.queue_name(unique_name, "default")
    eventually(lambda: broker.count(main) == 2, 10, message="moved")
    time.sleep(0.3)
    assert ids_in_queue(broker, main) == Counter({"j1": 1, "j2": 1})
    assert broker.count(staging) == 0 and client.buried(unique_name) == []


def test_replay_of_1000_killed_halfway_loses_and_duplicates_none(
    amqp_url: str, broker: Broker, unique_name: str
) -> None:
    declare(broker, unique_name)
    ids = [f"job-{n:04d}" for n in range(1000)]
    bury_legacy(broker, unique_name, ids)
    main = naming.queue_name(unique_name, "default")
    cmd = [
        sys.executable,
        "-m",
        "roger.cli",
        "--amqp-url",
        amqp_url,
        "buried",
        "replay",
        unique_name,
        "--all",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        eventually(lambda: broker.count(main) >= 300, 60, interval=0.02, message="halfway")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    moved = broker.count(main)
    assert 0 < moved < 1000, moved  # it was interrupted
    again = roger_cli("buried", "replay", unique_name, "--all", amqp_url=amqp_url, timeout=120)
    assert again.returncode == 0, again.stderr
    eventually(lambda: broker.count(main) >= 1000, 20, message="all moved")
    time.sleep(0.5)
    got = ids_in_queue(broker, main)
    assert set(got) == set(ids), f"lost {len(set(ids) - set(got))}"
    assert [i for i, n in got.items() if n > 1] == []
    assert listed(unique_name, amqp_url) == []


def test_a_full_buried_queue_drops_its_oldest_job_counted_and_logged(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str
) -> None:
    w = workers.start(queues=["default=1"], extra=["--buried-max-length", "2"], ready=False)
    w.wait_ready(90)  # declares are slow on a loaded shared broker
    intake = naming.buried_queue_name(unique_name, "default")
    ids = []
    for n in range(3):
        ids.append(client.enqueue(unique_name, basic.fails_once_not_retryable, {"n": n}))
        if n < 2:  # (the third leaves the count at 2: its burial is seen by the drop below)
            eventually(lambda n=n: broker.count(intake) == n + 1, 60, message="buried")
    eventually(
        lambda: w.metric("roger_buried_dropped_total", queue="default") == 1,
        60,
        message="the drop counted",
    )
    assert f"buried job {ids[0]}" in w.output() and "dropped" in w.output()
    assert sorted(json.loads(b)["id"] for _p, b in broker.peek(intake)) == sorted(ids[1:])
