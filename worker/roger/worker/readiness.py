"""What keeps the worker from being ready, in words, and the log that says it.

Start-up never hangs silently: while the worker is not ready (``Worker.ready``, /readyz),
``ReadyWatch`` logs every few seconds what it still waits for (``waiting_for``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from roger.broker.state import PartitionState
from roger.worker.tasks import QueueState

log = logging.getLogger("roger.worker")
WAIT_LOG_EVERY = 5.0  # while not ready, say what the worker waits for this often


def waiting_for(link_ready: bool, state: PartitionState, consumed: Sequence[QueueState]) -> str:
    """What a running worker waits for before it is ready (empty when nothing):
    ``consumed`` are the queues it should consume (not paused, with workers)."""
    if not link_ready:
        return "the AMQP connection and the queue declarations"
    if not state.ready:
        return f"partition state: {state.waiting_for()}"
    cold = [q.name for q in consumed if not q.warm]
    if cold:
        return "the job processes of queue(s) " + ", ".join(cold) + " to start"
    idle = [q.name for q in consumed if q.consumer_tag is None]
    if idle:
        return "the consumer(s) of queue(s) " + ", ".join(idle)
    return ""


class ReadyWatch:
    """Never an idle hang: while not ready, log every few seconds what is missing."""

    def __init__(self, now: float) -> None:
        self.unready_since: float | None = now
        self.logged = 0.0

    def tick(self, now: float, ready: bool, waiting_for: Callable[[], str]) -> None:
        """Once a second; ``ready`` also when stopping (nothing is awaited then)."""
        if ready:
            self.unready_since = None
            return
        if self.unready_since is None:
            self.unready_since = now
        waited = now - self.unready_since
        if waited >= WAIT_LOG_EVERY and now - self.logged >= WAIT_LOG_EVERY:
            self.logged = now
            log.warning("not ready after %.0fs: waiting for %s", waited, waiting_for())
