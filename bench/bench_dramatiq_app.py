"""Dramatiq side of the benchmark: a no-op actor on the queue named by BENCH_QUEUE."""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

dramatiq.set_broker(RabbitmqBroker(url=os.environ["BENCH_AMQP_URL"]))


@dramatiq.actor(queue_name=os.environ.get("BENCH_QUEUE", "bench"), max_retries=0)
def noop() -> None:
    return None


_PATH = os.environ.get("BENCH_LATENCY_FILE")
_LATENCY = open(_PATH, "a", buffering=1) if _PATH else None  # noqa: SIM115 (as Roger's)


@dramatiq.actor(queue_name=os.environ.get("BENCH_QUEUE", "bench"), max_retries=0)
def stamp(made_at: float) -> None:
    """Records enqueue-to-start (seconds), as Roger's bench callback does in before_run."""
    if _LATENCY is not None:
        _LATENCY.write(f"{time.time() - made_at:.6f}\n")
