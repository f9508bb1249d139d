"""One ``roger.Client`` shared by threads, forked processes and asyncio, on the real broker.

Every test counts the jobs in the queue by id: each enqueue that returned an id must be
there exactly once, and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest

import roger
from roger.core import naming
from roger_devtools.polling import eventually
from tests.integration.support import Broker, management
from tests.jobs import basic, keyed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def ids_in(broker: Broker, queue: str) -> Counter[str]:
    return Counter(json.loads(body)["id"] for _props, body in broker.drain(queue))


def queue_names_of(partition: str) -> set[str]:
    return {q["name"] for q in management("/queues/%2F?columns=name")} & {
        f"{partition}-default",
        f"{partition}-other",
    }


def test_32_threads_share_one_client(
    client: roger.Client, broker: Broker, unique_name: str
) -> None:
    per_thread, returned, errors = 40, [], []
    lock = threading.Lock()
    start = threading.Barrier(32)

    def produce(t: int) -> None:
        start.wait()
        try:
            for n in range(per_thread):
                job_id = client.enqueue(unique_name, basic.noop, {"t": t, "n": n})
                with lock:
                    returned.append(job_id)
        except Exception as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(32)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors[:3]
    assert len(returned) == 32 * per_thread
    found = ids_in(broker, f"{unique_name}-default")
    assert found == Counter(returned)  # every id once, nothing else
    assert client._links.publisher is not None and client._links.publisher._pub_ch is not None


_FORKING_SERVER = """
import json, os, sys
import roger
from tests.jobs import basic

client = roger.Client(sys.argv[1])
partition, children, per_process = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
client.enqueue(partition, basic.noop, {"who": "parent-before"})  # the parent is connected
parent_sock = client._links.publisher._conn._transport._sock
parent_port = parent_sock.getsockname()[1]
pids = []
for c in range(children):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker process of a pre-forking server: same client object
        os.close(r)
        code = 0
        try:
            inherited_closed = parent_sock.fileno() == -1
            ids = [client.enqueue(partition, basic.noop, {"who": c, "n": n})
                   for n in range(per_process)]
            many = client.enqueue_many(partition, [(basic.noop, {"who": c, "m": n})
                                                   for n in range(per_process)])
            port = client._links.publisher._conn._transport._sock.getsockname()[1]
            out = {"ids": ids + [m.job_id for m in many if m.ok], "port": port,
                   "inherited_closed": inherited_closed}
        except BaseException as exc:
            out, code = {"error": repr(exc)}, 1
        os.write(w, json.dumps(out).encode())
        os.close(w)
        os._exit(code)
    os.close(w)
    pids.append((pid, r))
ids = [client.enqueue(partition, basic.noop, {"who": "parent", "n": n})
       for n in range(per_process)]  # the parent goes on while its children publish
reports = []
for pid, r in pids:
    with os.fdopen(r) as fh:
        reports.append(json.loads(fh.read()))
    _, status = os.waitpid(pid, 0)
    reports[-1]["status"] = status
ids.append(client.enqueue(partition, basic.noop, {"who": "parent-after"}))
same = client._links.publisher._conn._transport._sock is parent_sock
print(json.dumps({"parent_ids": ids, "parent_port": parent_port, "children": reports,
                  "parent_kept_its_connection": same}))
client.close()
"""


def test_forked_children_reconnect_and_never_share_the_socket(
    amqp_url: str, broker: Broker, unique_name: str
) -> None:
    children, per_process = 4, 25
    r = subprocess.run(
        [sys.executable, "-c", _FORKING_SERVER, amqp_url, unique_name, str(children), "25"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    kids = report["children"]
    assert all("error" not in k and k["status"] == 0 for k in kids), kids
    # each child: its inherited socket closed at fork, a connection of its own
    assert all(k["inherited_closed"] for k in kids)
    ports = [report["parent_port"], *(k["port"] for k in kids)]
    assert len(set(ports)) == len(ports), ports
    assert report["parent_kept_its_connection"]  # no child broke the parent's connection
    expected = Counter(report["parent_ids"])
    for k in kids:
        assert len(k["ids"]) == 2 * per_process
        expected.update(k["ids"])
    found = ids_in(broker, f"{unique_name}-default")
    assert sum(found.values()) == 1 + len(expected.keys())  # + the parent's first job
    assert all(found[i] == 1 for i in expected), "a job is missing or twice"


def test_enqueue_many_reports_refused_keys_per_job(
    client: roger.Client, broker: Broker, unique_name: str
) -> None:
    held = client.enqueue(unique_name, keyed.unique, {"key": "held"})
    jobs = [
        (keyed.unique, {"key": "held"}),  # refused: held by the job above
        (keyed.unique, {"key": "a"}),
        (basic.noop, {"n": 1}),
        (keyed.unique, {"key": "a"}),  # refused: the one two lines up took it
        (keyed.unique, {"key": "b"}),
        (basic.noop, {"n": 2}, "other"),
    ]
    results = client.enqueue_many(unique_name, jobs)
    assert [r.status for r in results] == [
        "duplicate",
        "enqueued",
        "enqueued",
        "duplicate",
        "enqueued",
        "enqueued",
    ]
    assert results[0].queue_key == "held" and "held" in (results[0].error or "")
    assert results[3].queue_key == "a" and results[4].queue_key == "b"
    enqueued = Counter([held, *(r.job_id for r in results if r.ok)])
    found = ids_in(broker, f"{unique_name}-default") + ids_in(broker, f"{unique_name}-other")
    assert found == enqueued
    # the refused jobs left the keys to their holders
    assert client.queue_key_holder(unique_name, "a") == results[1].job_id
    assert client.queue_key_holder(unique_name, "held") == held
    assert client.release_queue_key(unique_name, "a")
    assert client.queue_key_holder(unique_name, "a") is None
    [again] = client.enqueue_many(unique_name, [(keyed.unique, {"key": "a"})])
    assert again.ok
    assert client.queue_key_holder(unique_name, "a") == again.job_id


def test_bad_input_is_refused_whole_and_nothing_is_sent(
    client: roger.Client, broker: Broker, unique_name: str
) -> None:
    jobs = [(basic.noop, {"n": 1}), (basic.noop, {"n": float("nan")}), (basic.noop, {})]
    with pytest.raises(roger.EnqueueError, match="job 1: args must be JSON"):
        client.enqueue_many(unique_name, jobs)
    with pytest.raises(roger.EnqueueError, match=r"job 0: .*module:function"):
        client.enqueue_many(unique_name, [("not a job", None)])
    with pytest.raises(naming.InvalidName):
        client.enqueue("Bad Partition", basic.noop)
    assert client.enqueue_many(unique_name, []) == []
    assert queue_names_of(unique_name) == set()  # nothing was even declared


def test_a_refused_declare_fails_its_jobs_only(
    client: roger.Client, broker: Broker, unique_name: str
) -> None:
    broker._channel().queue_declare(f"{unique_name}-classic", durable=True)  # not quorum
    results = client.enqueue_many(
        unique_name, [(basic.noop, {"n": 1}), (basic.noop, {"n": 2}, "classic")]
    )
    assert results[0].ok and results[1].status == "error"
    assert "cannot declare queue" in (results[1].error or "")
    with pytest.raises(roger.EnqueueError, match="PRECONDITION_FAILED"):
        client.enqueue(unique_name, basic.noop, {"n": 3}, queue="classic")
    ok = client.enqueue(unique_name, basic.noop, {"n": 4})  # the connection is fine
    assert ids_in(broker, f"{unique_name}-default") == Counter([results[0].job_id, ok])


def test_asyncio_gather_shares_one_client(amqp_url: str, broker: Broker, unique_name: str) -> None:
    async def main() -> tuple[list[str], list[roger.EnqueueResult], float]:
        async with roger.AsyncClient(amqp_url) as client:
            ticks = 0
            stop = asyncio.Event()

            async def heartbeat() -> None:  # the loop keeps running while we publish
                nonlocal ticks
                while not stop.is_set():
                    ticks += 1
                    await asyncio.sleep(0.001)

            beat = asyncio.create_task(heartbeat())
            ids = await asyncio.gather(
                *(client.enqueue(unique_name, basic.noop, {"n": n}) for n in range(200))
            )
            many = await client.enqueue_many(
                unique_name,
                [(keyed.unique, {"key": "k"}), (keyed.unique, {"key": "k"})],
            )
            with pytest.raises(roger.DuplicateJob):
                await client.enqueue(unique_name, keyed.unique, {"key": "k"})
            info = await client.info(unique_name)
            assert info.queues["default"].messages == 201
            stop.set()
            await beat
            return list(ids), many, ticks

    ids, many, ticks = asyncio.run(main())
    assert ticks > 5
    assert len(set(ids)) == 200
    assert [r.status for r in many] == ["enqueued", "duplicate"]
    assert ids_in(broker, f"{unique_name}-default") == Counter([*ids, many[0].job_id])


def test_cli_enqueue_file(amqp_url: str, broker: Broker, unique_name: str, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    lines = [
        {"job": "tests.jobs.basic:noop", "args": {"n": 1}},
        {"job": "tests.jobs.keyed:unique", "args": {"key": "x"}},
        {},
        {"job": "tests.jobs.keyed:unique", "args": {"key": "x"}},
    ]
    path.write_text("\n".join(json.dumps(x) if x else "" for x in lines) + "\n")
    env = {**os.environ, "ROGER_AMQP_URL": amqp_url, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "roger.cli", "enqueue", unique_name, "--file", str(path)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr  # one duplicate
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["status"] for o in out] == ["enqueued", "enqueued", "duplicate"]
    found = ids_in(broker, f"{unique_name}-default")
    assert found == Counter(o["job_id"] for o in out if o["status"] == "enqueued")
    path.write_text('{"job": "tests.jobs.basic:noop"}\n{"job": 3}\n')
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "line 2" in r.stderr and "Traceback" not in r.stderr
    assert ids_in(broker, f"{unique_name}-default") == Counter()  # nothing from a bad file


def test_a_lost_connection_is_replaced_on_the_next_enqueue(
    amqp_url: str, broker: Broker, unique_name: str
) -> None:
    with roger.Client(amqp_url, name=unique_name) as client:
        first = client.enqueue(unique_name, basic.noop, {"n": 1})

        def ours() -> list[str]:
            return [
                c["name"]
                for c in management("/connections?columns=name,client_properties")
                if c.get("client_properties", {}).get("connection_name") == unique_name
            ]

        for name in eventually(
            ours, 30
        ):  # the broker drops them (as on a restart or a network cut)
            management(f"/connections/{urllib.parse.quote(name, safe='')}", method="DELETE")
        ids = [client.enqueue(unique_name, basic.noop, {"n": n}) for n in range(2, 12)]
        threads_ids: list[str] = []
        workers = [
            threading.Thread(
                target=lambda: threads_ids.append(client.enqueue(unique_name, basic.noop))
            )
            for _ in range(8)
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join(60)
    found = ids_in(broker, f"{unique_name}-default")
    assert found == Counter([first, *ids, *threads_ids])


def test_32_threads_racing_for_one_key_enqueue_exactly_one_job(
    client: roger.Client, broker: Broker, unique_name: str
) -> None:
    won: list[str] = []
    refused: list[roger.DuplicateJob] = []
    start = threading.Barrier(32)

    def race() -> None:
        start.wait()
        try:
            won.append(client.enqueue(unique_name, keyed.unique, {"key": "one"}))
        except roger.DuplicateJob as exc:
            refused.append(exc)

    threads = [threading.Thread(target=race) for _ in range(32)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(won) == 1 and len(refused) == 31
    assert ids_in(broker, f"{unique_name}-default") == Counter(won)
