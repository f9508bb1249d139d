"""Pause state: one stream ``<p>.pause.<queue>`` per queue, whose last event is the state.

A worker must know which of its queues are paused before it consumes any of them. The
stream is created by the first pause/resume of a queue; a worker subscribes from its last
chunk and follows it live. A queue whose stream does not exist was never paused; the
``pause``/``resume`` notice in the control stream makes workers subscribe when it appears.
A subscription that yields no event within ``PAUSE_RESOLVE_TIMEOUT`` is made again
(``PAUSE_ATTEMPTS`` in all) before the queue is taken as not paused (a stream declared by a
client that died before publishing); a passive declare refused other than 404 is retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from roger.broker.channels import cancel_stream_consumer
from roger.broker.flow import Flow, Refused, run
from roger.broker.state.session import Session
from roger.core import naming
from roger.core import state as st

log = logging.getLogger("roger.state")

PAUSE_RESOLVE_TIMEOUT = 5.0  # a pause subscription silent this long is made again
PAUSE_ATTEMPTS = 3  # subscriptions before a silent pause stream counts as "not paused"
RETRY_DELAY = 1.0  # before retrying a refused passive declare


class PauseFollower:
    def __init__(
        self,
        session: Session,
        queues: list[str],
        pause: st.PauseState,
        *,
        on_pause: Callable[[str, bool], None],
        on_resolved: Callable[[], None],
    ) -> None:
        self.s = session
        self.queues = queues
        self.pause = pause
        self.on_pause, self.on_resolved = on_pause, on_resolved
        self._tags: dict[str, str] = {}  # queue -> consumer tag of its pause stream
        self._seen: set[str] = set()  # queues whose subscription delivered an event
        self.resolved: set[str] = set()  # queues whose state is known

    def reset(self) -> None:
        self._tags.clear()
        self._seen.clear()
        self.resolved.clear()

    def unresolved(self) -> list[str]:
        return [q for q in self.queues if q not in self.resolved]

    def start(self, gen: int) -> None:
        for q in self.queues:
            run(self._find_stream(gen, q))

    def notice(self, queue: str, synced: bool) -> None:
        """A pause/resume notice in the control stream."""
        if queue not in self.queues:
            return
        gen = self.s.generation
        if queue not in self._tags:
            run(self._find_stream(gen, queue))
        elif synced and queue not in self._seen:
            # a live notice, yet our subscription never delivered: it may have attached
            # past the event (stream created at that moment); again
            self._subscribe(gen, queue, 1)

    def _find_stream(self, gen: int, queue: str) -> Flow[None]:
        """Subscribe if the queue's pause stream exists; resolved as "never paused" if not."""
        name = naming.pause_stream_name(self.s.partition, queue)
        while self.s.alive(gen) and queue not in self._tags:
            try:
                ch = yield self.s.one_shots.opened()
                try:
                    yield ch.declare(name, passive=True)
                finally:
                    ch.finish()
            except Refused as refused:
                if refused.code == 404:  # never paused
                    self._resolve(queue)
                    return
                if not refused.code:
                    return  # the connection is gone
                log.warning(
                    "checking pause stream %s refused (%s); retrying in %.0fs",
                    name,
                    refused.code,
                    RETRY_DELAY,
                )
                yield self.s.slept(RETRY_DELAY)
                continue
            if self.s.alive(gen) and queue not in self._tags:
                self._subscribe(gen, queue, 1)
            return

    def _subscribe(self, gen: int, queue: str, attempt: int) -> None:
        """Consume the pause stream from its last chunk (again, if subscribed already)."""
        cons = self.s.cons
        if not self.s.alive(gen) or cons is None or not cons.is_open:
            return
        old = self._tags.pop(queue, None)
        if old is not None:  # a plain cancel could reject a delivery: the stream would
            cancel_stream_consumer(cons, old)  # close the worker's whole connection
        tag = cons.basic_consume(
            naming.pause_stream_name(self.s.partition, queue),
            lambda c, m, _p, b: self._on_event(queue, c, m, b),
            arguments={"x-stream-offset": "last"},
        )
        self._tags[queue] = tag
        self.s.later(PAUSE_RESOLVE_TIMEOUT, lambda: self._silent(gen, queue, tag, attempt))

    def _silent(self, gen: int, queue: str, tag: str, attempt: int) -> None:
        """No event from the pause subscription ``tag`` yet."""
        if not self.s.alive(gen) or self._tags.get(queue) != tag or queue in self._seen:
            return
        name = naming.pause_stream_name(self.s.partition, queue)
        if attempt < PAUSE_ATTEMPTS:
            log.info("no event yet from pause stream %s; subscribing again", name)
            self._subscribe(gen, queue, attempt + 1)
        elif queue not in self.resolved:
            # the stream exists without events (its creator died before publishing);
            # the subscription stays: an event arriving later still applies
            log.warning(
                "pause stream %s has no event after %d subscriptions: queue %s taken as not paused",
                name,
                attempt,
                queue,
            )
            self._resolve(queue)

    def _resolve(self, queue: str) -> None:
        if queue not in self.resolved:
            self.resolved.add(queue)
            self.on_resolved()

    def _on_event(self, queue: str, ch: Any, method: Any, body: bytes) -> None:
        ch.basic_ack(method.delivery_tag)
        self._seen.add(queue)
        try:
            ev = st.decode(body)
        except st.InvalidEvent:
            log.warning("skipping invalid pause event %r", body[:200])
            return
        if ev.queue == queue and self.pause.apply(ev):
            self.on_pause(queue, self.pause.is_paused(queue))
        self._resolve(queue)
