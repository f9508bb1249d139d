"""Dramatiq side of the benchmark: a no-op actor on the queue named by BENCH_QUEUE."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

dramatiq.set_broker(RabbitmqBroker(url=os.environ["BENCH_AMQP_URL"]))


@dramatiq.actor(queue_name=os.environ.get("BENCH_QUEUE", "bench"), max_retries=0)
def noop() -> None:
    return None
