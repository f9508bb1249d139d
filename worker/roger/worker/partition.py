"""Partition-wide features in the worker: cancel, pause, queue keys, execution keys.

The worker's runtime consults one ``PartitionFeatures`` at named points and otherwise does
not know about partition state; the features talk back only through ``FeatureHost``:

- ``attach(conn)`` / ``detach()``: on each connection ready / lost. The host starts
  consuming only when ``start_consuming`` is called back (state caught up: every cancel
  and pause known before the first job is taken).
- ``intercept(task)`` on each valid delivery: True when the delivery was handled here
  (cancelled, paused, execution key busy) or will be handed back through ``accept``.
- ``finished(task, leaving, then)`` when a job's fate is decided: frees its execution key
  (moving one waiting job back) and, when the job leaves the partition, its queue key,
  before ``then()`` settles the delivery (``KEY_FIRST_WITHIN``).
- ``cancelled(task)``: the fate of a cancelled job (on_cancel once across replicas).

Everything runs on the worker's ioloop thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import pika

from roger.broker.state import PartitionState
from roger.core import delay, envelope, fate
from roger.core import worker_status as ws
from roger.core.hooks import HookName
from roger.core.message import JobMessage
from roger.worker.tasks import QueueState, RunHooks, Task
from roger.worker.telemetry import Telemetry

log = logging.getLogger("roger.worker")

KEY_FIRST_WITHIN: float = 5.0
"""Seconds a leaving job's settlement waits for its queue key to be freed first. Freed
after, a worker dying in between would leave the key held for days (the job was settled:
nothing frees it); freed first, such a death makes the broker deliver the job again, which
the crash explains. A key whose lock is held elsewhere does not hold the job up longer:
its release goes on (``roger.broker.state.queue_keys``)."""


def _nothing() -> None:
    pass


def _once(fn: Callable[[], None]) -> Callable[..., None]:
    """``fn`` on the first call, nothing on the others (any arguments ignored)."""
    pending = [fn]

    def call(*_: Any) -> None:
        if pending:
            pending.pop()()

    return call


class FeatureHost(Protocol):
    """What the partition features need from the worker."""

    queues: dict[str, QueueState]
    telemetry: Telemetry
    stopping: bool
    levels: tuple[int, ...]
    ioloop: Any

    def accept(self, task: Task) -> None:
        """Run this job (its execution key is taken)."""

    def happened(self, task: Task, happened: fate.Happened) -> None:
        """Something decides the fate of a job that is not running (paused, cancelled)."""

    def settle(self, task: Task) -> None:
        """Acknowledge the delivery once this loop turn's acks go out."""

    def emit(self, task: Task, hook: HookName) -> None:
        """Report a lifecycle event (metrics, Kubernetes Events)."""

    @property
    def run_hooks(self) -> RunHooks:
        """Run the callbacks' ``hook`` for a job that is not running, then ``then()``."""

    def settled_work(self) -> None:
        """A job's settlement went out: a stopping worker checks whether it is done."""

    def start_consuming(self) -> None: ...

    def set_consuming(self, q: QueueState, consume: bool) -> None:
        """Resume or pause one queue."""

    def kill(self, job_id: str, cause: str) -> bool:
        """Kill the job process running ``job_id``; True if one was."""

    def take_waiting(self, q: QueueState, job_id: str | None) -> list[Task]: ...

    def running(self) -> Iterable[Task]: ...


class PartitionFeatures:
    def __init__(
        self,
        partition: str,
        host: FeatureHost,
        make_state: Callable[..., PartitionState] = PartitionState,
    ) -> None:
        self.w = host
        consumed = [n for n, q in host.queues.items() if q.max_workers > 0]
        self.state = make_state(
            partition,
            consumed,
            on_ready=self._ready,
            on_cancel=self._cancel_event,
            on_pause=self._pause_event,
        )
        self._heartbeat_gen = -1
        self.settling_after_keys = 0  # jobs whose settlement waits for their queue key

    # -- connection -------------------------------------------------------------------
    def attach(self, conn: Any) -> None:
        self.state.attach(conn)

    def detach(self) -> None:
        self.state.detach()

    def _ready(self) -> None:
        log.info(
            "partition state caught up: %d cancelled ids, paused queues: %s",
            len(self.state.control.cancelled),
            ", ".join(self.state.pause.paused_queues()) or "none",
        )
        for name in self.state.queues:
            self.w.telemetry.queue_paused(name, self.state.is_paused(name))
        self.w.start_consuming()
        if self._heartbeat_gen != self.state.generation:
            self._heartbeat_gen = self.state.generation
            self._heartbeat(self.state.generation)

    def is_paused(self, queue: str) -> bool:
        return self.state.is_paused(queue)

    # -- deliveries -------------------------------------------------------------------
    def intercept(self, task: Task) -> bool:
        msg = task.msg
        if self.state.is_cancelled(msg.id):
            self.w.happened(task, fate.Cancelled())
            return True
        if self.state.is_paused(task.queue.name):
            self.w.happened(task, fate.Paused())  # arrived just as the queue was paused
            return True
        early = delay.not_due(getattr(task.props, "headers", None), time.time())
        if early:  # a long delay, one pass of the ladder done: round again
            self.w.happened(task, fate.NotDue(early))
            return True
        key = msg.execution_key
        if key is None:
            return False

        def locked(ok: bool) -> None:
            if not task.epoch.alive:
                if ok:
                    self.state.unlock(key)
                return  # the delivery died with its connection
            if not ok:
                self._wait(task, key)
            elif self.state.is_cancelled(msg.id):  # cancelled while we waited
                self.w.happened(task, fate.Cancelled())
            elif self.state.is_paused(task.queue.name):  # paused while we waited
                self.w.happened(task, fate.Paused())
            else:
                self.w.accept(task)

        self.state.try_lock(key, msg.id, locked)
        return True

    def _wait(self, task: Task, key: str) -> None:
        """The execution key is busy: into its waiting room (acked once it is there)."""

        def parked(ok: bool) -> None:
            if ok:
                self.w.settle(task)
                self.state.recheck(key)
            else:
                self.w.happened(task, fate.MoveRefused())

        props = pika.BasicProperties(**envelope.kept_properties(task.props))
        self.state.park(key, task.body, props, parked)

    def finished(self, task: Task, leaving: bool, then: Callable[[], None] = _nothing) -> None:
        """The job's fate is decided (``leaving``: it will not run again); ``then()`` settles
        its delivery, once the queue key of a leaving job is free (``KEY_FIRST_WITHIN``)."""
        if not task.epoch.alive:
            then()  # it does nothing on a dead delivery
            return  # redelivered after a reconnect: the next attempt frees the keys
        msg = task.msg
        if msg.execution_key is not None and self.state.held.get(msg.execution_key) == msg.id:
            self.state.release_next(msg.execution_key)
        if not leaving or msg.queue_key is None:
            then()
            return
        self.settling_after_keys += 1

        def settle_now() -> None:
            self.settling_after_keys -= 1
            then()
            self.w.settled_work()  # a stopping worker may be waiting for this one

        settle = _once(settle_now)
        self.state.release_queue_key(msg.queue_key, msg.id, settle)
        self.w.ioloop.call_later(KEY_FIRST_WITHIN, settle)

    def parked(self, msg: JobMessage) -> None:
        """A valid message that must never run was parked in ``.invalid``: it left."""
        if msg.queue_key is not None and self.state.conn is not None:
            self.state.release_queue_key(msg.queue_key, msg.id)

    # -- cancel -----------------------------------------------------------------------
    def _cancel_event(self, job_id: str) -> None:
        """A cancel arrived: kill the job if it runs here, drop it if it waits here."""
        self.w.kill(job_id, "cancel")  # the pool reports it Cancelled once reaped
        for q in self.w.queues.values():
            for task in self.w.take_waiting(q, job_id):
                self.w.happened(task, fate.Cancelled())

    def cancelled(self, task: Task) -> None:
        """Never run (again): ``on_cancel`` once, keys freed, acknowledged, not retried.

        ``on_cancel`` runs before anything says it ran: the ``cancel_done`` record (which
        keeps other replicas from running it again) and the ack. A worker dying before
        them leaves the job to be delivered again and its hook to run again (at least
        once); after them, the hook has run."""
        msg, q = task.msg, task.queue

        def settle() -> None:
            self.finished(task, leaving=True, then=lambda: self.w.settle(task))

        if self.state.cancel_handled(msg.id):
            settle()
            return

        def hook_ran() -> None:
            self.state.cancel_done(msg.id)
            settle()

        self.w.emit(task, "on_cancel")
        self.w.telemetry.outcome(q.name, msg.name, "cancelled", None)
        self.w.run_hooks(task, "on_cancel", None, hook_ran)

    # -- pause ------------------------------------------------------------------------
    def _pause_event(self, queue: str, paused: bool) -> None:
        q = self.w.queues.get(queue)
        if q is not None and q.max_workers > 0:
            self.w.telemetry.queue_paused(queue, paused)
        if q is None or q.max_workers == 0 or not self.state.ready:
            return  # before ready, _start_consuming reads the state
        log.info("queue %s %s", queue, "paused" if paused else "resumed")
        self.w.set_consuming(q, not paused)

    # -- status -----------------------------------------------------------------------
    def status(self) -> ws.WorkerStatus:
        running = tuple(
            ws.RunningJob(
                task.msg.id, task.msg.name, task.queue.name, task.started_at, task.msg.execution_key
            )
            for task in self.w.running()
        )
        return ws.WorkerStatus(
            worker=self.state.ident,
            at=time.time(),
            queues={n: q.max_workers for n, q in self.w.queues.items()},
            paused=tuple(self.state.pause.paused_queues()),
            running=running,
            stopping=self.w.stopping,
            retry_levels=tuple(self.w.levels),
        )

    def _heartbeat(self, gen: int) -> None:
        if gen != self.state.generation or self.state.conn is None:
            return
        self.state.publish_status(self.status())
        self.w.ioloop.call_later(ws.HEARTBEAT_INTERVAL, lambda: self._heartbeat(gen))
