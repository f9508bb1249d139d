"""An in-memory stand-in for ``PartitionState``, for unit tests of the worker's runtime.

In the spirit of Dramatiq's ``StubBroker``: the runtime's state machine (pause while jobs
wait for locks, cancels of queued and running jobs, keys freed when jobs leave) can be
driven without RabbitMQ. ``FakeStateBroker`` is the partition as the broker would hold it
(control events, pause states, execution locks, waiting rooms, queue keys, the queues
jobs are moved back to); each ``FakePartitionState`` is one worker's view of it, with the
same interface as ``roger.broker.state.PartitionState``.

Answers (``done(...)``, ``on_ready``, ``on_cancel``, ``on_pause``) are given at once
unless a ``defer`` function is passed, which then schedules each of them (e.g. on a fake
ioloop), as the real answers come later from the broker. Only what
``tests/integration/test_state_contract.py`` checks against the real broker is promised.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from roger.broker.state.locks import target_queue
from roger.core import naming
from roger.core import state as st
from roger.core import worker_status as ws

Done = Callable[[bool], None]
Defer = Callable[[Callable[[], None]], None]


def _noop(_ok: bool) -> None:
    pass


def _now(fn: Callable[[], None]) -> None:
    fn()


@dataclass
class FakeStateBroker:
    """The partition's state as RabbitMQ would hold it; shared by every fake worker."""

    partition: str
    control_events: list[st.ControlEvent] = field(default_factory=list)
    paused: dict[str, bool] = field(default_factory=dict)
    locks: dict[str, FakePartitionState] = field(default_factory=dict)  # key -> holder
    waiting: dict[str, deque[tuple[bytes, Any]]] = field(default_factory=dict)
    queues: dict[str, list[tuple[bytes, Any]]] = field(default_factory=dict)  # by full name
    queue_keys: dict[str, str] = field(default_factory=dict)  # key -> job id
    statuses: list[ws.WorkerStatus] = field(default_factory=list)
    attached: list[FakePartitionState] = field(default_factory=list)

    # -- what clients do ------------------------------------------------------------------
    def publish_control(self, ev: st.ControlEvent) -> None:
        self.control_events.append(ev)
        for worker in list(self.attached):
            worker._control_event(ev)

    def cancel(self, job_id: str) -> None:
        self.publish_control(st.cancel(job_id, time.time(), "fake-client"))

    def set_paused(self, queue: str, paused: bool) -> None:
        self.paused[queue] = paused
        for worker in list(self.attached):
            worker._pause_event(queue, paused)

    def take_queue_key(self, key: str, job_id: str) -> bool:
        if key in self.queue_keys:
            return False
        self.queue_keys[key] = job_id
        return True

    def queue_key_holder(self, key: str) -> str | None:
        return self.queue_keys.get(key)

    def waiting_count(self, key: str) -> int:
        return len(self.waiting.get(key, ()))

    def queue_bodies(self, queue: str) -> list[bytes]:
        """Bodies moved back to a partition queue (``queue`` as in the job), taken out."""
        got = self.queues.pop(naming.queue_name(self.partition, queue), [])
        return [body for body, _props in got]


_tokens = itertools.count()


class FakePartitionState:
    """One worker's view of a ``FakeStateBroker``, with ``PartitionState``'s interface."""

    def __init__(
        self,
        partition: str,
        queues: list[str],
        *,
        on_ready: Callable[[], None] = lambda: None,
        on_cancel: Callable[[str], None] = lambda _id: None,
        on_pause: Callable[[str, bool], None] = lambda _q, _p: None,
        ident: str | None = None,
        clock: Callable[[], float] = time.time,
        broker: FakeStateBroker | None = None,
        defer: Defer = _now,
    ) -> None:
        self.partition = partition
        self.queues = list(queues)
        self.on_ready, self.on_cancel, self.on_pause = on_ready, on_cancel, on_pause
        self.ident = ident or f"fake:{next(_tokens)}"
        self.clock = clock
        self.broker = broker if broker is not None else FakeStateBroker(partition)
        self.defer = defer
        self.control = st.ControlState()
        self.pause = st.PauseState()
        self.conn: Any = None
        self.generation = 0
        self.ready = False
        self.held: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def attach(self, conn: Any) -> None:
        self.detach()
        self.conn = conn
        self.generation += 1
        now = self.clock()
        for ev in self.broker.control_events:
            self.control.apply(ev, now)
        for queue in self.queues:
            if queue in self.broker.paused:
                self.pause.paused[queue] = self.broker.paused[queue]
        self.broker.attached.append(self)
        gen = self.generation

        def ready() -> None:
            if gen == self.generation and self.conn is not None:
                self.ready = True
                self.on_ready()

        self.defer(ready)

    def detach(self) -> None:
        """The connection died: its locks go with it."""
        self.ready = False
        for key in self.held:
            if self.broker.locks.get(key) is self:
                del self.broker.locks[key]
        self.held.clear()
        if self in self.broker.attached:
            self.broker.attached.remove(self)
        self.conn = None

    def waiting_for(self) -> str:
        if self.ready:
            return ""
        return "the AMQP connection" if self.conn is None else "nothing (about to be ready)"

    def _answer(self, done: Done, ok: bool) -> None:
        self.defer(lambda: done(ok))

    # -- events from the broker -----------------------------------------------------------
    def _control_event(self, ev: st.ControlEvent) -> None:
        def fold() -> None:
            if self.control.apply(ev, self.clock()) and ev.type == "cancel" and ev.job_id:
                self.on_cancel(ev.job_id)

        self.defer(fold)

    def _pause_event(self, queue: str, paused: bool) -> None:
        if queue not in self.queues:
            return

        def fold() -> None:
            ev = (st.pause if paused else st.resume)(queue, self.clock())
            if self.pause.apply(ev):
                self.on_pause(queue, paused)

        self.defer(fold)

    # -- cancel ---------------------------------------------------------------------------
    def is_cancelled(self, job_id: str) -> bool:
        return self.control.is_cancelled(job_id)

    def cancel_handled(self, job_id: str) -> bool:
        return self.control.cancel_handled(job_id)

    def publish_event(self, ev: st.ControlEvent, done: Done = _noop) -> None:
        if self.conn is None:
            self._answer(done, False)
            return
        self.broker.publish_control(ev)
        self._answer(done, True)

    def cancel_done(self, job_id: str, done: Done = _noop) -> None:
        ev = st.cancel_done(job_id, self.clock(), self.ident)
        self.control.apply(ev, self.clock())
        self.publish_event(ev, done)

    # -- pause ----------------------------------------------------------------------------
    def is_paused(self, queue: str) -> bool:
        return self.pause.is_paused(queue)

    # -- execution keys -------------------------------------------------------------------
    def try_lock(self, key: str, job_id: str, done: Done) -> None:
        if key in self.held:
            self._answer(done, self.held[key] == job_id)
        elif self.conn is None or key in self.broker.locks:
            self._answer(done, False)
        else:
            self.broker.locks[key] = self
            self.held[key] = job_id
            self._answer(done, True)

    def unlock(self, key: str, done: Done = _noop) -> None:
        if self.held.pop(key, None) is not None and self.broker.locks.get(key) is self:
            del self.broker.locks[key]
        self._answer(done, True)

    def park(self, key: str, body: bytes, props: Any, done: Done) -> None:
        if self.conn is None:
            self._answer(done, False)
            return
        self.broker.waiting.setdefault(key, deque()).append((body, props))
        ev = st.wait(key, self.clock())
        self.control.apply(ev, self.clock())
        self.broker.publish_control(ev)
        self._answer(done, True)

    def recheck(self, key: str, done: Done = _noop) -> None:
        if key in self.held:
            self._answer(done, True)
            return
        token = f"sweep-{next(_tokens)}"

        def locked(ok: bool) -> None:
            if ok:
                self.release_next(key, done)
            else:
                done(True)

        self.try_lock(key, token, locked)

    def release_next(self, key: str, done: Done = _noop) -> None:
        self.unlock(key, lambda _ok: self._move_one(key, done))

    def _move_one(self, key: str, done: Done) -> None:
        room = self.broker.waiting.get(key)
        if self.conn is not None and room:
            body, props = room[0]
            queue = target_queue(self.partition, body)
            if queue is not None:
                room.popleft()
                self.broker.queues.setdefault(queue, []).append((body, props))
        self._answer(done, True)

    def sweep(self) -> None:
        """One pass of the sweep the real state runs on a timer."""
        for key in list(self.control.waiting):
            if not self.broker.waiting.get(key):
                self.control.waiting.pop(key, None)
            elif key not in self.held:
                self.recheck(key)

    # -- queue keys -----------------------------------------------------------------------
    def release_queue_key(self, key: str, job_id: str, done: Done = _noop) -> None:
        holder = self.broker.queue_keys.get(key)
        if holder is None:
            self._answer(done, True)
        elif holder == job_id:
            del self.broker.queue_keys[key]
            self._answer(done, True)
        else:
            self._answer(done, False)

    # -- worker status --------------------------------------------------------------------
    def publish_status(self, status: ws.WorkerStatus, done: Done = _noop) -> None:
        if self.conn is None:
            self._answer(done, False)
            return
        self.broker.statuses.append(status)
        self._answer(done, True)
