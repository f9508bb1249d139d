"""The control stream ``<p>.control``: catching up at start-up, then following it live.

A worker must know every cancel before it runs a job, so it is not ready until it has read
the stream up to now. It consumes from ``now - HORIZON`` and publishes a ``sync`` nonce of
its own: when the nonce comes back, every older event has been folded.

The nonce is published and *confirmed before* the consumer attaches: RabbitMQ (3.10)
resolves a timestamp offset on a stream whose log is still empty (several workers creating
it at once) to "the next offset", which may already lie past events being written, the
nonce included; a confirmed nonce makes the log non-empty first. A nonce not back within
``SYNC_TIMEOUT`` subscribes again (folding is idempotent) with a new nonce; after
``SYNC_ATTEMPTS`` the connection is dropped (the runtime reconnects). A nonce is only
"not back" after ``SYNC_TIMEOUT`` *without progress*: a long replay is never restarted.

Start-up does not replay history that grows without bound: it first reads the last
checkpoint of ``<p>.checkpoint`` (the control stream folded up to an offset; waiting at most
``CHECKPOINT_READ_TIMEOUT`` for it) and subscribes from that offset, not from
``now - HORIZON``. Ready workers write checkpoints (see ``roger.core.state``). A checkpoint
that arrives after that wait (a loaded broker) is not wasted: while the replay from the
horizon has not reached its offset, the follower folds it and subscribes again from there,
so a slow checkpoint read never turns into a replay of the whole horizon (~700 events/s
on a loaded machine: docs/reliability.md).
"""

from __future__ import annotations

import datetime
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika

from roger.broker.channels import cancel_stream_consumer
from roger.broker.flow import Flow, run
from roger.broker.state.session import PERSISTENT, Session
from roger.core import naming
from roger.core import state as st

log = logging.getLogger("roger.state")

SYNC_TIMEOUT = 10.0  # a sync nonce not back (or not confirmed) by then: subscribe again
SYNC_ATTEMPTS = 3  # nonces before the connection is dropped
RETRY_DELAY = 1.0  # before retrying a nacked nonce
EXPIRE_INTERVAL = 600.0  # folded entries older than the horizon are dropped this often
CHECKPOINT_READ_TIMEOUT = 1.0  # no checkpoint delivered by then: replay from the horizon
OFFSET_HEADER = "control-offset"  # on a checkpoint: the first control offset it leaves out
_SYNC_PREFIX = b'{"type":"sync"'


class ControlFollower:
    def __init__(
        self,
        session: Session,
        control: st.ControlState,
        *,
        on_cancel: Callable[[str], None],
        on_pause_notice: Callable[[str], None],
        on_synced: Callable[[], None],
    ) -> None:
        self.s = session
        self.control = control
        self.on_cancel, self.on_pause_notice, self.on_synced = on_cancel, on_pause_notice, on_synced
        self.name = naming.control_stream_name(session.partition)
        self.synced = False  # our nonce came back: every older control event is folded
        self._nonce: str | None = None  # the nonce in flight
        self._attempt = 0
        self._tag: str | None = None
        self.checkpoint_name = naming.checkpoint_stream_name(session.partition)
        self._loading = False  # reading the last checkpoint (before the first nonce)
        self._start_offset: int | None = None  # from the checkpoint read at start-up
        self.next_offset = 0  # control offset after the last event folded here
        self.checkpointed = -1  # control offset the newest checkpoint known here covers
        self.progress_at = 0.0  # monotonic time of the last event read while catching up

    def reset(self) -> None:
        self.synced, self._nonce, self._attempt, self._tag = False, None, 0, None
        self._loading, self._start_offset = False, None

    def start(self, gen: int) -> None:
        """Read the last checkpoint (following the checkpoint stream), then sync."""
        s = self.s
        self._loading = True
        s.stage = f"the last checkpoint of {self.checkpoint_name}"
        s.cons.basic_consume(
            self.checkpoint_name,
            lambda _c, m, p, b: self._on_checkpoint(gen, m, p, b),
            arguments={"x-stream-offset": "last"},
        )
        s.later(CHECKPOINT_READ_TIMEOUT, lambda: self._loaded(gen))
        s.later(EXPIRE_INTERVAL, lambda: self._expire_tick(gen))
        first = st.CHECKPOINT_INTERVAL * random.uniform(0.5, 1.0)
        s.later(first, lambda: self._checkpoint_tick(gen))

    # -- checkpoints ----------------------------------------------------------------------
    def _on_checkpoint(self, gen: int, method: Any, props: Any, body: bytes) -> None:
        cons = self.s.cons
        if cons is not None and cons.is_open:
            cons.basic_ack(method.delivery_tag)
        offset = (props.headers or {}).get(OFFSET_HEADER)
        if not isinstance(offset, int) or offset < 0:
            return
        self.checkpointed = max(self.checkpointed, offset)
        if not self.s.alive(gen):
            return
        late = not self._loading and not self.synced and self._start_offset is None
        if late and offset > self.next_offset:
            log.info(
                "partition %s: checkpoint at control offset %d read after %.0fs, while the "
                "replay from the horizon is at %d: continuing from the checkpoint",
                self.s.partition,
                offset,
                CHECKPOINT_READ_TIMEOUT,
                self.next_offset,
            )
        elif not self._loading:
            return  # live: only its offset matters (to know when to write the next one)
        try:
            events = st.decode_checkpoint(body)
        except st.InvalidEvent as exc:
            log.warning("skipping invalid checkpoint in %s: %s", self.checkpoint_name, exc)
            return
        now = self.s.clock()
        for ev in events:
            if self.control.apply(ev, now) and ev.type == "cancel" and ev.job_id:
                self.on_cancel(ev.job_id)
        log.info(
            "partition %s: checkpoint read (%d entries, control offset %d)",
            self.s.partition,
            len(events),
            offset,
        )
        self._start_offset = offset
        if late:
            self._attempt = max(0, self._attempt - 1)  # not a failed sync: start over
            self._sync_round(gen)
        else:
            self._loaded(gen)

    def _loaded(self, gen: int) -> None:
        if self._loading and self.s.alive(gen):
            self._loading = False
            self._sync_round(gen)

    def _checkpoint_tick(self, gen: int) -> None:
        """Write a checkpoint when enough events followed the newest one known."""
        s = self.s
        if not s.alive(gen):
            return
        behind = self.next_offset - max(self.checkpointed, 0)
        none_yet = self.checkpointed < 0 and self.next_offset > 0  # spares starts the wait
        if self.synced and (behind >= st.CHECKPOINT_MIN_EVENTS or none_yet):
            offset = self.next_offset
            props = pika.BasicProperties(
                delivery_mode=2,
                content_type="application/json",
                content_encoding="deflate",
                headers={OFFSET_HEADER: offset},
            )

            def written(ok: bool) -> None:
                if ok:
                    self.checkpointed = max(self.checkpointed, offset)

            s.publish(self.checkpoint_name, st.encode_checkpoint(self.control), props, written)
        again = st.CHECKPOINT_INTERVAL * random.uniform(0.8, 1.2)
        s.later(again, lambda: self._checkpoint_tick(gen))

    # -- catching up --------------------------------------------------------------------
    def _sync_round(self, gen: int) -> None:
        """Publish a fresh nonce; once confirmed, (re)subscribe from the horizon."""
        s = self.s
        if not s.alive(gen) or self.synced or s.pub is None or s.cons is None:
            return
        if self._attempt >= SYNC_ATTEMPTS:
            log.error(
                "control stream %s: sync nonce not back after %d attempts; "
                "dropping the connection to start over",
                self.name,
                self._attempt,
            )
            s.drop(gen)
            return
        self._attempt += 1
        if self._tag is not None:
            if s.cons.is_open:
                cancel_stream_consumer(s.cons, self._tag)
            self._tag = None
        nonce = self._nonce = uuid.uuid4().hex
        run(self._subscribe_after_nonce(gen, nonce, self._attempt))
        s.later(SYNC_TIMEOUT, lambda: self._sync_timeout(gen, nonce))

    def _subscribe_after_nonce(self, gen: int, nonce: str, attempt: int) -> Flow[None]:
        s = self.s
        assert s.pub is not None
        s.stage = f"the confirm of sync nonce {attempt}/{SYNC_ATTEMPTS} on {self.name}"
        body = b'{"type":"sync","nonce":"%s"}' % nonce.encode()
        confirmed = yield s.pub.published(self.name, body, PERSISTENT)
        if not s.alive(gen) or self._nonce != nonce:
            return
        if not confirmed:
            log.warning("sync nonce on %s refused (nack); trying again", self.name)
            s.later(RETRY_DELAY, lambda: self._sync_round(gen))
            return
        start: Any
        if self._start_offset is not None:
            start = self._start_offset
        else:
            since = self.s.clock() - self.control.horizon
            start = datetime.datetime.fromtimestamp(int(since), tz=datetime.UTC)
        self.progress_at = time.monotonic()
        s.stage = (
            f"sync nonce {attempt}/{SYNC_ATTEMPTS} to come back through {self.name} "
            "(reading the control stream)"
        )
        self._tag = s.cons.basic_consume(
            self.name, self._on_event, arguments={"x-stream-offset": start}
        )

    def _sync_timeout(self, gen: int, nonce: str) -> None:
        if self.s.alive(gen) and self._nonce == nonce and not self.synced:
            quiet = time.monotonic() - self.progress_at
            if quiet < SYNC_TIMEOUT:  # still reading history: wait for it
                self.s.later(SYNC_TIMEOUT - quiet, lambda: self._sync_timeout(gen, nonce))
                return
            log.warning(
                "partition %s: sync nonce %d/%d not back after %.0fs (waiting for %s); "
                "subscribing to the control stream again",
                self.s.partition,
                self._attempt,
                SYNC_ATTEMPTS,
                SYNC_TIMEOUT,
                self.s.stage,
            )
            self._sync_round(gen)

    # -- following ------------------------------------------------------------------------
    def _on_event(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        ch.basic_ack(method.delivery_tag)
        offset = (props.headers or {}).get("x-stream-offset")
        if isinstance(offset, int):
            self.next_offset = max(self.next_offset, offset + 1)
        if not self.synced:
            self.progress_at = time.monotonic()
        if body.startswith(_SYNC_PREFIX):
            if self._nonce is not None and self._nonce.encode() in body:
                self._nonce, self.synced = None, True
                self.s.stage = ""
                self.on_synced()
            return
        try:
            ev = st.decode(body)
        except st.InvalidEvent:
            log.warning("skipping invalid control event %r", body[:200])
            return
        if ev.type in st.PAUSE_TYPES:
            if ev.queue is not None:
                self.on_pause_notice(ev.queue)
            return
        if self.control.apply(ev, self.s.clock()) and ev.type == "cancel" and ev.job_id:
            self.on_cancel(ev.job_id)

    def _expire_tick(self, gen: int) -> None:
        if self.s.alive(gen):
            self.control.expire(self.s.clock())
            self.s.later(EXPIRE_INTERVAL, lambda: self._expire_tick(gen))
