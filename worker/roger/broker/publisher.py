"""Pipelined, confirmed publishing on one connection owned by one I/O thread.

pika connections are not thread-safe, and a ``BlockingConnection`` in confirm mode waits
for each confirm before the next publish. Here one thread runs a ``SelectConnection``;
any thread submits publishes through a locked inbox (one wake-up per batch) and gets a
``concurrent.futures.Future`` per message, settled by the broker's confirm (one
``multiple`` ack settles many). Waiting on the future blocks only the caller; asyncio
code awaits it with ``asyncio.wrap_future``.

Two channels: publishes go on a confirm channel that nothing should ever close; queue
declarations, which the broker may refuse (arguments differ, a queue being deleted), go
on their own channel, one at a time, and a publish waits for its queue's declare-ok.
A lost connection fails every unsettled future with ``ConnectionLost`` and ends the
thread; the owner starts a new ``Publisher`` for the next call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from pika import spec
from pika.adapters.select_connection import SelectConnection

from roger.core.confirms import ConfirmLedger

log = logging.getLogger("roger.client")
START_TIMEOUT = 30.0  # seconds to connect and open the channels


class PublishError(Exception):
    """A publish the broker did not take."""


class Unroutable(PublishError):
    """Returned by the broker: the queue does not exist."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"queue {queue} does not exist")
        self.queue = queue


class Refused(PublishError):
    """Nacked by the broker (a full ``reject-publish`` queue, or a broker-side error)."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"the broker refused the message for {queue}")
        self.queue = queue


class DeclareRefused(PublishError):
    """The broker refused to declare the queue (e.g. it exists with other arguments)."""

    def __init__(self, queue: str, code: int, text: str) -> None:
        super().__init__(f"cannot declare queue {queue}: {code} {text}")
        self.queue, self.code, self.text = queue, code, text


class ConnectionLost(pika.exceptions.AMQPConnectionError):  # type: ignore[misc]
    """The connection closed before the broker confirmed: the outcome is unknown."""


@dataclass(eq=False)
class Publish:
    """One message to publish; ``declare`` arguments are declared first (once per
    connection when ``remember``, else before every publish: queue-key queues vanish).
    ``queue`` is the routing key: a queue's name, or a delayed job's route on
    ``exchange``."""

    queue: str
    body: bytes
    props: pika.BasicProperties
    declare: dict[str, Any] | None = None
    remember: bool = True
    future: Future[None] = field(default_factory=Future)
    returned: bool = False
    exchange: str = ""

    def __post_init__(self) -> None:
        self.future.set_running_or_notify_cancel()  # only the confirm settles it


class Publisher:
    def __init__(self, params: pika.URLParameters) -> None:
        self.pid = os.getpid()
        self._params = params
        self._lock = threading.Lock()
        self._inbox: list[Publish] = []
        self._wake_scheduled = False
        self._dead = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # I/O-thread state
        self._conn: Any = None
        self._pub_ch: Any = None
        self._decl_ch: Any = None
        self._ledger: ConfirmLedger[Publish] = ConfirmLedger()
        self._by_return: dict[tuple[str, str], Publish] = {}
        self._unsent: deque[Publish] = deque()  # waiting for the publish channel
        self._declared: set[str] = set()
        self._declaring: dict[str, list[Publish]] = {}  # queue -> publishes waiting for it
        self._declare_order: deque[tuple[str, dict[str, Any]]] = deque()  # sent, unanswered
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="roger-client-io", daemon=True)

    # -- any thread ------------------------------------------------------------------
    def start(self) -> Publisher:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self._error = self._error or pika.exceptions.AMQPConnectionError("connect timeout")
        if self._error is not None:
            self._mark_dead(self._error)
            raise self._error
        return self

    @property
    def alive(self) -> bool:
        return not self._dead and self.pid == os.getpid()

    def submit(self, publishes: list[Publish]) -> None:
        """Hand publishes to the I/O thread; each one's future settles with its confirm."""
        with self._lock:
            if self._dead:
                raise ConnectionLost("the client's connection is closed")
            self._inbox.extend(publishes)
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        self._conn.ioloop.add_callback_threadsafe(self._take_inbox)

    def close(self) -> None:
        with self._lock:
            if self._dead:
                return
        with contextlib.suppress(Exception):
            self._conn.ioloop.add_callback_threadsafe(self._close_now)
        if threading.current_thread() is not self._thread:
            self._thread.join(10)

    def abandon_in_child(self) -> None:
        """After ``fork()``: the parent's socket must never carry a frame from here; close
        this process's copies of its file descriptors, without a word to the broker."""
        self._dead = True
        self._lock = threading.Lock()
        conn = self._conn
        transport = getattr(conn, "_transport", None)
        poller = getattr(getattr(conn, "ioloop", None), "_poller", None)
        for sock in (
            getattr(transport, "_sock", None),
            getattr(poller, "_r_interrupt", None),
            getattr(poller, "_w_interrupt", None),
        ):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _mark_dead(self, error: BaseException) -> None:
        with self._lock:
            self._dead = True
            left, self._inbox = self._inbox, []
        for p in left:
            _fail(p, ConnectionLost(str(error)))

    # -- the I/O thread --------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._conn = SelectConnection(
                self._params,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        try:
            self._conn.ioloop.start()
        finally:
            self._mark_dead(ConnectionLost("the client's connection is closed"))
            self._ready.set()
            with contextlib.suppress(Exception):
                self._conn.ioloop.close()

    def _on_open(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._on_pub_channel)
        conn.channel(on_open_callback=self._on_decl_channel)

    def _on_open_error(self, conn: Any, error: BaseException) -> None:
        self._error = (
            error
            if isinstance(error, pika.exceptions.AMQPConnectionError)
            else pika.exceptions.AMQPConnectionError(str(error))
        )
        self._ready.set()
        conn.ioloop.stop()

    def _on_closed(self, conn: Any, reason: BaseException) -> None:
        lost = ConnectionLost(f"connection closed before the broker confirmed: {reason!r}")
        self._mark_dead(lost)
        for p in [*self._ledger.drain(), *self._unsent]:
            _fail(p, lost)
        for waiting in self._declaring.values():
            for p in waiting:
                _fail(p, lost)
        self._unsent.clear()
        self._declaring.clear()
        if not self._closing:
            log.warning("roger client: %s", lost)
        conn.ioloop.stop()

    def _close_now(self) -> None:
        self._closing = True
        if self._conn.is_open:
            self._conn.close()

    def _on_pub_channel(self, ch: Any) -> None:
        ch.add_on_close_callback(self._on_pub_channel_closed)
        ch.add_on_return_callback(self._on_return)
        ch.confirm_delivery(self._on_confirm, callback=lambda _f: self._pub_ready(ch))

    def _pub_ready(self, ch: Any) -> None:
        self._pub_ch = ch
        self._ledger = ConfirmLedger()
        self._ready.set()
        while self._unsent:
            self._send(self._unsent.popleft())

    def _on_pub_channel_closed(self, ch: Any, reason: BaseException) -> None:
        self._pub_ch = None
        if self._closing or not self._conn.is_open:
            return
        lost = ConnectionLost(f"publish channel closed before the broker confirmed: {reason!r}")
        log.warning("roger client: %s", lost)
        for p in self._ledger.drain():
            _fail(p, lost)
        self._by_return.clear()
        self._conn.channel(on_open_callback=self._on_pub_channel)

    def _on_decl_channel(self, ch: Any) -> None:
        ch.add_on_close_callback(self._on_decl_channel_closed)
        self._decl_ch = ch
        for queue, args in self._declare_order:  # sent on a channel that closed: again
            self._send_declare(queue, args)

    def _on_decl_channel_closed(self, ch: Any, reason: BaseException) -> None:
        self._decl_ch = None
        if self._closing or not self._conn.is_open:
            return
        if self._declare_order:  # declares are answered in order: the first one failed
            queue, _ = self._declare_order.popleft()
            code = getattr(reason, "reply_code", 0)
            text = getattr(reason, "reply_text", str(reason))
            for p in self._declaring.pop(queue, []):
                _fail(p, DeclareRefused(queue, code, text))
        self._conn.channel(on_open_callback=self._on_decl_channel)

    def _take_inbox(self) -> None:
        with self._lock:
            batch, self._inbox = self._inbox, []
            self._wake_scheduled = False
        for p in batch:
            if p.declare is not None and not (p.remember and p.queue in self._declared):
                self._declare_then_send(p)
            else:
                self._send(p)

    def _declare_then_send(self, p: Publish) -> None:
        waiting = self._declaring.get(p.queue)
        if waiting is not None:  # a declare of this queue is on its way
            waiting.append(p)
            return
        assert p.declare is not None
        self._declaring[p.queue] = [p]
        self._declare_order.append((p.queue, p.declare))
        if self._decl_ch is not None:
            self._send_declare(p.queue, p.declare)

    def _send_declare(self, queue: str, args: dict[str, Any]) -> None:
        def ok(_frame: Any) -> None:
            if self._declare_order and self._declare_order[0][0] == queue:
                self._declare_order.popleft()
            waiting = self._declaring.pop(queue, [])
            if any(p.remember for p in waiting):
                self._declared.add(queue)
            for p in waiting:
                self._send(p)

        self._decl_ch.queue_declare(queue, durable=True, arguments=args, callback=ok)

    def _send(self, p: Publish) -> None:
        if self._pub_ch is None or not self._pub_ch.is_open:
            self._unsent.append(p)
            return
        try:
            self._pub_ch.basic_publish(p.exchange, p.queue, p.body, p.props, mandatory=True)
        except Exception as exc:  # refused before sending: this message only, no tag used
            _fail(p, PublishError(f"cannot publish to {p.queue}: {exc}"))
            return
        self._ledger.add(p)
        if p.props.message_id is not None:
            self._by_return[(p.queue, p.props.message_id)] = p

    def _on_return(self, _ch: Any, method: Any, props: Any, _body: bytes) -> None:
        p = self._by_return.get((method.routing_key, props.message_id))
        if p is not None:
            p.returned = True

    def _on_confirm(self, frame: Any) -> None:
        m = frame.method
        acked = isinstance(m, spec.Basic.Ack)
        for p in self._ledger.settle(m.delivery_tag, m.multiple):
            message_id = p.props.message_id
            if message_id is not None and self._by_return.get((p.queue, message_id)) is p:
                del self._by_return[(p.queue, message_id)]
            if p.future.done():
                continue
            if p.returned:
                p.future.set_exception(Unroutable(p.queue))
            elif acked:
                p.future.set_result(None)
            else:
                p.future.set_exception(Refused(p.queue))


def _fail(p: Publish, exc: BaseException) -> None:
    if not p.future.done():
        p.future.set_exception(exc)
