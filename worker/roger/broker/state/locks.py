"""Execution keys: locks, waiting rooms and the sweep that keeps waiting jobs moving.

At most one job per execution key runs at a time, partition-wide.

- The lock of a key is an exclusive queue ``<p>.xkey.<digest>`` declared on this worker's
  connection: other connections get ``RESOURCE_LOCKED``, and the broker frees it when the
  connection dies, together with the deliveries it protects (a lost connection requeues
  the job and frees its key at once).
- A job whose key is busy is *parked* in the key's waiting room (a quorum queue), and a
  ``wait`` event in the control stream tells every worker that the key has jobs waiting.
- The job that held the key moves one waiting job back to its queue when it finishes
  (``release_next``). A holder that died never does: every worker *sweeps* the keys it
  knows to have waiting jobs and moves one back when the key is free.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from roger.broker.channels import Confirm, Got, declared
from roger.broker.flow import Flow, Refused, run
from roger.broker.state.session import PERSISTENT, Session, noop
from roger.core import naming
from roger.core import state as st

log = logging.getLogger("roger.state")

SWEEP_INTERVAL = 10.0  # seconds between sweeps; a key is swept at most every 2 intervals
SWEEP_BATCH = 256  # keys swept per tick at most (their checks share the one-shot channels)


class ExecutionLocks:
    def __init__(self, session: Session, control: st.ControlState) -> None:
        self.s = session
        self.control = control
        self.held: dict[str, str] = {}  # execution key -> job id, locks this connection holds
        self._last_sweep: dict[str, float] = {}
        self._sweeping: set[str] = set()  # keys whose sweep is under way

    def reset(self) -> None:
        """The connection is gone: its locks went with it (and its sweeps)."""
        self.held.clear()
        self._sweeping.clear()

    def start(self, gen: int) -> None:
        self.s.later(SWEEP_INTERVAL, lambda: self._sweep_tick(gen))

    # -- locks ------------------------------------------------------------------------------
    def try_lock(self, key: str, job_id: str, done: Confirm) -> None:
        """Take the lock of ``key`` for ``job_id``; ``done(False)`` if it is busy."""
        if key in self.held:
            done(self.held[key] == job_id)
            return
        run(self._lock(self.s.generation, key, job_id), done)

    def _lock(self, gen: int, key: str, job_id: str) -> Flow[bool]:
        name = naming.execution_lock_queue_name(self.s.partition, key)
        try:
            ch = yield self.s.one_shots.opened()
            try:
                yield ch.declare(name, exclusive=True, auto_delete=False)
            finally:
                ch.finish()
        except Refused:
            return False  # RESOURCE_LOCKED: another connection holds it (or ours is gone)
        log.debug("execution key %r taken for %s", key, job_id)
        if self.s.alive(gen) and key not in self.held:
            self.held[key] = job_id
            return True
        return self.s.alive(gen) and self.held.get(key) == job_id

    def unlock(self, key: str, done: Confirm = noop) -> None:
        if self.held.pop(key, None) is None:
            done(True)
            return
        run(self._unlock(key), done)

    def _unlock(self, key: str) -> Flow[bool]:
        name = naming.execution_lock_queue_name(self.s.partition, key)
        try:
            ch = yield self.s.one_shots.opened()
            try:
                yield ch.delete(name)
            finally:
                ch.finish()
        except Refused as refused:
            return refused.code in (0, 404)  # the lock queue dies with the connection anyway
        return True

    # -- waiting rooms --------------------------------------------------------------------
    def park(self, key: str, body: bytes, props: Any, done: Confirm) -> None:
        """Put a job whose execution key is busy into its waiting room (confirmed), and
        announce the key in the control stream so that sweepers know about it. The caller
        acks the delivery after ``done(True)``, then should call ``recheck(key)``."""
        if self.s.pub is None:
            done(False)
            return
        run(self._park(key, body, props), done)

    def _park(self, key: str, body: bytes, props: Any) -> Flow[bool]:
        pub = self.s.pub
        assert pub is not None
        name = naming.execution_waiting_queue_name(self.s.partition, key)
        if not pub.channel.is_open:
            return False
        yield declared(pub.channel, name, durable=True, arguments=st.waiting_queue_arguments())
        parked = yield pub.published(name, body, props)
        if parked:
            ev = st.wait(key, self.s.clock())
            self.control.apply(ev, self.s.clock())
            self.s.publish(naming.control_stream_name(self.s.partition), st.encode(ev), PERSISTENT)
        return bool(parked)

    def recheck(self, key: str, done: Confirm = noop) -> None:
        """After parking: if the key was freed meanwhile, move one waiting job back (closes
        the race with a holder that looked at the waiting room just before the park)."""
        if key in self.held:
            done(True)
            return
        token = f"sweep-{uuid.uuid4().hex}"

        def locked(ok: bool) -> None:
            if ok:
                self.release_next(key, done)
            else:
                done(True)

        self.try_lock(key, token, locked)

    def release_next(self, key: str, done: Confirm = noop) -> None:
        """Free the key, then move one job from its waiting room back to its queue.

        The key is freed first so that the job moved back can take it when it is
        delivered (were it still held, that job would be parked again, and so on).
        """
        self.unlock(key, lambda _ok: run(self._move_one(key), done))

    def _move_one(self, key: str) -> Flow[bool]:
        name = naming.execution_waiting_queue_name(self.s.partition, key)
        pub = self.s.pub
        try:
            ch = yield self.s.one_shots.opened()
            try:
                yield ch.declare(name, durable=True, arguments=st.waiting_queue_arguments())
                got: Got | None = yield ch.get(name)
                if got is None:
                    log.debug("no job waits for %r", key)
                    return True
                target = target_queue(self.s.partition, got.body)
                if target is None:
                    log.error("waiting job without a queue in %s; left there", name)
                    return True
                if pub is None:
                    return True
                log.debug("moving a waiting job of %r back to %s", key, target)
                if (yield pub.published(target, got.body, got.props)):
                    ch.ack(got.tag)  # not acked (not published): back to the waiting room
                self._last_sweep[key] = self.s.clock()
            finally:
                ch.finish()
        except Refused as refused:
            log.debug("moving a waiting job of %r refused (%s)", key, refused.code)
            return refused.code in (0, 404)
        return True

    # -- sweep ------------------------------------------------------------------------------
    def _sweep_tick(self, gen: int) -> None:
        if not self.s.alive(gen):
            return
        now = self.s.clock()
        room = SWEEP_BATCH - len(self._sweeping)  # a slow broker: never pile sweeps up
        for key in list(self.control.waiting):
            if room <= 0:
                break
            if key in self.held or key in self._sweeping:
                continue
            if now - self._last_sweep.get(key, 0) < SWEEP_INTERVAL * 2:
                continue
            self._last_sweep[key] = now
            self._sweeping.add(key)
            room -= 1
            run(self._sweep_key(gen, key), self._swept(key))
        self.s.later(SWEEP_INTERVAL, lambda: self._sweep_tick(gen))

    def _swept(self, key: str) -> Callable[[None], None]:
        return lambda _result: self._sweeping.discard(key)

    def _sweep_key(self, gen: int, key: str) -> Flow[None]:
        """Free key with jobs waiting (a holder died, or a race): move one of them back."""
        log.debug("sweeping waiting room of %r", key)
        name = naming.execution_waiting_queue_name(self.s.partition, key)
        try:
            ch = yield self.s.one_shots.opened()
            try:
                frame = yield ch.declare(name, passive=True)
            finally:
                ch.finish()
        except Refused as refused:
            if refused.code == 404:  # the waiting room is gone (expired or never made)
                self._forget(key)
            return
        if frame.method.message_count == 0:
            self._forget(key)  # empty: stop sweeping it
            return
        if self.s.alive(gen):
            self.recheck(key)

    def _forget(self, key: str) -> None:
        self.control.waiting.pop(key, None)
        self._last_sweep.pop(key, None)


def target_queue(partition: str, body: bytes) -> str | None:
    """The partition queue a waiting job goes back to (from its body's ``queue``)."""
    try:
        queue = json.loads(body).get("queue")
    except (ValueError, AttributeError):
        return None
    if not isinstance(queue, str) or not queue:
        return None
    return naming.queue_name(partition, queue)
