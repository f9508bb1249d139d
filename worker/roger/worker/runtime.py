"""The worker's event loop: consume, hand jobs to child processes, settle, acknowledge.

Everything here runs on one thread (pika's ioloop): deliveries, child pipes, timers and
publisher confirms are all callbacks on the same loop, so there are no locks. A message
is acknowledged only once its outcome is settled: success, retry published and confirmed,
burial confirmed, or parked in ``.invalid`` and confirmed.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from pika.adapters.select_connection import IOLoop

from roger.core import topology
from roger.core.config import WorkerConfig, split_slots
from roger.core.hooks import HookName
from roger.core.jobs import JobDefinition, JobRegistry
from roger.core.lifecycle import LifecycleEvent, LifecycleObserver
from roger.core.message import WRONG_QUEUE, InvalidMessage, decode_body
from roger.core.settle import Retry, on_failure
from roger.worker.link import Link
from roger.worker.outbox import Outbox, sample_queues
from roger.worker.partition import PartitionFeatures
from roger.worker.processes import JobProcesses, available_cpus
from roger.worker.tasks import QueueState, Task
from roger.worker.telemetry import NullTelemetry, Telemetry

log = logging.getLogger("roger.worker")
SAMPLE_EVERY = 5.0
# While pika decodes a burst of deliveries, hand them on in groups this big (not one write
# per job, not only at the end of the burst): bench/RESULTS.md has the A/B (8 vs 32).
DISPATCH_GROUP = 32
WAIT_LOG_EVERY = 5.0  # while not ready, say what the worker waits for this often


class Worker(JobProcesses):
    def __init__(
        self,
        config: WorkerConfig,
        amqp_url: str,
        registry: JobRegistry,
        observers: Sequence[LifecycleObserver] = (),
        telemetry: Telemetry | None = None,
        sys_path: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.partition = config.partition
        self.levels = config.retry_levels
        self.registry = registry
        self.telemetry: Telemetry = telemetry or NullTelemetry()
        self.observers: list[LifecycleObserver] = [self.telemetry, *observers]
        self.ioloop = IOLoop()
        self.queues = {n: QueueState.make(self.partition, n, w) for n, w in config.queues.items()}
        decls = [
            d
            for name in config.queues
            for d in topology.declarations(
                self.partition, name, config.retry_levels, config.buried_max_length
            )
        ]
        self.link = Link(
            amqp_url,
            self.ioloop,
            decls,
            self._connected,
            self._lost,
            self._fatal,
            name=f"roger-worker {self.partition} {os.uname().nodename} {os.getpid()}",
        )
        self.outbox = Outbox(self.partition, self.link, self.ioloop, self.telemetry, self._settle)
        self.features = PartitionFeatures(self)  # cancel, pause, queue and execution keys
        self.telemetry.prepare([n for n, q in self.queues.items() if q.max_workers > 0])
        self.spec = json.dumps(
            {
                "partition": self.partition,
                "jobs": list(config.jobs),
                "callbacks": [
                    {"path": c.path, "hooks": list(c.hooks), "config": dict(c.config)}
                    for c in config.callbacks
                ],
                "callback_timeout": config.callback_timeout,
                "sys_path": list(sys_path),
            }
        )
        self.keys = itertools.count(1)
        self.stopping = self.finished = False
        self.exit_code = 0
        self.flush_scheduled = False
        self.last_tick = time.monotonic()
        self.lost_once = False
        self.unready_since: float | None = time.monotonic()
        self.wait_logged = 0.0

    # -- lifecycle -----------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        processes = self.config.job_processes or available_cpus()
        for q in self.queues.values():
            for slots in split_slots(q.max_workers, processes):
                self._spawn(q, slots)
        self.link.connect()
        self.ioloop.call_later(1.0, self._tick)
        self.ioloop.call_later(1.0, self._sample)
        self.ioloop.start()
        for o in self.observers:
            try:
                o.close(2.0)
            except Exception:  # closing must not mask the exit code
                log.exception("observer close failed")
        return self.exit_code

    def healthy(self) -> bool:
        return self.exit_code == 0 and time.monotonic() - self.last_tick < 15

    def ready(self) -> bool:
        return (
            self.link.ready
            and not self.stopping
            and all(
                q.channel is not None
                for q in self.queues.values()
                if q.max_workers and not self.features.is_paused(q.name)
            )
        )

    def _signal(self, signum: int, _frame: Any) -> None:
        self.ioloop.add_callback_threadsafe(self.shutdown)

    def _tick(self) -> None:
        self.last_tick = time.monotonic()
        self._watch_ready(self.last_tick)
        self.ioloop.call_later(1.0, self._tick)

    def waiting_for(self) -> str:
        """What keeps the worker from being ready (empty when it is)."""
        if self.stopping:
            return "nothing (stopping)"
        if not self.link.ready:
            return "the AMQP connection and the queue declarations"
        if not self.features.state.ready:
            return f"partition state: {self.features.state.waiting_for()}"
        consumed = [
            q for q in self.queues.values() if q.max_workers and not self.features.is_paused(q.name)
        ]
        cold = [q.name for q in consumed if not q.warm]
        if cold:
            return "the job processes of queue(s) " + ", ".join(cold) + " to start"
        idle = [q.name for q in consumed if q.channel is None]
        if idle:
            return "the consumer(s) of queue(s) " + ", ".join(idle)
        return ""

    def _watch_ready(self, now: float) -> None:
        """Never an idle hang: while not ready, log every few seconds what is missing."""
        if self.stopping or self.ready():
            self.unready_since = None
            return
        if self.unready_since is None:
            self.unready_since = now
        waited = now - self.unready_since
        if waited >= WAIT_LOG_EVERY and now - self.wait_logged >= WAIT_LOG_EVERY:
            self.wait_logged = now
            log.warning("not ready after %.0fs: waiting for %s", waited, self.waiting_for())

    def _fatal(self, why: str) -> None:
        log.error("%s", why)
        self.exit_code = 1
        self._finish()

    def shutdown(self) -> None:
        """Stop consuming, let running jobs finish within shutdown_timeout, then exit."""
        if self.stopping:
            self._finish()  # a second signal: do not wait
            return
        self.stopping = True
        log.info("shutting down: waiting up to %ss for running jobs", self.config.shutdown_timeout)
        for q in self.queues.values():
            if q.channel is not None and q.channel.is_open and q.consumer_tag:
                q.channel.basic_cancel(q.consumer_tag)
            self._requeue_waiting(q)
        self.ioloop.call_later(self.config.shutdown_timeout, self._finish)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if (
            self.stopping
            and self.link.unconfirmed() == 0
            and not any(c.tasks or q.hook_backlog for q in self.queues.values() for c in q.children)
        ):
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = self.stopping = True
        self._flush()
        for q in self.queues.values():
            for child in list(q.children):
                if child.tasks:
                    log.warning("job process %d still busy at shutdown: killed", child.pid)
                    child.kill("shutdown")  # its deliveries stay unacked: back on close
                else:
                    child.close()
        self.link.close()

    # -- connection ----------------------------------------------------------------
    def _connected(self) -> None:
        if self.lost_once:
            self.telemetry.reconnected()
        if self.stopping:
            self._finish()
            return
        # consuming starts once the partition state has caught up (_start_consuming)
        self.features.attach(self.link.conn)

    def _start_consuming(self) -> None:
        if self.stopping:
            return
        names = [
            q.rabbit
            for q in self.queues.values()
            if q.max_workers > 0 and not self.features.is_paused(q.name)
        ]
        log.info("connected; consuming %s", ", ".join(names) or "nothing (all paused)")
        for q in self.queues.values():
            if q.max_workers > 0 and not self.features.is_paused(q.name):
                self._consume(q)

    def _consume(self, q: QueueState) -> None:
        """Start (or, after a pause, resume) consuming; the channel is kept across pauses
        so in-flight jobs are acknowledged on the channel that delivered them."""
        if self.stopping or q.consumer_tag is not None:
            return
        if not q.warm:  # take no job before the job processes can run it
            q.want = True
            return
        if q.channel is not None and q.channel.is_open:
            q.consumer_tag = q.channel.basic_consume(
                q.rabbit, partial(self._on_message, q), auto_ack=False
            )
        elif self.link.ready:
            self.link.consume(
                q.rabbit, q.max_workers, partial(self._on_message, q), partial(self._consuming, q)
            )

    def _stop_consuming(self, q: QueueState) -> None:
        """Pause: take no more jobs from ``q``; running ones finish, prefetched go back."""
        if q.channel is not None and q.channel.is_open and q.consumer_tag:
            q.channel.basic_cancel(q.consumer_tag)
        q.consumer_tag = None
        self._requeue_waiting(q)

    def _consuming(self, q: QueueState, channel: Any, consumer_tag: str) -> None:
        q.channel, q.consumer_tag, q.gen = channel, consumer_tag, self.link.generation

    def _lost(self) -> None:
        """Unacked deliveries go back to the broker; running jobs finish unacknowledged."""
        self.lost_once = True
        self.features.detach()
        for q in self.queues.values():
            q.channel, q.consumer_tag = None, None
            q.tracker = type(q.tracker)()
            q.pending.clear()
            q.suspect_pending.clear()
        if self.stopping:
            self._finish()

    def _park(
        self, q: QueueState, tag: int, gen: int, props: Any, body: bytes, reason: str, detail: str
    ) -> None:
        self.outbox.park(q, tag, gen, props, body, reason, detail)

    def _settle(self, q: QueueState, tag: int, gen: int) -> None:
        if gen != q.gen:
            return
        q.tracker.settled(tag)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.ioloop.call_later(0, self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        for q in self.queues.values():
            if q.channel is not None and q.channel.is_open:
                for tag, multiple in q.tracker.flush():
                    q.channel.basic_ack(tag, multiple)
        self._maybe_finish()

    def _requeue_waiting(self, q: QueueState) -> None:
        """Deliveries not handed to a job process yet go back to the broker."""
        for waiting in (q.pending, q.suspect_pending):
            while waiting:
                self._requeue(waiting.popleft())

    def _requeue(self, task: Task) -> None:
        q = task.queue
        if task.gen == q.gen and q.channel is not None and q.channel.is_open:
            q.channel.basic_nack(task.tag, requeue=True)
            q.tracker.forget(task.tag)

    def _cancel_timer(self, task: Task) -> None:
        if task.timer is not None:
            self.ioloop.remove_timeout(task.timer)
            task.timer = None

    def _emit(
        self,
        task: Task,
        hook: HookName,
        error: tuple[str, str] | None = None,
        duration: float | None = None,
    ) -> None:
        event = LifecycleEvent(
            hook=hook,
            partition=self.partition,
            queue=task.queue.name,
            job_id=task.msg.id,
            job_name=task.msg.name,
            retry_count=task.msg.retry_count,
            at=time.time(),
            error=error,
            duration=duration,
        )
        for o in self.observers:
            try:
                o.observe(event)
            except Exception:  # an observer never stops the loop
                log.exception("lifecycle observer %r failed", o)

    # -- deliveries ----------------------------------------------------------------
    def _on_message(
        self, q: QueueState, channel: Any, method: Any, props: Any, body: bytes
    ) -> None:
        tag = method.delivery_tag
        q.tracker.delivered(tag)
        if self.stopping:
            channel.basic_nack(tag, requeue=True)
            q.tracker.forget(tag)
            return
        try:
            msg, job_body = decode_body(body)
        except InvalidMessage as exc:
            self._park(q, tag, q.gen, props, body, exc.reason, exc.detail)
            return
        # A job names the queue it lives in (a waiting room sends it back there).
        found = self.registry.lookup(msg.name) if msg.queue == q.name else WRONG_QUEUE
        if not isinstance(found, JobDefinition):
            self.features.parked(msg, q.gen)
            detail = f"job {msg.name!r} of queue {msg.queue!r}"
            self._park(q, tag, q.gen, props, body, found, detail)
            return
        bury = not isinstance(on_failure(found.retryable, msg.retry_count, self.levels), Retry)
        task = Task(next(self.keys), q, tag, q.gen, msg, job_body, props, found, bury)
        if not self.features.intercept(task):  # cancelled, paused or keyed: handled there
            self._accept(task)

    def _accept(self, task: Task) -> None:
        q = task.queue
        if task.msg.id in q.suspects:
            q.suspect_pending.append(task)
            self._pump_soon(q)
            return
        q.pending.append(task)
        if len(q.pending) >= DISPATCH_GROUP:
            self._pump(q)  # pika may be decoding many more: let the job processes start
        else:
            self._pump_soon(q)

    # -- sampling ------------------------------------------------------------------
    def _sample(self) -> None:
        self.ioloop.call_later(SAMPLE_EVERY, self._sample)
        sample_queues(
            self.link, self.partition, list(self.queues.values()), self.levels, self.telemetry
        )
