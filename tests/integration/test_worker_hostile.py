"""Hostile messages in a live worker: it neither stops nor reconnects, and every message
ends exactly once in succeeded, ``.buried`` or ``.invalid`` (issue 12).

Before the fixes, each of these took a worker down or into a reconnect loop: a number
that is no float (the issue's two messages), a retry whose properties pika could not write
(an infinite or negative ``queued_at``, an id of more than 255 bytes, a lone surrogate in an
error message), deep nesting (RecursionError re-encoding a retry), headers pika could not
read (a timestamp past 9999, arrays nested thousands deep) or that grew past the frame size
when parked; and a UTF-16 job killed its job process.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pika
import pytest

from roger_devtools.polling import eventually
from roger_devtools.workers import WorkerProc, Workers
from tests.integration import hostile_messages as hm
from tests.integration.support import Broker, management, read_lines

pytestmark = pytest.mark.integration


def _connections(partition: str) -> list[tuple[str, Any]]:
    """(name, connected_at) of the broker connections of this partition's workers."""
    prefix = f"roger-worker {partition} "
    conns = management("/connections?columns=name,client_properties,connected_at")
    return sorted(
        (c["name"], c.get("connected_at"))
        for c in conns
        if str((c.get("client_properties") or {}).get("connection_name", "")).startswith(prefix)
    )


class Publisher:
    """Publishes in transactions of ``batch`` messages: each commit returns once the
    broker has them all (a refused message fails the test), without a round trip each."""

    def __init__(self, amqp_url: str, batch: int = 1) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.ch = self.conn.channel()
        self.ch.tx_select()
        self.batch, self.uncommitted = batch, 0

    def publish(self, queue: str, body: bytes, message_id: str, headers: Any = None) -> None:
        props = pika.BasicProperties(delivery_mode=2, message_id=message_id, headers=headers)
        with hm.raw_fields():
            self.ch.basic_publish("", queue, body, props)
        self.uncommitted += 1
        if self.uncommitted >= self.batch:
            self.commit()

    def commit(self) -> None:
        self.ch.tx_commit()
        self.uncommitted = 0

    def close(self) -> None:
        if self.conn.is_open:
            if self.uncommitted:
                self.commit()
            self.conn.close()


def _outcomes(broker: Broker, main: str, out: Path) -> dict[str, list[str]]:
    """Where each case id ended: succeeded (the job's record), .buried or .invalid."""
    found: dict[str, list[str]] = {}
    for row in read_lines(out):
        if row[0] == "ok":
            found.setdefault(row[1], []).append("succeeded")
    for _props, body in broker.drain(f"{main}.buried"):
        found.setdefault(str(json.loads(body)["args"]["case"]), []).append("buried")
    for props, _ in broker.drain(f"{main}.invalid"):
        found.setdefault(str(props.message_id), []).append("invalid")
    return found


def _settled(broker: Broker, main: str, out: Path, total: int) -> bool:
    if broker.count(main) or broker.count(f"{main}.retry.1"):
        return False
    done = sum(r[0] == "ok" for r in read_lines(out))
    return done + broker.count(f"{main}.buried") + broker.count(f"{main}.invalid") >= total


def _assert_untouched(w: WorkerProc, partition: str, before: list[tuple[str, Any]]) -> None:
    assert w.proc.poll() is None, w.output()[-3000:]
    assert w.metric("roger_broker_reconnects_total") == 0
    assert _connections(partition) == before  # the same one connection, never reopened
    log = w.output()
    assert "AMQP connection lost" not in log and "exited (code" not in log, log[-3000:]


def _job(case: int, name: str, out: Path | None = None, **fields: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"case": case, "n": case}
    if out is not None:
        args["out"] = str(out)
    return {"id": f"c{case}", "name": name, "args": args, "queue": "default", **fields}


def test_the_issues_hostile_messages_neither_stop_nor_reconnect_the_worker(
    workers: Workers, broker: Broker, amqp_url: str, unique_name: str, tmp_path: Path
) -> None:
    out, main = tmp_path / "out", f"{unique_name}-default"
    w = workers.start(queues=["default=2"], retry_levels="1")
    before = eventually(
        lambda: _connections(unique_name), timeout=15.0, message="the worker's connection"
    )
    ok, flaky = "tests.jobs.basic:ok", "tests.jobs.basic:flaky"
    dump = json.dumps
    cases: list[tuple[bytes, Any, str]] = [
        (hm.ISSUE_INF, None, "invalid"),
        (hm.ISSUE_BIGINT, None, "invalid"),
        (dump(_job(2, flaky)).encode()[:-1] + b',"queued_at":1e400}', None, "invalid"),
        (dump(_job(3, flaky, queued_at=-5)).encode(), None, "buried"),
        (dump(_job(4, flaky, queued_at=1e300)).encode(), None, "buried"),
        (dump({**_job(5, flaky), "id": "😀" * 128}).encode(), None, "buried"),
        (dump({**_job(6, flaky), "args": {"case": 6, "n": "\ud800"}}).encode(), None, "buried"),
        (dump({**_job(7, flaky), "args": {"case": 7, "d": [[[[]]]] * 2}}).encode(), None, "buried"),
        (
            dump(_job(8, flaky))
            .replace('"n": 8', '"n": 8, "deep": ' + "[" * 900 + "]" * 900)
            .encode(),
            None,
            "invalid",
        ),
        (dump(_job(9, ok, out)).encode("utf-16"), None, "succeeded"),
        (dump(_job(10, ok, out)).encode("utf-8-sig"), None, "succeeded"),
        (b"garbage", {"ts": hm.timestamp(2**63)}, "invalid"),
        (b"garbage", {"deep": hm.nested_array(3000)}, "invalid"),
        (b"garbage", {"deep": hm.nested_table(1500)}, "invalid"),
        (b"garbage", {f"big{i}": "é" * 500 for i in range(115)}, "invalid"),
        (dump(_job(15, ok, out)).encode(), {"float": hm.double(1e300)}, "succeeded"),
        (dump(_job(16, ok, out, queue="elsewhere")).encode(), None, "invalid"),
        (dump(_job(17, ok, out)).encode(), None, "succeeded"),
    ]
    pub = Publisher(amqp_url)
    try:
        for i, (body, headers, _) in enumerate(cases):
            pub.publish(main, body, message_id=str(i), headers=headers)
    finally:
        pub.close()
    eventually(
        lambda: _settled(broker, main, out, len(cases)), timeout=60, message="every case settled"
    )
    _assert_untouched(w, unique_name, before)
    found = _outcomes(broker, main, out)
    assert found == {str(i): [where] for i, (_, _, where) in enumerate(cases)}


def test_a_job_naming_a_queue_the_partition_does_not_consume_is_parked_not_run(
    workers: Workers, broker: Broker, unique_name: str, tmp_path: Path
) -> None:
    out, main = tmp_path / "out", f"{unique_name}-default"
    w = workers.start(queues=["default=1"])
    stray = _job(1, "tests.jobs.basic:ok", out, queue="mail", execution_key="k")
    broker.publish(main, json.dumps(stray).encode(), message_id="stray")
    broker.publish(main, json.dumps(_job(2, "tests.jobs.basic:ok", out)).encode())
    eventually(lambda: read_lines(out), timeout=15.0, message="the right one ran")
    [(props, body)] = eventually(
        lambda: broker.drain(f"{main}.invalid"), timeout=15.0, message="parked"
    )
    assert json.loads(body)["queue"] == "mail" and props.message_id == "stray"
    assert props.headers["x-roger-invalid-reason"] == "wrong_queue"
    assert [r[1] for r in read_lines(out)] == ["2"]
    assert w.metric("roger_messages_parked_total", reason="wrong_queue") == 1


def _max_message_size() -> int:
    """The broker's default ``max_message_size`` (this project's brokers keep it)."""
    version = str(management("/overview?columns=rabbitmq_version")["rabbitmq_version"])
    return 128 * 1024 * 1024 if version.startswith("3.") else 16 * 1024 * 1024


MALFORMED = 2000
VALID_OK = 360
VALID_FLAKY = 40


def test_fuzz_thousands_of_malformed_messages_among_valid_jobs(
    workers: Workers, broker: Broker, amqp_url: str, unique_name: str, tmp_path: Path
) -> None:
    """2,000+ malformed messages with hostile headers, large bodies up to the broker's
    maximum, mixed with valid (some odd) jobs: same process, never reconnected, and every
    message in exactly the place it belongs, counted by id."""
    rng = random.Random(12)
    out, main = tmp_path / "out", f"{unique_name}-default"
    w = workers.start(
        queues=["default=8"], retry_levels="1", extra=["--buried-max-length", "10000"]
    )
    before = eventually(
        lambda: _connections(unique_name), timeout=15.0, message="the worker's connection"
    )
    messages: list[tuple[str, bytes, Any, str]] = []  # (case id, body, headers, expected)
    for n in range(MALFORMED):
        body = hm.malformed_body(rng, n, str(out))
        messages.append(
            (str(n), body, hm.hostile_headers(rng) if rng.random() < 0.5 else None, "invalid")
        )
    broker_max = _max_message_size()
    big = [
        b"\xff" * broker_max,  # the largest body the broker takes: parked with more headers
        *(rng.randbytes(rng.randrange(1 << 20, 4 << 20)) for _ in range(3)),
    ]
    if broker_max > (17 << 20):
        # A valid job over the worker's 16 MiB limit (parked as too_large) can only arrive
        # on 3.10 (128 MiB); RabbitMQ 4.0 refuses any message over 16 MiB at publish.
        big.append(
            json.dumps(_job(MALFORMED, "tests.jobs.basic:ok", out)).encode()[:-1]
            + b" " * (17 << 20)
            + b"}"
        )
    for body in big:
        messages.append((str(len(messages)), body, hm.hostile_headers(rng), "invalid"))
    for kind, count in (("tests.jobs.basic:ok", VALID_OK), ("tests.jobs.basic:flaky", VALID_FLAKY)):
        for _ in range(count):
            case = len(messages)
            body = hm.valid_body(rng, case, str(out), kind)
            messages.append(
                (
                    str(case),
                    body,
                    hm.hostile_headers(rng) if rng.random() < 0.5 else None,
                    "succeeded" if kind.endswith(":ok") else "buried",
                )
            )
    rng.shuffle(messages)
    pub = Publisher(amqp_url, batch=100)
    t0 = time.monotonic()
    try:
        for case_id, body, headers, _ in messages:
            pub.publish(main, body, message_id=case_id, headers=headers)
    finally:
        pub.close()
    published = time.monotonic() - t0
    eventually(
        lambda: _settled(broker, main, out, len(messages)),
        timeout=120,
        interval=0.5,
        message="every message settled",
    )
    settled = time.monotonic() - t0
    _assert_untouched(w, unique_name, before)
    found = _outcomes(broker, main, out)
    expected = {case: [where] for case, _, _, where in messages}
    wrong = {c: (found.get(c), e) for c, e in expected.items() if found.get(c) != e}
    assert not wrong, dict(list(wrong.items())[:20])
    assert set(found) == set(expected)
    counts = Counter(where for _, _, _, where in messages)
    assert counts["invalid"] >= 2000
    assert w.metric("roger_messages_parked_total") == counts["invalid"]
    print(
        f"{len(messages)} messages: published in {published:.1f}s, all settled after "
        f"{settled:.1f}s, checked after {time.monotonic() - t0:.1f}s: {dict(counts)}"
    )
