"""Partition-wide features in the worker: cancel, pause, queue keys, execution keys.

The runtime (``roger.worker.runtime.Worker``) consults one ``PartitionFeatures`` at named
points and otherwise does not know about partition state:

- ``attach(conn)`` / ``detach()``: on each connection ready / lost. The runtime starts
  consuming only when ``_start_consuming`` is called back (state caught up: every cancel
  and pause known before the first job is taken).
- ``intercept(task)`` on each valid delivery: True when the delivery was handled here
  (cancelled: skipped; queue paused: put back; execution key busy: parked) or will be
  handed back later through ``Worker._accept`` (execution key taken).
- ``finished(task, leaving)`` when a job's outcome is decided: frees its execution key
  (moving one waiting job back) and, when the job leaves the partition, its queue key.
- ``killed(task)`` when the runtime reaped a child it killed for a cancel.

Everything runs on the worker's ioloop thread.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import pika

from roger.broker.state import PartitionState
from roger.core import envelope, frames
from roger.core import state as st
from roger.core.message import JobMessage
from roger.worker.tasks import HookTask, QueueState, Task

if TYPE_CHECKING:
    from roger.worker.runtime import Worker

log = logging.getLogger("roger.worker")


class PartitionFeatures:
    def __init__(self, worker: Worker) -> None:
        self.w = worker
        consumed = [n for n, q in worker.queues.items() if q.max_workers > 0]
        self.state = PartitionState(
            worker.partition,
            consumed,
            on_ready=self._ready,
            on_cancel=self._cancel_event,
            on_pause=self._pause_event,
        )
        self._heartbeat_gen = -1

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
        self.w._start_consuming()
        if self._heartbeat_gen != self.state.generation:
            self._heartbeat_gen = self.state.generation
            self._heartbeat(self.state.generation)

    def is_paused(self, queue: str) -> bool:
        return self.state.is_paused(queue)

    # -- deliveries -------------------------------------------------------------------
    def intercept(self, task: Task) -> bool:
        msg = task.msg
        if self.state.is_cancelled(msg.id):
            self._skip_cancelled(task)
            return True
        if self.state.is_paused(task.queue.name):
            self.w._requeue(task)  # arrived just as the queue was paused
            return True
        key = msg.execution_key
        if key is None:
            return False
        gen = task.gen

        def locked(ok: bool) -> None:
            if gen != task.queue.gen:
                if ok:
                    self.state.unlock(key)
                return  # the delivery died with its connection
            if ok:
                if self.state.is_cancelled(msg.id):  # cancelled while we waited
                    self._skip_cancelled(task, holding=True)
                else:
                    self.w._accept(task)
            else:
                self._park(task, key)

        self.state.try_lock(key, msg.id, locked)
        return True

    def _park(self, task: Task, key: str) -> None:
        def parked(ok: bool) -> None:
            if ok:
                self.w._settle(task.queue, task.tag, task.gen)
                self.state.recheck(key)
            else:
                self.w._requeue(task)

        props = pika.BasicProperties(**envelope.kept_properties(task.props))
        self.state.park(key, task.body, props, parked)

    def finished(self, task: Task, leaving: bool) -> None:
        """The job's outcome is decided (``leaving``: it will not run again)."""
        if task.gen != self.state.generation or task.gen != self.w.link.generation:
            return  # redelivered after a reconnect: the next attempt frees the keys
        msg = task.msg
        if msg.execution_key is not None and self.state.held.get(msg.execution_key) == msg.id:
            self.state.release_next(msg.execution_key)
        if leaving and msg.queue_key is not None:
            self.state.release_queue_key(msg.queue_key, msg.id)

    def parked(self, msg: JobMessage, gen: int) -> None:
        """A valid message that must never run was parked in ``.invalid``: it left."""
        if msg.queue_key is not None and gen == self.state.generation:
            self.state.release_queue_key(msg.queue_key, msg.id)

    # -- cancel -----------------------------------------------------------------------
    def _cancel_event(self, job_id: str) -> None:
        """A cancel arrived: kill the job if it runs here, drop it if it waits here."""
        for q in self.w.queues.values():
            for child in list(q.children):
                for task in list(child.tasks.values()):
                    if isinstance(task, Task) and task.msg.id == job_id and not task.settled:
                        log.info("cancelling running job %s: killing process %d", job_id, child.pid)
                        child.kill("cancel", task.key)  # the exit handler calls killed(task)
            for waiting in (q.pending, q.suspect_pending):
                for task in [t for t in waiting if t.msg.id == job_id]:
                    waiting.remove(task)
                    self._skip_cancelled(task, holding=True)

    def killed(self, task: Task) -> None:
        """The runtime reaped the child we killed for a cancel."""
        task.settled = True
        self.w._cancel_timer(task)
        self._skip_cancelled(task, holding=True)

    def _skip_cancelled(self, task: Task, holding: bool = False) -> None:
        """Never run (again): ``on_cancel`` once, keys freed, acknowledged, not retried."""
        msg, q = task.msg, task.queue
        if not self.state.cancel_handled(msg.id):
            self.w._emit(task, "on_cancel")
            self.w.telemetry.outcome(q.name, msg.name, "cancelled", None)
            if self.w.config.callbacks:
                self._run_on_cancel(q, task)
            self.state.cancel_done(msg.id)
        if holding:
            self.finished(task, leaving=True)
        elif msg.queue_key is not None and task.gen == self.state.generation:
            self.state.release_queue_key(msg.queue_key, msg.id)
        self.w._settle(q, task.tag, task.gen)

    def _run_on_cancel(self, q: QueueState, task: Task) -> None:
        key = next(self.w.keys)  # the child answers with this key
        frame = frames.encode(
            {
                "t": "hooks",
                "k": key,
                "hook": "on_cancel",
                "err": ["cancelled", ""],
                "st": None,
                "at": task.started_at or None,
                "job": json.loads(task.body),
            }
        )
        q.hook_backlog.append(HookTask(key, q, "on_cancel", frame))
        self.w._pump_soon(q)

    # -- pause ------------------------------------------------------------------------
    def _pause_event(self, queue: str, paused: bool) -> None:
        q = self.w.queues.get(queue)
        if q is not None and q.max_workers > 0:
            self.w.telemetry.queue_paused(queue, paused)
        if q is None or q.max_workers == 0 or not self.state.ready:
            return  # before ready, _start_consuming reads the state
        log.info("queue %s %s", queue, "paused" if paused else "resumed")
        if paused:
            self.w._stop_consuming(q)
        else:
            self.w._consume(q)

    # -- status -----------------------------------------------------------------------
    def status(self) -> st.WorkerStatus:
        running = []
        for q in self.w.queues.values():
            for task in (t for child in q.children for t in child.tasks.values()):
                if isinstance(task, Task) and not task.settled:
                    running.append(
                        st.RunningJob(
                            task.msg.id,
                            task.msg.name,
                            q.name,
                            task.started_at,
                            task.msg.execution_key,
                        )
                    )
        return st.WorkerStatus(
            worker=self.state.ident,
            at=time.time(),
            queues={n: q.max_workers for n, q in self.w.queues.items()},
            paused=tuple(self.state.pause.paused_queues()),
            running=tuple(running),
            stopping=self.w.stopping,
            retry_levels=tuple(self.w.levels),
        )

    def _heartbeat(self, gen: int) -> None:
        if gen != self.state.generation or self.state.conn is None:
            return
        self.state.publish_status(self.status())
        self.w.ioloop.call_later(st.HEARTBEAT_INTERVAL, lambda: self._heartbeat(gen))
