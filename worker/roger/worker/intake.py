"""A delivery arrives: what becomes of it before any job process sees it.

Each delivery of a consumer channel is entered in the ledger, then: requeued (the worker
is stopping), parked in ``.invalid`` (undecodable, an unknown job, a job of another queue),
judged at once (delivered too often; the redelivery of a job stopped here for the broker's
consumer timeout), held by the partition features (cancelled, paused, execution key busy),
or handed to the job-process pool. The collaborators are the ``Worker``'s (runtime.py),
passed in; the intake keeps no state of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from roger.core import envelope, fate
from roger.core.jobs import JobDefinition, JobRegistry
from roger.core.message import WRONG_QUEUE, InvalidMessage, decode_body
from roger.worker.consumer_timeout import ConsumerTimeout
from roger.worker.ledger import Epoch, Ledger
from roger.worker.outbox import Outbox
from roger.worker.partition import PartitionFeatures
from roger.worker.pool import JobPool
from roger.worker.tasks import QueueState, Task


class Intake:
    def __init__(
        self,
        *,
        registry: JobRegistry,
        levels: tuple[int, ...],
        ledger: Ledger,
        outbox: Outbox,
        features: PartitionFeatures,
        pool: JobPool,
        consumer_timeout: ConsumerTimeout,
        happened: Callable[[Task, fate.Happened], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.registry, self.levels = registry, levels
        self.ledger, self.outbox, self.features, self.pool = ledger, outbox, features, pool
        self.consumer_timeout = consumer_timeout
        self.happened, self.stopping = happened, stopping

    def on_message(
        self, q: QueueState, epoch: Epoch, channel: Any, method: Any, props: Any, body: bytes
    ) -> None:
        """pika's consumer callback for ``q`` on the channel of ``epoch``."""
        tag = method.delivery_tag
        epoch.delivered(tag)  # in the ledger's books from now
        if self.stopping():
            self.ledger.requeue(epoch, tag)
            return
        try:
            msg, job_body = decode_body(body)
        except InvalidMessage as exc:
            self.outbox.park(q, epoch, tag, props, body, exc.reason, exc.detail)
            return
        # A job names the queue it lives in (a waiting room sends it back there).
        found = self.registry.lookup(msg.name) if msg.queue == q.name else WRONG_QUEUE
        if not isinstance(found, JobDefinition):
            self.features.parked(msg)
            detail = f"job {msg.name!r} of queue {msg.queue!r}"
            self.outbox.park(q, epoch, tag, props, body, found, detail)
            return
        facts, failure_hook = fate.attempt(found.retryable, msg.retry_count, self.levels)
        task = Task(
            next(self.pool.keys), q, tag, epoch, msg, job_body, props, found, facts, failure_hook
        )
        # Only a redelivery from a quorum queue has headers with a count: none, no calls.
        count = envelope.delivery_count(props) if getattr(props, "headers", None) else 0
        if count and fate.too_many_deliveries(count):  # it killed worker after worker
            self.happened(task, fate.DeliveredTooOften(count))
        elif (
            self.consumer_timeout.overran
            and (overran := self.consumer_timeout.take_overran(task)) is not None
        ):  # stopped here for the consumer timeout: a failed attempt
            self.happened(task, fate.Overran(overran))
        elif not self.features.intercept(task):  # cancelled, paused or keyed: handled there
            self.pool.submit(task)
