"""Producing jobs: Roger's client against bare pika, Celery and Dramatiq, in one run.

Every contender publishes persistent messages and waits for publisher confirms (same
durability). The ceiling is bare pika: one ``SelectConnection`` publishing everything
with pipelined confirms to a quorum queue, Roger's queue type. Peers use their own
default (classic) queues. The machine is shared and noisy, so the pipelined contenders run
in interleaved rounds and each ratio is taken within a round (median and range).

- single thread: one call at a time (``enqueue``, ``apply_async``, ``send``);
- 32 threads: one shared ``roger.Client``; Celery's producer pool; Dramatiq's
  per-thread connections;
- bulk: ``Client.enqueue_many`` (validation and encoding included in the time);
- bare pika with at most 32 unconfirmed: what 32 callers that each wait for their own
  confirm can reach at best (the broker's confirm latency bounds it, not the client).

Usage: python bench/enqueue_throughput.py [--jobs 3000] [--single 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
from pika.adapters.select_connection import SelectConnection

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "worker"), str(ROOT / "bench"), str(ROOT)]

from roger.core import message, topology  # noqa: E402
from worker_throughput import Broker, add_amqp_url  # noqa: E402


def bare_pika(url: str, n: int, window: int = 0) -> float:
    """The ceiling: n persistent messages, confirms pipelined, one connection. With a
    ``window``, at most that many unconfirmed at a time: the most ``window`` callers that
    each wait for their own confirm could ever do (a closed loop, bounded by the broker's
    confirm latency rather than by anyone's CPU)."""
    q = f"bench-enq-pika-{uuid.uuid4().hex[:6]}"
    state: dict[str, float] = {"acked": 0, "sent": 0, "t0": 0.0, "t1": 0.0}
    channel: list[Any] = []

    def body(i: int) -> tuple[bytes, pika.BasicProperties]:
        msg = message.JobMessage(
            id=uuid.uuid4().hex, name="bench_roger_jobs:noop", args=None, queue="default"
        )
        return message.encode(msg), pika.BasicProperties(**message.properties(msg, "bench"))

    def on_confirm(frame: Any) -> None:
        m = frame.method
        state["acked"] = m.delivery_tag if m.multiple else state["acked"] + 1
        if state["acked"] >= n:
            state["t1"] = time.perf_counter()
            conn.close()
        elif window:
            fill()

    def fill() -> None:
        limit = n if not window else min(n, int(state["acked"]) + window)
        while state["sent"] < limit:
            b, props = body(int(state["sent"]))
            channel[0].basic_publish("", q, b, props, mandatory=True)
            state["sent"] += 1

    def on_channel(ch: Any) -> None:
        channel.append(ch)

        def publish(_frame: Any) -> None:
            state["t0"] = time.perf_counter()
            fill()

        def declare(_frame: Any) -> None:
            ch.queue_declare(
                q, durable=True, arguments=topology.main_queue_arguments(), callback=publish
            )

        ch.confirm_delivery(on_confirm, callback=declare)

    conn = SelectConnection(
        pika.URLParameters(url),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, r: c.ioloop.stop(),
    )
    conn.ioloop.start()
    Broker(url).delete(q)
    return n / (state["t1"] - state["t0"])


def threaded(n: int, threads: int, call: Callable[[], Any], warm: Callable[[], Any]) -> float:
    """Rate of ``n`` calls spread over ``threads`` threads started together (0: skipped)."""
    if n == 0:
        return 0.0
    warm()
    per = n // threads
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            for _ in range(per):
                call()
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return per * threads / (time.perf_counter() - t0)


def roger_rates(url: str, n: int, single: int, threads: int) -> dict[str, float]:
    import roger

    out: dict[str, float] = {}
    partition = f"bench-enq-{uuid.uuid4().hex[:6]}"
    job = "bench_roger_jobs:noop"
    with roger.Client(url) as client:
        out["single"] = threaded(single, 1, lambda: client.enqueue(partition, job), lambda: None)
        out["threads"] = threaded(n, threads, lambda: client.enqueue(partition, job), lambda: None)
        if n:
            jobs = [(job, None)] * n
            t0 = time.perf_counter()
            results = client.enqueue_many(partition, jobs)
            out["many"] = n / (time.perf_counter() - t0)
            assert all(r.ok for r in results)
    Broker(url).delete_partition(partition)
    return out


def celery_rates(url: str, n: int, single: int, threads: int) -> dict[str, float]:
    from celery import Celery

    q = f"bench-enq-celery-{uuid.uuid4().hex[:6]}"
    app = Celery("bench_enqueue", broker=url)
    app.conf.update(
        task_ignore_result=True,
        broker_transport_options={"confirm_publish": True},
        task_default_queue=q,
        task_default_delivery_mode="persistent",
    )

    @app.task(name="bench_enqueue.noop")
    def noop() -> None:
        return None

    out = {
        "single": threaded(single, 1, noop.apply_async, noop.apply_async),
        "threads": threaded(n, threads, noop.apply_async, noop.apply_async),
    }
    Broker(url).delete(q)
    return out


def dramatiq_rates(url: str, n: int, single: int, threads: int) -> dict[str, float]:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    q = f"bench-enq-dramatiq-{uuid.uuid4().hex[:6]}"
    broker = RabbitmqBroker(url=url, confirm_delivery=True)

    def noop() -> None:
        return None

    actor = dramatiq.actor(noop, queue_name=q, broker=broker, max_retries=0)
    out = {
        "single": threaded(single, 1, actor.send, actor.send),
        "threads": threaded(n, threads, actor.send, actor.send),
    }
    broker.close()
    Broker(url).delete(q, f"{q}.DQ", f"{q}.XQ")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_amqp_url(parser)
    parser.add_argument("--jobs", type=int, default=3000, help="per pipelined contender")
    parser.add_argument("--single", type=int, default=200, help="per single-thread contender")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    url, n, single, threads = opts.amqp_url, opts.jobs, opts.single, opts.threads
    print(f"# load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"# enqueue, persistent + confirmed; {opts.rounds} rounds of {n} jobs per contender"
        f" ({single} single-thread); ratios paired per round"
    )
    rounds: list[dict[str, float]] = []
    for r in range(opts.rounds):
        row = {"ceiling": bare_pika(url, n), "pika window": bare_pika(url, n, threads)}
        roger_r = roger_rates(url, n, 0, threads)
        row["roger threads"], row["roger many"] = roger_r["threads"], roger_r["many"]
        row["dramatiq threads"] = dramatiq_rates(url, n, 0, threads)["threads"]
        row["celery threads"] = celery_rates(url, n, 0, threads)["threads"]
        rounds.append(row)
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items()), flush=True)
    singles = (
        {
            "roger": roger_rates(url, 0, single, threads)["single"],
            "dramatiq": dramatiq_rates(url, 0, single, threads)["single"],
            "celery": celery_rates(url, 0, single, threads)["single"],
        }
        if single
        else {}
    )

    def med(key: str) -> float:
        return statistics.median(row[key] for row in rounds)

    def ratio(a: str, b: str) -> str:
        values = sorted(row[a] / row[b] for row in rounds)
        return f"{statistics.median(values):.2f} ({values[0]:.2f}-{values[-1]:.2f})"

    print(f"\n| producer (median of {len(rounds)} rounds) | jobs/s |\n|---|---:|")
    rows = [
        ("bare pika, pipelined confirms, quorum queue (the ceiling)", med("ceiling")),
        (f"bare pika, at most {threads} unconfirmed (closed loop)", med("pika window")),
        (f"Roger Client.enqueue, {threads} threads, one shared client", med("roger threads")),
        ("Roger Client.enqueue_many", med("roger many")),
        (f"Dramatiq send (confirm_delivery), {threads} threads", med("dramatiq threads")),
        (f"Celery apply_async (confirm_publish), {threads} threads", med("celery threads")),
    ]
    if single:
        rows += [
            ("Roger Client.enqueue, 1 thread (one run)", singles["roger"]),
            ("Dramatiq send, 1 thread (one run)", singles["dramatiq"]),
            ("Celery apply_async, 1 thread (one run)", singles["celery"]),
        ]
    for name, rate in rows:
        print(f"| {name} | {rate:.0f} |")
    print("\n| ratio, paired per round | median (range) | goal |\n|---|---:|---:|")
    # What any `threads` callers that each wait for their own confirm can reach at best:
    # a goal for them above this ratio is above what the broker gives at that depth.
    print(f"| bare pika, {threads} unconfirmed / bare pika | {ratio('pika window', 'ceiling')} | |")
    for key, label in (
        ("roger threads", f"Roger {threads} threads"),
        ("roger many", "enqueue_many"),
    ):
        print(f"| {label} / bare pika | {ratio(key, 'ceiling')} | >= 0.70 |")
        if key == "roger threads":
            print(f"| {label} / bare pika, {threads} unconfirmed | {ratio(key, 'pika window')} | |")
        print(f"| {label} / Dramatiq {threads} threads | {ratio(key, 'dramatiq threads')} | > 1 |")
        print(f"| {label} / Celery {threads} threads | {ratio(key, 'celery threads')} | > 1 |")
    if single:
        print(
            f"| Roger / Dramatiq, 1 thread | {singles['roger'] / singles['dramatiq']:.2f} | |\n"
            f"| Roger / Celery, 1 thread | {singles['roger'] / singles['celery']:.2f} | |"
        )
    print(f"# load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.exit(main())
