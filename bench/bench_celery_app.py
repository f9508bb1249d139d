"""Celery side of the benchmark: a no-op task (no result backend)."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bench_celery_app", broker=os.environ.get("BENCH_AMQP_URL", "amqp://"))
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)


@app.task(name="bench_celery_app.noop")
def noop() -> None:
    return None
