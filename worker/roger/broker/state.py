"""Partition-wide state seen from a worker: callback-style pika on the worker's connection.

One ``PartitionState`` per worker process. The runtime calls ``attach(connection)`` each
time its ``SelectConnection`` is ready and ``detach()`` when it is lost; everything here
runs on that connection's ioloop thread and never blocks.

- Control stream ``<p>.control``: consumed from ``now - HORIZON`` and followed live; a
  ``sync`` nonce this worker publishes on attach tells it when it has caught up (only then
  is ``ready`` true: a worker must know every cancel before it runs jobs). The nonce is
  published and *confirmed before* the consumer attaches: RabbitMQ (3.10) resolves a
  timestamp offset on a stream whose log is still empty (several workers creating it at
  once) to "the next offset", which may already lie past events being written, the nonce
  included; a confirmed nonce makes the log non-empty first. A nonce not back within
  ``SYNC_TIMEOUT`` subscribes again (folding is idempotent) with a new nonce; after
  ``SYNC_ATTEMPTS`` the connection is dropped (the runtime reconnects).
- Pause streams ``<p>.pause.<queue>``: created by the first pause/resume of a queue; a
  worker subscribes from the last chunk (the last event is the state) and follows live. A
  queue whose stream does not exist was never paused; the ``pause``/``resume`` notice in
  the control stream makes workers subscribe when it appears. A subscription that yields
  no event within ``PAUSE_RESOLVE_TIMEOUT`` is made again (``PAUSE_ATTEMPTS`` in all)
  before the queue is taken as not paused (a stream declared by a client that died before
  publishing); a passive declare refused other than 404 is retried.
- Startup never waits silently: ``waiting_for()`` says what is missing (the runtime logs
  it) and after ``STARTUP_DEADLINE`` without being ready the connection is dropped.
- Execution locks: exclusive queues on this connection, so they die with the deliveries
  they protect (a lost connection requeues the job and frees its key at once).
- Queue keys and waiting rooms: see ``release_queue_key``, ``park``, ``release_next``.

Operations that may be refused by the broker (exclusive declare, ``basic.get`` on a missing
queue, ``queue.delete if_empty``) run on a channel of their own, because a refusal closes
the channel; the worker's other channels are never touched.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import pika

from roger.core import naming
from roger.core import state as st

log = logging.getLogger("roger.state")

Done = Callable[[bool], None]
SWEEP_INTERVAL = 10.0
EXPIRE_INTERVAL = 600.0
PAUSE_RESOLVE_TIMEOUT = 5.0  # a pause subscription silent this long is made again
PAUSE_ATTEMPTS = 3  # subscriptions before a silent pause stream counts as "not paused"
SYNC_TIMEOUT = 10.0  # a sync nonce not back (or not confirmed) by then: subscribe again
SYNC_ATTEMPTS = 3  # nonces before the connection is dropped
RETRY_DELAY = 1.0  # before retrying a refused passive declare or a nacked nonce
STARTUP_DEADLINE = 60.0  # not ready this long after attach: drop the connection


def _noop(_ok: bool) -> None:
    pass


def worker_ident() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Confirms:
    """A confirm-mode channel: publish with a callback on ack (True) or nack (False)."""

    def __init__(self, channel: Any) -> None:
        self.ch = channel
        self.seq = 0
        self.waiting: dict[int, Done] = {}

    def publish(self, routing_key: str, body: bytes, props: Any, done: Done) -> bool:
        if not self.ch.is_open:
            return False
        self.ch.basic_publish("", routing_key, body, props)
        self.seq += 1
        self.waiting[self.seq] = done
        return True

    def on_confirm(self, frame: Any) -> None:
        m = frame.method
        ok = m.NAME == "Basic.Ack"
        tags = [t for t in self.waiting if t <= m.delivery_tag] if m.multiple else [m.delivery_tag]
        for t in tags:
            cb = self.waiting.pop(t, None)
            if cb is not None:
                cb(ok)

    def fail_all(self) -> None:
        waiting, self.waiting = self.waiting, {}
        for cb in waiting.values():
            cb(False)


PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")


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
        self.on_ready, self.on_cancel, self.on_pause = on_ready, on_cancel, on_pause
        self.ident = ident or worker_ident()
        self.clock = clock
        self.control = st.ControlState()
        self.pause = st.PauseState()
        self.conn: Any = None
        self.generation = 0
        self.ready = False
        self.held: dict[str, str] = {}  # execution key -> job id, locks this connection holds
        self._cons: Any = None  # channel consuming the streams
        self._pub: _Confirms | None = None
        self._sync: str | None = None  # the nonce in flight
        self._synced = False  # our nonce came back: every older control event is folded
        self._sync_attempt = 0
        self._control_tag: str | None = None
        self._pause_tags: dict[str, str] = {}  # queue -> consumer tag of its pause stream
        self._pause_seen: set[str] = set()  # queues whose pause subscription delivered
        self._pause_resolved: set[str] = set()
        self._last_sweep: dict[str, float] = {}
        self._stage = "the AMQP connection"
        self._attached_at = 0.0

    # -- lifecycle --------------------------------------------------------------------
    def attach(self, conn: Any) -> None:
        """Start on a freshly opened connection; ``on_ready`` fires once caught up."""
        self.detach()
        self.conn = conn
        self.generation += 1
        gen = self.generation
        self._attached_at = time.monotonic()
        self._stage = "the state publish channel"
        conn.channel(on_open_callback=lambda ch: self._pub_opened(gen, ch))
        self._later(STARTUP_DEADLINE, lambda: self._deadline(gen))

    def detach(self) -> None:
        """The connection is gone: locks went with it; keep folded state (it stays valid)."""
        self.ready = False
        self.held.clear()
        self._pause_tags.clear()
        self._pause_seen.clear()
        self._pause_resolved.clear()
        if self._pub is not None:
            self._pub.fail_all()
        self._pub, self._cons, self._sync = None, None, None
        self._sync_attempt, self._control_tag, self._synced = 0, None, False
        self._stage = "the AMQP connection"
        self.conn = None

    def waiting_for(self) -> str:
        """What startup waits for now (empty once ready), for people reading the log."""
        if self.ready:
            return ""
        parts = [self._stage] if self._stage else []
        pending = [q for q in self.queues if q not in self._pause_resolved]
        if self._cons is not None and pending:
            parts.append("the pause state of queue(s) " + ", ".join(pending))
        return "; ".join(parts) or "nothing (about to be ready)"

    def _deadline(self, gen: int) -> None:
        if self._alive(gen) and not self.ready:
            log.error(
                "partition state of %s not ready %.0fs after connecting (waiting for %s); "
                "dropping the connection to start over",
                self.partition,
                time.monotonic() - self._attached_at,
                self.waiting_for(),
            )
            self.conn.close()

    def _alive(self, gen: int) -> bool:
        return gen == self.generation and self.conn is not None and self.conn.is_open

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        """Timers are never cancelled: each checks that its generation is still current."""
        if self.conn is not None:
            self.conn.ioloop.call_later(delay, fn)

    def _pub_opened(self, gen: int, ch: Any) -> None:
        if not self._alive(gen):
            return
        pub = _Confirms(ch)
        self._pub = pub
        self._stage = "the partition streams to be declared"
        ch.add_on_close_callback(lambda _c, reason: self._lost_channel(gen, "publish", reason))
        ch.confirm_delivery(
            ack_nack_callback=pub.on_confirm,
            callback=lambda _f: self._declare(gen, ch),
        )

    def _lost_channel(self, gen: int, what: str, reason: Any) -> None:
        if self._alive(gen):
            log.warning("state %s channel closed (%s); dropping the connection", what, reason)
            self.conn.close()

    def _declare(self, gen: int, ch: Any) -> None:
        decls = [
            (naming.control_stream_name(self.partition), st.control_stream_arguments()),
            (naming.workers_stream_name(self.partition), st.workers_stream_arguments()),
        ]
        left = [len(decls)]

        def one(_f: Any) -> None:
            left[0] -= 1
            if left[0] == 0 and self._alive(gen):
                self._stage = "the stream consumer channel"
                self.conn.channel(on_open_callback=lambda c: self._cons_opened(gen, c))

        for name, args in decls:
            ch.queue_declare(name, durable=True, arguments=args, callback=one)

    def _cons_opened(self, gen: int, ch: Any) -> None:
        if not self._alive(gen):
            return
        self._cons = ch
        ch.add_on_close_callback(lambda _c, reason: self._lost_channel(gen, "stream", reason))
        ch.basic_qos(prefetch_count=500, callback=lambda _f: self._start_control(gen, ch))

    def _start_control(self, gen: int, _ch: Any) -> None:
        if not self._alive(gen):
            return
        for q in self.queues:
            self._check_pause_stream(gen, q)
        self._sync_round(gen)
        self._later(SWEEP_INTERVAL, lambda: self._sweep_tick(gen))
        self._later(EXPIRE_INTERVAL, lambda: self._expire_tick(gen))

    def _sync_round(self, gen: int) -> None:
        """Publish a fresh nonce; once confirmed, (re)subscribe to the control stream from
        the horizon and wait for the nonce to come back (then every older event is read).

        Confirmed first: the log is then non-empty when the consumer attaches, so its
        timestamp offset resolves to a chunk (on an empty log RabbitMQ attaches at "next",
        which can skip events being written at that moment, this nonce among them).
        """
        if not self._alive(gen) or self.ready or self._pub is None or self._cons is None:
            return
        if self._sync_attempt >= SYNC_ATTEMPTS:
            log.error(
                "control stream %s: sync nonce not back after %d attempts; "
                "dropping the connection to start over",
                naming.control_stream_name(self.partition),
                self._sync_attempt,
            )
            self.conn.close()
            return
        self._sync_attempt += 1
        attempt = self._sync_attempt
        cons, name = self._cons, naming.control_stream_name(self.partition)
        if self._control_tag is not None:
            if cons.is_open:
                cons.basic_cancel(self._control_tag)
            self._control_tag = None
        nonce = uuid.uuid4().hex
        self._sync = nonce
        self._stage = f"the confirm of sync nonce {attempt}/{SYNC_ATTEMPTS} on {name}"

        def confirmed(ok: bool) -> None:
            if not self._alive(gen) or self._sync != nonce:
                return
            if not ok:
                log.warning("sync nonce on %s refused (nack); trying again", name)
                self._later(RETRY_DELAY, lambda: self._sync_round(gen))
                return
            since = self.clock() - self.control.horizon
            start = datetime.datetime.fromtimestamp(int(since), tz=datetime.UTC)
            self._stage = (
                f"sync nonce {attempt}/{SYNC_ATTEMPTS} to come back through {name} "
                "(reading the control stream)"
            )
            self._control_tag = cons.basic_consume(
                name, self._on_control, arguments={"x-stream-offset": start}
            )

        body = b'{"type":"sync","nonce":"%s"}' % nonce.encode()
        if not self._pub.publish(name, body, PERSISTENT, confirmed):
            return  # the publish channel is closed: the connection goes with it
        self._later(SYNC_TIMEOUT, lambda: self._sync_timeout(gen, nonce))

    def _sync_timeout(self, gen: int, nonce: str) -> None:
        if self._alive(gen) and self._sync == nonce and not self.ready:
            log.warning(
                "partition %s: sync nonce %d/%d not back after %.0fs (waiting for %s); "
                "subscribing to the control stream again",
                self.partition,
                self._sync_attempt,
                SYNC_ATTEMPTS,
                SYNC_TIMEOUT,
                self._stage,
            )
            self._sync_round(gen)

    # -- control stream -----------------------------------------------------------------
    def _on_control(self, ch: Any, method: Any, _props: Any, body: bytes) -> None:
        ch.basic_ack(method.delivery_tag)
        if body.startswith(b'{"type":"sync"'):
            if self._sync is not None and self._sync.encode() in body:
                self._sync, self._synced = None, True
                self._stage = ""
                self._maybe_ready()
            return
        try:
            ev = st.decode(body)
        except st.InvalidEvent:
            if not body.startswith(b'{"type":"sync"'):
                log.warning("skipping invalid control event %r", body[:200])
            return
        if ev.type in st.PAUSE_TYPES:
            if ev.queue in self.queues and ev.queue is not None:
                if ev.queue not in self._pause_tags:
                    self._check_pause_stream(self.generation, ev.queue)
                elif self._synced and ev.queue not in self._pause_seen:
                    # a live notice, yet our subscription never delivered: it may have
                    # attached past the event (stream created at that moment); again
                    self._subscribe_pause(self.generation, ev.queue, 1)
            return
        if self.control.apply(ev, self.clock()) and ev.type == "cancel" and ev.job_id:
            self.on_cancel(ev.job_id)

    def _maybe_ready(self) -> None:
        if (
            not self.ready
            and self._synced
            and self._cons is not None
            and all(q in self._pause_resolved for q in self.queues)
        ):
            self.ready = True
            self.on_ready()

    def is_cancelled(self, job_id: str) -> bool:
        return self.control.is_cancelled(job_id)

    def cancel_handled(self, job_id: str) -> bool:
        return self.control.cancel_handled(job_id)

    def publish_event(self, ev: st.ControlEvent, done: Done = _noop) -> None:
        if self._pub is None or not self._pub.publish(
            naming.control_stream_name(self.partition), st.encode(ev), PERSISTENT, done
        ):
            done(False)

    def cancel_done(self, job_id: str, done: Done = _noop) -> None:
        """Record that ``on_cancel`` ran, so a redelivery of the job does not run it again."""
        ev = st.cancel_done(job_id, self.clock(), self.ident)
        self.control.apply(ev, self.clock())
        self.publish_event(ev, done)

    def _expire_tick(self, gen: int) -> None:
        if self._alive(gen):
            self.control.expire(self.clock())
            self._later(EXPIRE_INTERVAL, lambda: self._expire_tick(gen))

    # -- pause --------------------------------------------------------------------------
    def is_paused(self, queue: str) -> bool:
        return self.pause.is_paused(queue)

    def _check_pause_stream(self, gen: int, queue: str) -> None:
        name = naming.pause_stream_name(self.partition, queue)

        def exists(_f: Any, ch: Any) -> None:
            self._quiet_close(ch)
            if self._alive(gen) and queue not in self._pause_tags:
                self._subscribe_pause(gen, queue, 1)

        def refused(code: int) -> None:
            if code == 404:  # never paused
                self._resolve(queue)
            elif code and self._alive(gen) and queue not in self._pause_tags:
                log.warning(
                    "checking pause stream %s refused (%s); retrying in %.0fs",
                    name,
                    code,
                    RETRY_DELAY,
                )
                self._later(RETRY_DELAY, lambda: self._recheck_pause(gen, queue))

        self._one_shot(
            gen,
            lambda ch: ch.queue_declare(name, passive=True, callback=lambda f: exists(f, ch)),
            refused,
        )

    def _recheck_pause(self, gen: int, queue: str) -> None:
        if self._alive(gen) and queue not in self._pause_tags:
            self._check_pause_stream(gen, queue)

    def _subscribe_pause(self, gen: int, queue: str, attempt: int) -> None:
        """Consume the pause stream from its last chunk (again, if subscribed already)."""
        cons = self._cons
        if not self._alive(gen) or cons is None or not cons.is_open:
            return
        old = self._pause_tags.pop(queue, None)
        if old is not None:
            cons.basic_cancel(old)
        tag = cons.basic_consume(
            naming.pause_stream_name(self.partition, queue),
            lambda c, m, p, b: self._on_pause(queue, c, m, b),
            arguments={"x-stream-offset": "last"},
        )
        self._pause_tags[queue] = tag
        self._later(PAUSE_RESOLVE_TIMEOUT, lambda: self._pause_silent(gen, queue, tag, attempt))

    def _pause_silent(self, gen: int, queue: str, tag: str, attempt: int) -> None:
        """No event from the pause subscription ``tag`` yet."""
        if not self._alive(gen) or self._pause_tags.get(queue) != tag or queue in self._pause_seen:
            return
        name = naming.pause_stream_name(self.partition, queue)
        if attempt < PAUSE_ATTEMPTS:
            log.info("no event yet from pause stream %s; subscribing again", name)
            self._subscribe_pause(gen, queue, attempt + 1)
        elif queue not in self._pause_resolved:
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
        if queue not in self._pause_resolved:
            self._pause_resolved.add(queue)
            self._maybe_ready()

    def _on_pause(self, queue: str, ch: Any, method: Any, body: bytes) -> None:
        ch.basic_ack(method.delivery_tag)
        self._pause_seen.add(queue)
        try:
            ev = st.decode(body)
        except st.InvalidEvent:
            log.warning("skipping invalid pause event %r", body[:200])
            return
        if ev.queue == queue and self.pause.apply(ev):
            self.on_pause(queue, self.pause.is_paused(queue))
        self._resolve(queue)

    # -- one-shot channels ------------------------------------------------------------------
    def _one_shot(
        self, gen: int, run: Callable[[Any], None], refused: Callable[[int], None]
    ) -> None:
        """Open a channel for one operation that the broker may refuse (which closes it).

        ``run(ch)`` ends with ``_quiet_close(ch)``; if the channel closes before that,
        ``refused(reply_code)`` is called (0 when the connection itself is gone).
        """
        if not self._alive(gen):
            refused(0)
            return
        finished = [False]

        def closed(_ch: Any, reason: Any) -> None:
            if not finished[0]:
                finished[0] = True
                code = getattr(reason, "reply_code", 0)
                refused(code if self._alive(gen) else 0)

        def opened(ch: Any) -> None:
            ch._roger_finished = finished
            ch.add_on_close_callback(closed)
            run(ch)

        self.conn.channel(on_open_callback=opened)

    @staticmethod
    def _quiet_close(ch: Any, then: Callable[[], None] | None = None) -> None:
        """Close a one-shot channel as done; ``then`` runs at the broker's Close-Ok, so
        every frame sent on the channel before (an ack, a requeue) has taken effect."""
        finished = getattr(ch, "_roger_finished", None)
        if finished is not None:
            finished[0] = True
        if then is not None:
            if ch.is_closed:
                then()
            else:  # open or closing: the close callback comes
                ch.add_on_close_callback(lambda _ch, _reason: then())
        if ch.is_open:
            ch.close()

    @staticmethod
    def _get(
        ch: Any, queue: str, on_msg: Callable[..., None], on_empty: Callable[[], None]
    ) -> None:
        ch.add_callback(lambda _f: on_empty(), [pika.spec.Basic.GetEmpty], one_shot=True)
        ch.basic_get(queue, callback=on_msg, auto_ack=False)

    # -- execution keys -------------------------------------------------------------------
    def try_lock(self, key: str, job_id: str, done: Done) -> None:
        """Take the execution lock of ``key`` for ``job_id``; ``done(False)`` if it is busy."""
        if key in self.held:
            done(self.held[key] == job_id)
            return
        gen = self.generation
        name = naming.execution_lock_queue_name(self.partition, key)

        def run(ch: Any) -> None:
            def ok(_f: Any) -> None:
                self._quiet_close(ch)
                log.debug("execution key %r taken for %s", key, job_id)
                if self._alive(gen) and key not in self.held:
                    self.held[key] = job_id
                    done(True)
                else:
                    done(self._alive(gen) and self.held.get(key) == job_id)

            ch.queue_declare(name, exclusive=True, auto_delete=False, callback=ok)

        self._one_shot(gen, run, lambda _code: done(False))

    def unlock(self, key: str, done: Done = _noop) -> None:
        if self.held.pop(key, None) is None:
            done(True)
            return
        name = naming.execution_lock_queue_name(self.partition, key)

        def run(ch: Any) -> None:
            def ok(_f: Any) -> None:
                self._quiet_close(ch)
                done(True)

            ch.queue_delete(name, callback=ok)

        # the lock queue dies with the connection anyway
        self._one_shot(self.generation, run, lambda code: done(code in (0, 404)))

    def park(self, key: str, body: bytes, props: Any, done: Done) -> None:
        """Put a job whose execution key is busy into its waiting room (confirmed), and
        announce the key in the control stream so that sweepers know about it. The caller
        acks the delivery after ``done(True)``, then should call ``recheck(key)``."""
        if self._pub is None:
            done(False)
            return
        pub = self._pub
        name = naming.execution_waiting_queue_name(self.partition, key)

        def declared(_f: Any) -> None:
            def confirmed(ok: bool) -> None:
                if ok:
                    ev = st.wait(key, self.clock())
                    self.control.apply(ev, self.clock())
                    self.publish_event(ev)
                done(ok)

            if not pub.publish(name, body, props, confirmed):
                done(False)

        pub.ch.queue_declare(
            name, durable=True, arguments=st.waiting_queue_arguments(), callback=declared
        )

    def recheck(self, key: str, done: Done = _noop) -> None:
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

    def release_next(self, key: str, done: Done = _noop) -> None:
        """Free the key, then move one job from its waiting room back to its queue.

        The key is freed first so that the job moved back can take it when it is
        delivered (were it still held, that job would be parked again, and so on).
        """
        self.unlock(key, lambda _ok: self._move_one(key, done))

    def _move_one(self, key: str, done: Done = _noop) -> None:
        gen = self.generation
        name = naming.execution_waiting_queue_name(self.partition, key)
        pub = self._pub

        def finish(code: int = 0) -> None:
            if code:
                log.debug("moving a waiting job of %r refused (%s)", key, code)
            done(code in (0, 404))

        def run(ch: Any) -> None:
            def got(_ch: Any, method: Any, props: Any, body: bytes) -> None:
                target = _target_queue(self.partition, body)
                if pub is None or target is None:
                    if target is None:
                        log.error("waiting job without a queue in %s; left there", name)
                    self._quiet_close(ch)
                    finish()
                    return
                log.debug("moving a waiting job of %r back to %s", key, target)

                def moved(ok: bool) -> None:
                    if ok and ch.is_open:
                        ch.basic_ack(method.delivery_tag)
                    self._quiet_close(ch)  # unacked (not ok) goes back to the waiting room
                    self._last_sweep[key] = self.clock()
                    finish()

                if not pub.publish(target, body, props, moved):
                    self._quiet_close(ch)
                    finish()

            def empty() -> None:
                log.debug("no job waits for %r", key)
                self._quiet_close(ch)
                finish()

            ch.queue_declare(
                name,
                durable=True,
                arguments=st.waiting_queue_arguments(),
                callback=lambda _f: self._get(ch, name, got, empty),
            )

        self._one_shot(gen, run, finish)

    def _sweep_tick(self, gen: int) -> None:
        if not self._alive(gen):
            return
        now = self.clock()
        for key in list(self.control.waiting):
            if key in self.held or now - self._last_sweep.get(key, 0) < SWEEP_INTERVAL * 2:
                continue
            self._last_sweep[key] = now
            self._sweep_key(gen, key)
        self._later(SWEEP_INTERVAL, lambda: self._sweep_tick(gen))

    def _sweep_key(self, gen: int, key: str) -> None:
        """Free key with jobs waiting (a holder died, or a race): move one of them back."""
        log.debug("sweeping waiting room of %r", key)
        name = naming.execution_waiting_queue_name(self.partition, key)

        def counted(ch: Any, frame: Any) -> None:
            self._quiet_close(ch)
            if frame.method.message_count == 0:
                self.control.waiting.pop(key, None)  # empty: stop sweeping it
                return
            self.recheck(key)

        self._one_shot(
            gen,
            lambda ch: ch.queue_declare(name, passive=True, callback=lambda f: counted(ch, f)),
            lambda code: self._forget_waiting(key, code),
        )

    def _forget_waiting(self, key: str, code: int) -> None:
        if code == 404:  # the waiting room is gone (expired or never made)
            self.control.waiting.pop(key, None)

    # -- queue keys -------------------------------------------------------------------------
    def release_queue_key(self, key: str, job_id: str, done: Done = _noop) -> None:
        """Free ``key`` if its token belongs to ``job_id`` (a redelivered job that already
        left must not free the key of a newer job), then delete the empty key queue."""
        name = naming.queue_key_queue_name(self.partition, key)

        def run(ch: Any) -> None:
            def got(_ch: Any, method: Any, props: Any, _body: bytes) -> None:
                if props.message_id == job_id:
                    ch.basic_ack(method.delivery_tag)
                    ch.queue_delete(name, if_empty=True, callback=deleted)
                else:  # not ours: put the token back, and answer once the broker has it
                    ch.basic_nack(method.delivery_tag, requeue=True)
                    self._quiet_close(ch, then=lambda: done(False))

            def deleted(_f: Any) -> None:
                self._quiet_close(ch)
                done(True)

            def empty() -> None:
                self._quiet_close(ch)
                done(True)

            self._get(ch, name, got, empty)

        # a refusal here is 404 (no key queue: nothing held) or 406 (a new token arrived
        # between our ack and the delete: the key is someone else's now); both are fine
        self._one_shot(self.generation, run, lambda code: done(code in (404, 406)))

    # -- worker status ----------------------------------------------------------------------
    def publish_status(self, status: st.WorkerStatus, done: Done = _noop) -> None:
        if self._pub is None or not self._pub.publish(
            naming.workers_stream_name(self.partition),
            st.encode_status(status),
            PERSISTENT,
            done,
        ):
            done(False)


def _target_queue(partition: str, body: bytes) -> str | None:
    """The partition queue a waiting job goes back to (from its body's ``queue``)."""
    try:
        queue = json.loads(body).get("queue")
    except (ValueError, AttributeError):
        return None
    if not isinstance(queue, str) or not queue:
        return None
    return naming.queue_name(partition, queue)
