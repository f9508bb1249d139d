"""The worker: consume, hand jobs to the job-process pool, carry out each job's fate.

Everything here runs on one thread (pika's ioloop): deliveries, child pipes, timers and
publisher confirms are all callbacks on the same loop, so there are no locks. The worker
is a coordinator of narrow collaborators:

- ``Link`` (link.py): the AMQP connection, its publish channel and consumer channels;
- ``Ledger`` (ledger.py): which delivery may be acknowledged, on which channel;
- ``JobPool`` (pool.py): job processes, dispatch, deadlines, deaths (``Happened`` events);
- ``PartitionFeatures`` (partition.py): cancel, pause, queue and execution keys;
- ``Outbox`` (outbox.py): retry, burial and parking publishes, confirmed before the ack;
- ``Intake`` (intake.py): a delivery becomes a job, or is parked, judged or held;
- ``FateActions`` (fate_actions.py): does what a job's fate is, with the collaborators above;
- ``ConsumerTimeout`` (consumer_timeout.py): the timeout in force, the jobs that overran it;
- ``readiness.py``: what the worker still waits for, logged while it is not ready.

What a job's fate is after anything happens to it is decided in one place,
``roger.core.fate.decide``; ``FateActions.carry_out`` only does it. A message is
acknowledged only once its fate is safe: success, retry or burial published and confirmed,
parked in ``.invalid`` and confirmed, or cancelled.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from roger.core import delay, fate, topology
from roger.core.config import WorkerConfig, split_slots
from roger.core.hooks import HookName
from roger.core.jobs import JobRegistry
from roger.core.lifecycle import LifecycleEvent, LifecycleObserver
from roger.worker import readiness
from roger.worker.consumer_timeout import ConsumerTimeout
from roger.worker.edges import REAL_EDGES, Edges
from roger.worker.fate_actions import FateActions
from roger.worker.intake import Intake
from roger.worker.ledger import Ledger
from roger.worker.outbox import Outbox, sample_queues
from roger.worker.partition import PartitionFeatures
from roger.worker.pool import JobPool
from roger.worker.procs import available_cpus, job_process_spec
from roger.worker.tasks import QueueState, Task
from roger.worker.telemetry import NullTelemetry, Telemetry

log = logging.getLogger("roger.worker")
SAMPLE_EVERY = 5.0


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        amqp_url: str,
        registry: JobRegistry,
        observers: Sequence[LifecycleObserver] = (),
        telemetry: Telemetry | None = None,
        sys_path: Sequence[str] = (),
        edges: Edges = REAL_EDGES,
    ) -> None:
        self.config = config
        self.partition = config.partition
        self.levels = config.retry_levels
        self.registry = registry
        self.telemetry: Telemetry = telemetry or NullTelemetry()
        self.observers: list[LifecycleObserver] = [self.telemetry, *observers]
        self.ioloop = edges.ioloop()
        self.queues = {n: QueueState.make(self.partition, n, w) for n, w in config.queues.items()}
        decls = [
            d
            for name in config.queues
            for d in topology.declarations(self.partition, name, config.retry_levels)
        ]
        keep = {k for n in config.queues for k in topology.keeps_its_arguments(self.partition, n)}
        # delayed jobs reach these queues through the ladder's due exchange
        exchanges, bindings = delay.worker_topology(self.partition, list(config.queues))
        self.link = edges.link(
            amqp_url,
            self.ioloop,
            decls,
            self._connected,
            self._lost,
            self.fatal,
            name=f"roger-worker {self.partition} {os.uname().nodename} {os.getpid()}",
            keep_existing=keep,
            exchanges=exchanges,
            bindings=bindings,
        )
        self.link.on_ack_timeout = self._ack_timed_out
        self.consumer_timeout = ConsumerTimeout(config.broker_consumer_timeout, self.telemetry)
        self.ledger = Ledger(self.ioloop.call_later)
        self.link.flush_acks = lambda: self.ledger.flush(final=True)
        self.ledger.after_flush = self._maybe_finish
        self.outbox = Outbox(
            self.partition,
            self.link,
            self.ioloop,
            self.telemetry,
            self.ledger.settle,
            config.buried_max_length,
            self._observe_all,
        )
        self.features = PartitionFeatures(self.partition, self, edges.partition_state)
        self.telemetry.prepare([n for n, q in self.queues.items() if q.max_workers > 0])
        self.pool = JobPool(
            job_process_spec(config, sys_path),
            self.ioloop,
            self.telemetry,
            config.callback_timeout,
            self,
            edges.job_process,
        )
        self.stopping = self.finished = False
        self.exit_code = 0
        self.fates = FateActions(
            ledger=self.ledger,
            outbox=self.outbox,
            features=self.features,
            pool=self.pool,
            ioloop=self.ioloop,
            telemetry=self.telemetry,
            emit=self.emit,
            run_hooks=self.run_hooks,
        )
        self.intake = Intake(
            registry=registry,
            levels=self.levels,
            ledger=self.ledger,
            outbox=self.outbox,
            features=self.features,
            pool=self.pool,
            consumer_timeout=self.consumer_timeout,
            happened=self.happened,
            stopping=lambda: self.stopping,
        )
        self.last_tick = time.monotonic()
        self.wedged = ""  # why a job process is wedged, checked every tick
        self.lost_once = False
        self.ready_watch = readiness.ReadyWatch(time.monotonic())

    # -- lifecycle -----------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        self.consumer_timeout.warn_at_risk(
            self.queues.values(), self.registry.jobs.values(), self.config.callback_timeout
        )
        processes = self.config.job_processes or available_cpus()
        for q in self.queues.values():
            self.pool.start(q, split_slots(q.max_workers, processes))
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
        """For /healthz (another thread): the loop turns, and no job process is wedged."""
        return self.exit_code == 0 and time.monotonic() - self.last_tick < 15 and not self.wedged

    def ready(self) -> bool:
        return (
            self.link.ready
            and not self.stopping
            and all(
                q.consumer_tag is not None
                for q in self.queues.values()
                if q.max_workers and not self.features.is_paused(q.name)
            )
        )

    def _signal(self, signum: int, _frame: Any) -> None:
        self.ioloop.add_callback_threadsafe(self.shutdown)

    def _tick(self) -> None:
        self.last_tick = time.monotonic()
        wedged = self.pool.wedged(self.last_tick)
        if wedged and not self.wedged:
            log.error("unhealthy: %s", wedged)
        self.wedged = wedged
        self.ready_watch.tick(self.last_tick, self.stopping or self.ready(), self.waiting_for)
        self.ioloop.call_later(1.0, self._tick)

    def waiting_for(self) -> str:
        """What keeps the worker from being ready (empty when it is)."""
        if self.stopping:
            return "nothing (stopping)"
        consumed = [
            q for q in self.queues.values() if q.max_workers and not self.features.is_paused(q.name)
        ]
        return readiness.waiting_for(self.link.ready, self.features.state, consumed)

    def fatal(self, why: str) -> None:
        """The worker cannot run (refused declarations, a job process that cannot start)."""
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
            self._cancel_consumer(q)
            for task in self.pool.take_waiting(q):
                self.happened(task, fate.ShuttingDown())
        self.ioloop.call_later(self.config.shutdown_timeout, self._finish)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        idle = self.link.unconfirmed() == 0 and not self.pool.busy()
        if self.stopping and idle and not self.features.settling_after_keys:
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = self.stopping = True
        self.ledger.flush(final=True)
        self.pool.stop()  # busy jobs' deliveries stay unacked: back on close
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

    def start_consuming(self) -> None:
        """The partition state caught up: consume every queue that is not paused."""
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

    def set_consuming(self, q: QueueState, consume: bool) -> None:
        """Resume, or pause: take no more jobs from ``q``; running ones finish, waiting
        ones go back (and free the execution keys they hold)."""
        if consume:
            self._consume(q)
            return
        self._cancel_consumer(q)
        for task in self.pool.take_waiting(q):
            self.happened(task, fate.Paused())

    def queue_warm(self, q: QueueState) -> None:
        if q.want:
            q.want = False
            self._consume(q)

    def _consume(self, q: QueueState) -> None:
        """Start (or, after a pause, resume) consuming; the channel is kept across pauses
        so in-flight jobs are acknowledged on the channel that delivered them."""
        if self.stopping or q.consumer_tag is not None:
            return
        if not q.warm:  # take no job before the job processes can run it
            q.want = True
            return
        if q.epoch is not None and q.epoch.usable():
            epoch = q.epoch
            q.consumer_tag = epoch.channel.basic_consume(
                q.rabbit, partial(self.intake.on_message, q, epoch), auto_ack=False
            )
        elif self.link.ready:
            self.link.consume(q.rabbit, q.max_workers, partial(self._consuming, q))

    def _consuming(self, q: QueueState, channel: Any) -> None:
        """A new consumer channel for ``q``: a new epoch of deliveries."""
        epoch = q.epoch = self.ledger.open(channel)
        if self.stopping or q.consumer_tag is not None or self.features.is_paused(q.name):
            return  # paused while the channel opened: kept for the resume
        q.consumer_tag = channel.basic_consume(
            q.rabbit, partial(self.intake.on_message, q, epoch), auto_ack=False
        )

    def _cancel_consumer(self, q: QueueState) -> None:
        if q.epoch is not None and q.epoch.usable() and q.consumer_tag:
            q.epoch.channel.basic_cancel(q.consumer_tag)
        q.consumer_tag = None

    def _lost(self) -> None:
        """Unacked deliveries go back to the broker; running jobs finish unacknowledged."""
        self.lost_once = True
        self.features.detach()
        self.ledger.lost()  # every delivery so far: never acked on a later channel
        for q in self.queues.values():
            q.epoch, q.consumer_tag = None, None
            for task in self.pool.take_waiting(q):
                self.happened(task, fate.ConnectionLost())
        if self.stopping:
            self._finish()

    def _ack_timed_out(self, rabbit: str, channel: Any, timeout: float | None) -> None:
        """The broker closed ``rabbit``'s consumer channel (consumer timeout) and has
        every delivery of that channel again: stop or drop each of them here (decided in
        ``fate``), remember the overdue one, and consume again on a new channel. Every
        other queue and its jobs go on untouched."""
        q = next((q for q in self.queues.values() if q.rabbit == rabbit), None)
        if q is None or q.epoch is None or q.epoch.channel is not channel:
            return
        epoch, q.epoch, q.consumer_tag = q.epoch, None, None
        self.telemetry.ack_timed_out(q.name)
        running = [task for task in self.running() if task.epoch is epoch]
        self.consumer_timeout.channel_timed_out(running, timeout)
        # Decided while the epoch still counts as alive, so that keys are freed.
        for task in running:
            self.happened(task, fate.AckTimedOut(running=True))
        for task in self.pool.take_waiting(q):
            self.happened(task, fate.AckTimedOut(running=False))
        self.ledger.drop(epoch)
        if not self.features.is_paused(q.name):
            self._consume(q)

    # -- what the pool and the features report -------------------------------------
    def job_started(self, task: Task) -> None:
        self.telemetry.running(task.queue.name, 1)
        if not task.skip_before:
            self.emit(task, "before_run")

    def job_ended(
        self, task: Task, happened: fate.Happened, duration: float, hooks_ran: bool
    ) -> None:
        self.telemetry.running(task.queue.name, -1)
        self.fates.carry_out(task, happened, duration, hooks_ran)

    def happened(self, task: Task, happened: fate.Happened) -> None:
        """The fate of a job that is not running (waiting, paused, cancelled)."""
        self.fates.carry_out(task, happened, None)

    def settled_work(self) -> None:
        if self.stopping:  # once per job: no call on the hot path
            self._maybe_finish()

    def accept(self, task: Task) -> None:
        self.pool.submit(task)

    def settle(self, task: Task) -> None:
        self.ledger.settle(task.epoch, task.tag)

    def kill(self, job_id: str, cause: str) -> bool:
        return self.pool.kill(job_id, cause)

    def take_waiting(self, q: QueueState, job_id: str | None) -> list[Task]:
        return self.pool.take_waiting(q, job_id)

    def running(self) -> list[Task]:
        return [task for _, task in self.pool.running()]

    def run_hooks(
        self,
        task: Task,
        hook: HookName,
        error: fate.Error | None,
        then: Callable[[], None],
        stack: str | None = None,
    ) -> None:
        if self.config.callbacks:
            self.pool.run_hooks(task, hook, error, then, stack)
        else:
            then()

    def _observe_all(self, event: LifecycleEvent) -> None:
        """Events that are not a hook of a running task (a buried job dropped by the bound)."""
        for o in self.observers:
            try:
                o.observe(event)
            except Exception:  # an observer never stops the loop
                log.exception("lifecycle observer %r failed", o)

    def emit(
        self,
        task: Task,
        hook: HookName,
        error: tuple[str, str] | None = None,
        duration: float | None = None,
    ) -> None:
        event = task.lifecycle_event(hook, error, duration)
        for o in self.observers:  # twice per job: the loop inline, not a helper call
            try:
                o.observe(event)
            except Exception:  # an observer never stops the loop
                log.exception("lifecycle observer %r failed", o)

    # -- sampling ------------------------------------------------------------------
    def _sample(self) -> None:
        self.ioloop.call_later(SAMPLE_EVERY, self._sample)
        sample_queues(
            self.link, self.partition, list(self.queues.values()), self.levels, self.telemetry
        )
