"""Roger side of the benchmark: a no-op job and a callback implementing all five hooks."""

from __future__ import annotations

import os
import time
from typing import Any

import roger


@roger.job
def noop(args: Any) -> None:
    return None


class AllHooks:
    """All five hooks; before_run also records enqueue-to-start latency when asked to."""

    def __init__(self) -> None:
        path = os.environ.get("BENCH_LATENCY_FILE")
        self.latency = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def before_run(self, partition: str, job: Any) -> Any:
        if self.latency is not None:
            self.latency.write(f"{time.time() - job.queued_at:.6f}\n")
        return 1

    def after_run(self, partition: str, job: Any, result: Any, state: Any) -> None:
        pass

    def on_error(self, partition: str, job: Any, error: Any, stack: Any, state: Any) -> None:
        pass

    def on_cancel(self, partition: str, job: Any) -> None:
        pass

    def on_buried(self, partition: str, job: Any, error: Any, stack: Any, state: Any) -> None:
        pass
