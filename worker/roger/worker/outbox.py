"""Where a settled delivery's message goes: retry queue, buried queue or ``.invalid``.

Every publish is confirmed before the original delivery is acknowledged (the ``settle``
callback), so a job is never both lost and acknowledged. A refused publish is tried again
rather than dropped or redelivered in a loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pika

from roger.core import delay, envelope, fate, naming
from roger.core.buried import buried_dropped_event, carried_headers
from roger.core.lifecycle import LifecycleEvent
from roger.core.message import encode
from roger.worker.ledger import Epoch
from roger.worker.link import Link
from roger.worker.tasks import QueueState, Task
from roger.worker.telemetry import Telemetry

log = logging.getLogger("roger.worker")

Settle = Callable[[Epoch, int], None]
# Publishes one burial, then calls its argument once the broker confirmed it.
Bury = Callable[[Callable[[], None]], None]


class _BurialLine:
    """One queue's burials: those waiting for the next round, and the round running."""

    __slots__ = ("running", "waiting")

    def __init__(self) -> None:
        self.waiting: list[tuple[Epoch, Bury]] = []
        self.running: list[Epoch] = []


class Outbox:
    def __init__(
        self,
        partition: str,
        link: Link,
        ioloop: Any,
        telemetry: Telemetry,
        settle: Settle,
        buried_max_length: int = naming.DEFAULT_BURIED_MAX_LENGTH,
        dropped: Callable[[LifecycleEvent], None] | None = None,
    ) -> None:
        self.partition, self.link, self.ioloop = partition, link, ioloop
        self.telemetry, self.settle = telemetry, settle
        self.buried_max_length = buried_max_length
        self.dropped = dropped
        self._lines: dict[str, _BurialLine] = {}  # per queue (``keep_bound``)

    def failed(
        self,
        task: Task,
        decision: fate.Retry | fate.Bury,
        stack: str | None,
        retry_body: bytes | None = None,
    ) -> None:
        """Republish a failed job: to its retry level (``retry_body``: retry_count + 1,
        from ``roger.core.message.retry_body``) or to ``.buried`` (as delivered)."""
        q, msg, error = task.queue, task.msg, decision.error
        carried = carried_headers(getattr(task.props, "headers", None))
        if isinstance(decision, fate.Retry):
            target = naming.retry_queue_name(self.partition, q.name, decision.seconds)
            body = retry_body if retry_body is not None else encode(msg.retried())
            fields = envelope.retry_properties(msg, self.partition, error, carried)
        else:
            target = naming.buried_queue_name(self.partition, q.name)
            fields = envelope.burial_properties(
                msg, self.partition, error, stack, decision.reason, carried, time.time()
            )
            props = pika.BasicProperties(**fields)

            def bury(done: Callable[[], None]) -> None:
                self.publish(task.epoch, task.tag, target, task.body, props, done=done)

            self.keep_bound(q.name, task.epoch, bury)
            return
        self.publish(task.epoch, task.tag, target, body, pika.BasicProperties(**fields))

    def keep_bound(self, queue: str, epoch: Epoch, bury: Bury) -> None:
        """Before a burial: into a full ``.buried`` the broker would drop the oldest job
        without a trace, so the worker drops the oldest itself and says which (log, metric,
        Event), then calls ``bury(done)``. This worker's burials into one queue go in
        rounds: the ones waiting are counted together, and the next round counts only once
        this one is confirmed (two jobs failing together must not both find room for one).
        Burials of several workers landing at once at the bound can still let the broker
        drop one unseen (the operator's policy bounds the queue)."""
        line = self._lines.setdefault(queue, _BurialLine())
        line.waiting.append((epoch, bury))
        if not any(e.alive for e in line.running):  # none running, or died with them
            self._next_round(queue, line)

    def _next_round(self, queue: str, line: _BurialLine) -> None:
        """Count once, drop as many of the oldest as this round needs room for, then bury
        the round; deliveries that died meanwhile are left out (the broker has them again,
        and their callbacks may never come)."""
        alive = [w for w in line.waiting if w[0].alive]
        batch, line.waiting = alive[: self.buried_max_length], alive[self.buried_max_length :]
        running = line.running = [epoch for epoch, _ in batch]
        if not batch:
            if self._lines.get(queue) is line:
                del self._lines[queue]
            return
        intake = naming.buried_queue_name(self.partition, queue)
        left = [len(batch)]

        def done() -> None:
            left[0] -= 1
            if left[0] == 0 and line.running is running:
                self._next_round(queue, line)

        def bury_all() -> None:
            for _, bury in batch:
                bury(done)

        def drop(n: int) -> None:
            if n <= 0:
                bury_all()
                return

            def taken(props: Any, body: bytes | None) -> None:
                if body is None:  # nothing left to drop (or the channel closed)
                    bury_all()
                    return
                self._dropped(queue, props, body)
                drop(n - 1)

            self.link.take_head(intake, taken)

        def counted(messages: int | None) -> None:
            if messages is None:  # no such queue: the publish finds out (and reconnects)
                bury_all()
            else:
                drop(messages + len(batch) - self.buried_max_length)

        self.link.count(intake, counted)

    def _dropped(self, queue: str, props: Any, body: bytes) -> None:
        event = buried_dropped_event(self.partition, queue, props, body, time.time())
        log.warning(
            "buried job %s (%s) dropped from %s: buried_max_length %d reached "
            "(roger buried list files buried jobs where the bound does not reach them)",
            event.job_id,
            event.job_name,
            naming.buried_queue_name(self.partition, queue),
            self.buried_max_length,
        )
        if self.dropped is not None:
            self.dropped(event)

    def requeue(self, task: Task) -> None:
        """Back to its own queue as a fresh copy (the broker's delivery count starts
        again: an uncharged requeue never counts towards a delivery limit), then ack."""
        props = pika.BasicProperties(**envelope.kept_properties(task.props))
        self.publish(task.epoch, task.tag, task.queue.rabbit, task.body, props)

    def delay(self, task: Task, seconds: float) -> None:
        """A delayed job early (its delay is longer than one pass of the ladder): into the
        ladder for what is left, as it is (its due time in its headers), then ack."""
        leg = delay.route(self.partition, task.queue.name, seconds)
        if leg is None:  # due after all: a plain requeue runs it
            self.requeue(task)
            return
        fields = envelope.kept_properties(task.props)
        fields["headers"] = delay.without_deaths(fields["headers"])
        props = pika.BasicProperties(**fields)
        self.publish(task.epoch, task.tag, leg.routing_key, task.body, props, leg.exchange)

    def park(
        self,
        q: QueueState,
        epoch: Epoch,
        tag: int,
        props: Any,
        body: bytes,
        reason: str,
        detail: str,
    ) -> None:
        """Never run, never lost, never redelivered in a loop: to ``.invalid``, then ack."""
        log.warning(
            "parked message %s from %s in .invalid: %s (%s)",
            getattr(props, "message_id", None),
            q.rabbit,
            reason,
            detail,
        )
        self.telemetry.parked(q.name, reason)
        fields = envelope.parked_properties(props, reason, detail, q.rabbit, time.time())
        parked = pika.BasicProperties(**fields)
        target = naming.invalid_queue_name(self.partition, q.name)
        self.publish(epoch, tag, target, body, parked)

    def publish(
        self,
        epoch: Epoch,
        tag: int,
        target: str,
        body: bytes,
        props: Any,
        exchange: str = "",
        done: Callable[[], None] | None = None,
    ) -> None:
        """Publish, and acknowledge the delivery ``tag`` once the broker confirms; then
        ``done()``, also when the delivery died meanwhile."""
        if not epoch.alive:
            if done is not None:
                done()
            return  # the delivery died with its connection: the broker has it again

        def confirmed(ok: bool) -> None:
            if ok:
                self.settle(epoch, tag)
                if done is not None:
                    done()
            else:  # the broker refused it: try again rather than lose or loop
                log.warning("publish to %s refused; retrying in 1s", target)
                self.ioloop.call_later(
                    1.0, lambda: self.publish(epoch, tag, target, body, props, exchange, done)
                )

        self.link.publish(target, body, props, confirmed, exchange)


def sample_queues(
    link: Link,
    partition: str,
    queues: list[QueueState],
    levels: tuple[int, ...],
    telemetry: Telemetry,
) -> None:
    """Passive-declare each queue family and report its counts (off the hot path)."""
    for q in queues:
        kinds = {
            q.rabbit: "ready",
            naming.buried_queue_name(partition, q.name): "buried",
            naming.invalid_queue_name(partition, q.name): "invalid",
        }
        for s in levels:
            kinds[naming.retry_queue_name(partition, q.name, s)] = "retrying"
        counts = {"ready": 0, "consumers": 0, "retrying": 0, "buried": 0, "invalid": 0}
        link.sample(list(kinds), _Tally(q.name, kinds, counts, telemetry))


class _Tally:
    def __init__(
        self, queue: str, kinds: dict[str, str], counts: dict[str, int], telemetry: Telemetry
    ) -> None:
        self.queue, self.kinds, self.counts, self.telemetry = queue, kinds, counts, telemetry
        self.left = len(kinds)

    def __call__(self, name: str, messages: int, consumers: int) -> None:
        kind = self.kinds[name]
        self.counts[kind] += messages
        if kind == "ready":
            self.counts["consumers"] = consumers
        self.left -= 1
        if self.left == 0:
            self.telemetry.queue_sample(self.queue, self.counts)
