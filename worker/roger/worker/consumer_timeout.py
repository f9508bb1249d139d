"""What the worker keeps about the broker's consumer timeout, across consumer channels.

When the broker closes a consumer channel for its ``consumer_timeout``, the worker
(``runtime.Worker._ack_timed_out``) drops that channel's jobs (fates ``AckTimedOut``,
decided in ``roger.core.fate``) and consumes again. What outlives the channel is here:
the timeout in force (configured, then corrected by the broker's word) and the jobs that
were stopped for holding their delivery past it, so that their redelivery counts as a
failed attempt (``fate.Overran``) instead of timing out forever. At start-up it names the
queues whose jobs may outlast the timeout. The arithmetic is ``roger.core.ack_timeout``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from roger.core import ack_timeout
from roger.core.jobs import JobDefinition
from roger.worker.tasks import QueueState, Task
from roger.worker.telemetry import Telemetry

log = logging.getLogger("roger.worker")
OVERRAN_KEPT = 10_000  # overran jobs remembered at most: the oldest are forgotten


class ConsumerTimeout:
    def __init__(self, configured: float, telemetry: Telemetry) -> None:
        self.timeout = configured  # corrected by the broker's word
        self.telemetry = telemetry
        # Jobs stopped for holding a delivery past the broker's consumer timeout: their
        # redelivery here is a failed attempt (fate.Overran). id -> (retry_count, timeout)
        self.overran: dict[str, tuple[int, float]] = {}

    def warn_at_risk(
        self, queues: Iterable[QueueState], jobs: Iterable[JobDefinition], callback_timeout: float
    ) -> None:
        """Name the queues whose jobs may hold a delivery past the broker's timeout."""
        limits: dict[str, list[float | None]] = {q.name: [] for q in queues if q.max_workers > 0}
        for job in jobs:
            if job.queue in limits:
                limits[job.queue].append(job.max_execution_time)
        risky = ack_timeout.at_risk(limits, callback_timeout, self.timeout)
        for name in limits:
            self.telemetry.ack_timeout_risk(name, name in risky)
            if name in risky:
                log.warning("consumer_timeout: %s", risky[name])

    def channel_timed_out(self, running: Sequence[Task], timeout: float | None) -> None:
        """The broker timed out the channel that delivered ``running`` (``timeout``: what
        it says it used): remember the overdue jobs, whose redelivery is a failure."""
        if timeout is not None:
            self.timeout = timeout
        now = time.monotonic()
        ages = [now - task.started for task in running]
        for i in ack_timeout.overdue(ages, timeout):
            task = running[i]
            log.warning(
                "job %s held its delivery past the broker's consumer_timeout (%s): stopped; "
                "its redelivery here counts as a failed attempt",
                task.msg.id,
                f"{timeout:g}s" if timeout is not None else "unknown",
            )
            self.overran[task.msg.id] = (task.msg.retry_count, timeout or self.timeout)
            while len(self.overran) > OVERRAN_KEPT:  # bounded: forget the oldest
                del self.overran[next(iter(self.overran))]

    def take_overran(self, task: Task) -> float | None:
        """The timeout ``task`` overran, if it is the redelivery of a job stopped here for
        the consumer timeout (forgotten from now); else None."""
        seen = self.overran.get(task.msg.id)
        if seen is None or seen[0] != task.msg.retry_count:
            return None
        del self.overran[task.msg.id]
        return seen[1]
