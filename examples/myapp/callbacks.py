"""A callbacks class: Roger calls the hooks it implements (any subset of the five).

Referenced by a Callback resource (``spec.module: myapp.callbacks:Audit``); the resource's
``spec.config`` arrives as keyword arguments, ``spec.hooks`` limits which hooks are called.
A callback that raises or hangs never changes a job's outcome (its failures are counted in
``roger_callback_failures_total``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import roger

log = logging.getLogger("myapp.audit")


class Audit(roger.Callback):
    """Writes one JSON line per hook to stdout (``kubectl logs``), tagged with ``channel``."""

    def __init__(self, channel: str = "#jobs", **config: Any) -> None:
        super().__init__(channel=channel, **config)
        self.channel = channel

    def _emit(self, hook: str, partition: str, job: roger.Job, **fields: Any) -> None:
        record = {
            "channel": self.channel,
            "hook": hook,
            "partition": partition,
            "job": job.name,
            "id": job.id,
            "queue": job.queue,
            "retry_count": job.retry_count,
            **fields,
        }
        sys.stdout.write(json.dumps(record, default=str) + "\n")
        sys.stdout.flush()

    def before_run(self, partition: str, job: roger.Job) -> Any:
        return {"started": time.time()}  # the state handed to the later hooks

    def after_run(self, partition: str, job: roger.Job, result: Any, state: Any) -> None:
        took = time.time() - state["started"] if state else None
        self._emit("after_run", partition, job, result=result, seconds=took)

    def on_error(
        self, partition: str, job: roger.Job, error: Any, stacktrace: Any, state: Any
    ) -> None:
        kind, message = error
        self._emit("on_error", partition, job, error=kind, message=message)

    def on_cancel(self, partition: str, job: roger.Job) -> None:
        self._emit("on_cancel", partition, job)

    def on_buried(
        self, partition: str, job: roger.Job, error: Any, stacktrace: Any, state: Any
    ) -> None:
        kind, message = error
        self._emit("on_buried", partition, job, error=kind, message=message)
