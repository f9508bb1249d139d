"""``roger jobs``, ``roger purge`` and ``roger info`` without a partition, on the real broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import roger
from roger.core import naming
from roger_devtools.polling import eventually
from roger_devtools.workers import Workers
from tests.integration.support import MGMT, Broker
from tests.integration.support import roger as roger_cli
from tests.integration.test_buried_admin import bury_legacy, declare
from tests.jobs import basic

pytestmark = pytest.mark.integration


def test_jobs_lists_queued_jobs_in_place_and_running_ones(
    workers: Workers, client: roger.Client, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    workers.start(queues=["default=1"])
    running = client.enqueue(unique_name, basic.slow, {"sleep": 30, "out": str(tmp_path / "o")})
    eventually(lambda: (tmp_path / "o").exists(), 20, message="slow job started")
    queued = [client.enqueue(unique_name, basic.ok, {"n": n}) for n in range(5)]
    main = naming.queue_name(unique_name, "default")
    eventually(lambda: broker.count(main) == 5, 10, message="5 queued")

    def shown() -> dict[str, object]:
        out = roger_cli("jobs", unique_name, "--limit", "3", "--json", amqp_url=workers.amqp_url)
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def running_ids(data: dict[str, object]) -> list[str]:
        return [r["id"] for w in data["workers"] for r in w["running"]]  # type: ignore[attr-defined,index]

    def with_running() -> dict[str, object] | None:
        d = shown()
        return d if running_ids(d) == [running] else None

    data = eventually(with_running, 20, message="the running job in the worker's status")
    assert [r["id"] for r in data["queued"]["default"]] == queued[:3]  # type: ignore[index]
    again = shown()
    assert [r["id"] for r in again["queued"]["default"]] == queued[:3]  # type: ignore[index]
    # the cost of looking: one more delivery counted for each job listed, per listing
    before = [r["deliveries"] for r in data["queued"]["default"]]  # type: ignore[index]
    after = [r["deliveries"] for r in again["queued"]["default"]]  # type: ignore[index]
    assert after == [n + 1 for n in before]
    assert broker.count(main) == 5  # nothing consumed


def test_purge_asks_counts_and_removes_queued_and_buried_jobs(
    amqp_url: str, client: roger.Client, broker: Broker, unique_name: str
) -> None:
    declare(broker, unique_name)
    for n in range(4):
        client.enqueue(unique_name, basic.ok, {"n": n})
    bury_legacy(broker, unique_name, ["b1", "b2"])
    main = naming.queue_name(unique_name, "default")
    declined = roger_cli("purge", unique_name, "--queue", "default", amqp_url=amqp_url, input="n\n")
    assert declined.returncode == 5 and "purge 4 queued job(s)" in declined.stdout
    assert broker.count(main) == 4
    done = roger_cli(
        "purge", unique_name, "--queue", "default", "--buried", amqp_url=amqp_url, input="y\n"
    )
    assert done.returncode == 0, done.stderr
    assert "and 2 buried job(s)" in done.stdout and f"{main}: 4 removed" in done.stdout
    assert broker.count(main) == 0 and client.buried(unique_name) == []
    client.enqueue(unique_name, basic.ok, {})
    quiet = roger_cli("purge", unique_name, "--queue", "default", "--yes", amqp_url=amqp_url)
    assert quiet.returncode == 0 and f"{main}: 1 removed" in quiet.stdout


def test_info_without_a_partition_lists_every_partition(
    amqp_url: str, client: roger.Client, broker: Broker, unique_name: str
) -> None:
    declare(broker, unique_name)
    client.enqueue(unique_name, basic.ok, {})
    bury_legacy(broker, unique_name, ["b1"])

    def ours() -> dict[str, object] | None:
        out = roger_cli("info", "--json", "--management-url", MGMT, amqp_url=amqp_url)
        assert out.returncode == 0, out.stderr
        found = [p for p in json.loads(out.stdout) if p["partition"] == unique_name]
        q = found[0]["queues"]["default"] if found else None
        return q if q and q["ready"] == 1 and q["buried"] == 1 else None  # stats lag a little

    eventually(ours, 30, interval=1.0, message="the partition in roger info")
    table = roger_cli("info", "--management-url", MGMT, amqp_url=amqp_url)
    assert table.returncode == 0, table.stderr
    assert any(line.split()[:2] == [unique_name, "default"] for line in table.stdout.splitlines())
