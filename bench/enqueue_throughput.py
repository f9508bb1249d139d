"""Producing jobs: Roger's client against bare pika, Celery and Dramatiq, in one run.

Every contender publishes persistent messages and waits for publisher confirms (same
durability). The ceiling is bare pika: one ``SelectConnection`` publishing everything
with pipelined confirms to a quorum queue, Roger's queue type; it runs first and last,
and the ratios use the higher of the two. Peers use their own default (classic) queues.

- single thread: one call at a time (``enqueue``, ``apply_async``, ``send``);
- 32 threads: one shared ``roger.Client``; Celery's producer pool; Dramatiq's
  per-thread connections;
- bulk: ``Client.enqueue_many`` (validation and encoding included in the time).

Usage: python bench/enqueue_throughput.py [--jobs 4000] [--single 400] [--threads 32]
"""

from __future__ import annotations

import argparse
import os
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


def bare_pika(url: str, n: int) -> float:
    """The ceiling: n persistent messages, confirms pipelined, one connection."""
    q = f"bench-enq-pika-{uuid.uuid4().hex[:6]}"
    state: dict[str, float] = {"acked": 0, "t0": 0.0, "t1": 0.0}

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

    def on_channel(ch: Any) -> None:
        def publish(_frame: Any) -> None:
            state["t0"] = time.perf_counter()
            for i in range(n):
                b, props = body(i)
                ch.basic_publish("", q, b, props, mandatory=True)

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
    """Rate of ``n`` calls spread over ``threads`` threads started together."""
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
    parser.add_argument("--jobs", type=int, default=4000, help="per pipelined contender")
    parser.add_argument("--single", type=int, default=400, help="per single-thread contender")
    parser.add_argument("--threads", type=int, default=32)
    opts = parser.parse_args()
    url, n, single, threads = opts.amqp_url, opts.jobs, opts.single, opts.threads
    print(f"# enqueue, persistent + confirmed; {n} jobs ({single} single-thread) per contender")
    ceiling_before = bare_pika(url, n)
    roger_r = roger_rates(url, n, single, threads)
    dramatiq_r = dramatiq_rates(url, n, single, threads)
    celery_r = celery_rates(url, n, single, threads)
    ceiling_after = bare_pika(url, n)
    ceiling = max(ceiling_before, ceiling_after)
    rows = [
        ("bare pika, pipelined confirms (ceiling, first run)", ceiling_before),
        ("bare pika, pipelined confirms (ceiling, last run)", ceiling_after),
        ("Roger Client.enqueue, 1 thread", roger_r["single"]),
        (f"Roger Client.enqueue, {threads} threads, one client", roger_r["threads"]),
        ("Roger Client.enqueue_many", roger_r["many"]),
        ("Dramatiq send (confirm_delivery), 1 thread", dramatiq_r["single"]),
        (f"Dramatiq send (confirm_delivery), {threads} threads", dramatiq_r["threads"]),
        ("Celery apply_async (confirm_publish), 1 thread", celery_r["single"]),
        (f"Celery apply_async (confirm_publish), {threads} threads", celery_r["threads"]),
    ]
    print("\n| producer | jobs/s |\n|---|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.0f} |")
    best_peer = max(dramatiq_r["threads"], celery_r["threads"])
    print(f"\nratios (ceiling = {ceiling:.0f} jobs/s, the higher bare pika run):")
    for name, rate in (
        (f"Roger {threads} threads", roger_r["threads"]),
        ("Roger enqueue_many", roger_r["many"]),
    ):
        print(
            f"- {name}: {rate / ceiling:.2f}x ceiling (goal >= 0.70),"
            f" {rate / dramatiq_r['threads']:.2f}x Dramatiq {threads} threads,"
            f" {rate / celery_r['threads']:.2f}x Celery {threads} threads,"
            f" {'ahead of' if rate > best_peer else 'behind'} both peers"
        )
    print(
        f"- Roger 1 thread: {roger_r['single'] / dramatiq_r['single']:.2f}x Dramatiq 1 thread,"
        f" {roger_r['single'] / celery_r['single']:.2f}x Celery 1 thread"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.exit(main())
