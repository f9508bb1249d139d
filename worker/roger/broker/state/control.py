"""The control stream ``<p>.control``: catching up at start-up, then following it live.

A worker must know every cancel before it runs a job, so it is not ready until it has read
the stream up to now. It consumes from ``now - HORIZON`` and publishes a ``sync`` nonce of
its own: when the nonce comes back, every older event has been folded.

The nonce is published and *confirmed before* the consumer attaches: RabbitMQ (3.10)
resolves a timestamp offset on a stream whose log is still empty (several workers creating
it at once) to "the next offset", which may already lie past events being written, the
nonce included; a confirmed nonce makes the log non-empty first. A nonce not back within
``SYNC_TIMEOUT`` subscribes again (folding is idempotent) with a new nonce; after
``SYNC_ATTEMPTS`` the connection is dropped (the runtime reconnects).
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Callable
from typing import Any

from roger.broker.flow import Flow, run
from roger.broker.state.session import PERSISTENT, Session
from roger.core import naming
from roger.core import state as st

log = logging.getLogger("roger.state")

SYNC_TIMEOUT = 10.0  # a sync nonce not back (or not confirmed) by then: subscribe again
SYNC_ATTEMPTS = 3  # nonces before the connection is dropped
RETRY_DELAY = 1.0  # before retrying a nacked nonce
EXPIRE_INTERVAL = 600.0  # folded entries older than the horizon are dropped this often
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

    def reset(self) -> None:
        self.synced, self._nonce, self._attempt, self._tag = False, None, 0, None

    def start(self, gen: int) -> None:
        self._sync_round(gen)
        self.s.later(EXPIRE_INTERVAL, lambda: self._expire_tick(gen))

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
                s.cons.basic_cancel(self._tag)
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
        since = self.s.clock() - self.control.horizon
        start = datetime.datetime.fromtimestamp(int(since), tz=datetime.UTC)
        s.stage = (
            f"sync nonce {attempt}/{SYNC_ATTEMPTS} to come back through {self.name} "
            "(reading the control stream)"
        )
        self._tag = s.cons.basic_consume(
            self.name, self._on_event, arguments={"x-stream-offset": start}
        )

    def _sync_timeout(self, gen: int, nonce: str) -> None:
        if self.s.alive(gen) and self._nonce == nonce and not self.synced:
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
    def _on_event(self, ch: Any, method: Any, _props: Any, body: bytes) -> None:
        ch.basic_ack(method.delivery_tag)
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
