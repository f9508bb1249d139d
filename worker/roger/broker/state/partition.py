"""``PartitionState``: partition-wide state seen from one worker process.

The runtime calls ``attach(connection)`` each time its ``SelectConnection`` is ready and
``detach()`` when it is lost; everything here runs on that connection's ioloop thread and
never blocks. This class sets up the connection's state channels (start-up), says when the
worker may take jobs (``ready``) and hands every other question to the part that knows:

- ``control``: the control stream (cancels, ``wait`` notices) and the start-up sync;
- ``pause``: the pause stream of each queue;
- ``locks``: execution locks, waiting rooms and their sweep;
- ``queue_keys``: freeing a queue key when its job leaves.

Start-up never waits silently: ``waiting_for()`` says what is missing (the runtime logs it)
and after ``STARTUP_DEADLINE`` without being ready the connection is dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from roger.broker.channels import (
    Confirm,
    Confirms,
    channel_opened,
    confirms_selected,
    declared,
    qos_set,
)
from roger.broker.flow import Flow, run
from roger.broker.state.control import SYNC_TIMEOUT, ControlFollower
from roger.broker.state.locks import ExecutionLocks
from roger.broker.state.pause import PauseFollower
from roger.broker.state.queue_keys import QueueKeys
from roger.broker.state.session import PERSISTENT, Session, noop
from roger.core import naming
from roger.core import state as st
from roger.core import worker_status as ws

log = logging.getLogger("roger.state")

STARTUP_DEADLINE = 60.0  # not ready this long after attach: drop the connection
STREAM_PREFETCH = 500  # control and pause events in flight to this worker


def worker_ident() -> str:
    """``<pod>:<pid>``: the pod name (downward API ``POD_NAME``) else the host name, so the
    operator maps a heartbeat to its Pod (pod-deletion-cost) even where pods share a host."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}:{os.getpid()}"


class PartitionState:
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
    ) -> None:
        self.partition = partition
        self.queues = list(queues)
        self.on_ready = on_ready
        self.ident = ident or worker_ident()
        self.control = st.ControlState()
        self.pause = st.PauseState()
        self.ready = False
        self.session = Session(partition, clock)
        self.controls = ControlFollower(
            self.session,
            self.control,
            on_cancel=on_cancel,
            on_pause_notice=lambda q: self.pauses.notice(q, self.controls.synced),
            on_synced=self._maybe_ready,
        )
        self.pauses = PauseFollower(
            self.session, self.queues, self.pause, on_pause=on_pause, on_resolved=self._maybe_ready
        )
        self.locks = ExecutionLocks(self.session, self.control)
        self.queue_keys = QueueKeys(self.session)
        self._attached_at = 0.0

    # -- what the runtime reads ---------------------------------------------------------
    @property
    def conn(self) -> Any:
        return self.session.conn

    @property
    def generation(self) -> int:
        return self.session.generation

    @property
    def clock(self) -> Callable[[], float]:
        return self.session.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.session.clock = clock

    @property
    def held(self) -> dict[str, str]:
        """Execution key -> job id, for the locks this connection holds."""
        return self.locks.held

    # -- lifecycle --------------------------------------------------------------------
    def attach(self, conn: Any) -> None:
        """Start on a freshly opened connection; ``on_ready`` fires once caught up."""
        self.detach()
        gen = self.session.begin(conn)
        self._attached_at = time.monotonic()
        run(self._start(gen))
        self.session.later(STARTUP_DEADLINE, lambda: self._deadline(gen))

    def detach(self) -> None:
        """The connection is gone: locks went with it; keep folded state (it stays valid)."""
        self.ready = False
        self.locks.reset()
        self.pauses.reset()
        self.controls.reset()
        self.queue_keys.reset()
        self.session.end()
        self.session.stage = "the AMQP connection"

    def _start(self, gen: int) -> Flow[None]:
        s = self.session
        s.stage = "the state publish channel"
        pub = yield channel_opened(s.conn)
        if not s.alive(gen):
            return
        pub.add_on_close_callback(lambda _c, reason: self._lost_channel(gen, "publish", reason))
        s.pub = confirms = Confirms(pub)
        s.stage = "the partition streams to be declared"
        yield confirms_selected(pub, confirms.on_confirm)
        for name, args in (
            (naming.control_stream_name(self.partition), st.control_stream_arguments()),
            (naming.workers_stream_name(self.partition), ws.workers_stream_arguments()),
            (naming.checkpoint_stream_name(self.partition), st.checkpoint_stream_arguments()),
        ):
            yield declared(pub, name, durable=True, arguments=args)
        if not s.alive(gen):
            return
        s.stage = "the stream consumer channel"
        cons = yield channel_opened(s.conn)
        if not s.alive(gen):
            return
        s.cons = cons
        cons.add_on_close_callback(lambda _c, reason: self._lost_channel(gen, "stream", reason))
        yield qos_set(cons, STREAM_PREFETCH)
        if not s.alive(gen):
            return
        self.pauses.start(gen)
        self.controls.start(gen)
        self.locks.start(gen)
        self.queue_keys.start(gen)

    def _lost_channel(self, gen: int, what: str, reason: Any) -> None:
        if self.session.alive(gen):
            log.warning("state %s channel closed (%s); dropping the connection", what, reason)
            self.session.drop(gen)

    def _maybe_ready(self) -> None:
        if (
            not self.ready
            and self.controls.synced
            and self.session.cons is not None
            and not self.pauses.unresolved()
        ):
            self.ready = True
            self.on_ready()

    def waiting_for(self) -> str:
        """What start-up waits for now (empty once ready), for people reading the log."""
        if self.ready:
            return ""
        stage = self.session.stage
        parts = [stage] if stage else []
        pending = self.pauses.unresolved()
        if self.session.cons is not None and pending:
            parts.append("the pause state of queue(s) " + ", ".join(pending))
        return "; ".join(parts) or "nothing (about to be ready)"

    def _deadline(self, gen: int) -> None:
        if self.session.alive(gen) and not self.ready:
            quiet = time.monotonic() - self.controls.progress_at
            if self.controls.progress_at and quiet < SYNC_TIMEOUT:
                # still reading the control stream (a first start on a long history)
                self.session.later(SYNC_TIMEOUT, lambda: self._deadline(gen))
                return
            log.error(
                "partition state of %s not ready %.0fs after connecting (waiting for %s); "
                "dropping the connection to start over",
                self.partition,
                time.monotonic() - self._attached_at,
                self.waiting_for(),
            )
            self.session.drop(gen)

    # -- cancel ---------------------------------------------------------------------------
    def is_cancelled(self, job_id: str) -> bool:
        return self.control.is_cancelled(job_id)

    def cancel_handled(self, job_id: str) -> bool:
        return self.control.cancel_handled(job_id)

    def publish_event(self, ev: st.ControlEvent, done: Confirm = noop) -> None:
        self.session.publish(
            naming.control_stream_name(self.partition), st.encode(ev), PERSISTENT, done
        )

    def cancel_done(self, job_id: str, done: Confirm = noop) -> None:
        """Record that ``on_cancel`` ran, so a redelivery of the job does not run it again."""
        ev = st.cancel_done(job_id, self.clock(), self.ident)
        self.control.apply(ev, self.clock())
        self.publish_event(ev, done)

    # -- pause ------------------------------------------------------------------------------
    def is_paused(self, queue: str) -> bool:
        return self.pause.is_paused(queue)

    # -- execution keys ---------------------------------------------------------------------
    def try_lock(self, key: str, job_id: str, done: Confirm) -> None:
        """Take the execution lock of ``key`` for ``job_id``; ``done(False)`` if it is busy."""
        self.locks.try_lock(key, job_id, done)

    def unlock(self, key: str, done: Confirm = noop) -> None:
        self.locks.unlock(key, done)

    def park(self, key: str, body: bytes, props: Any, done: Confirm) -> None:
        """Put a job whose key is busy in the key's waiting room (see ``ExecutionLocks``)."""
        self.locks.park(key, body, props, done)

    def recheck(self, key: str, done: Confirm = noop) -> None:
        self.locks.recheck(key, done)

    def release_next(self, key: str, done: Confirm = noop) -> None:
        self.locks.release_next(key, done)

    # -- queue keys ---------------------------------------------------------------------------
    def release_queue_key(self, key: str, job_id: str, done: Confirm = noop) -> None:
        self.queue_keys.release(key, job_id, done)

    # -- worker status ------------------------------------------------------------------------
    def publish_status(self, status: ws.WorkerStatus, done: Confirm = noop) -> None:
        self.session.publish(
            naming.workers_stream_name(self.partition), ws.encode_status(status), PERSISTENT, done
        )
