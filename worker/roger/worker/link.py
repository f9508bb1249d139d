"""The worker's AMQP connection: callback-style pika, re-opened with backoff.

One ``SelectConnection`` at a time on a loop the worker owns (children's pipes stay
registered across reconnects). A confirm channel carries retry/bury/park publishes; each
consumed queue gets its own channel. Any channel error drops the whole connection, so the
worker has one simple notion of "generation" for its in-flight deliveries, with one
exception: a consumer channel closed by the broker's consumer timeout is that queue's
business alone (``on_ack_timeout``); dropping the connection for it would make every
other queue's jobs run again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection
from typing import Any

import pika
from pika import spec
from pika.adapters.select_connection import SelectConnection

from roger.broker import inbound
from roger.broker.channels import Confirm, Confirms
from roger.core.ack_timeout import is_ack_timeout, timeout_in_reply
from roger.core.amqp_urls import parse_amqp_urls, redact

log = logging.getLogger("roger.worker")
BACKOFF = (0.5, 1, 2, 4, 8, 15, 30)
DECLARE_DEADLINE = 30.0  # connection open but queue declarations unanswered: start over


class Link:
    def __init__(
        self,
        url: str,
        ioloop: Any,
        declarations: list[tuple[str, dict[str, Any]]],
        on_ready: Callable[[], None],
        on_lost: Callable[[], None],
        on_fatal: Callable[[str], None],
        name: str = "roger-worker",
        keep_existing: Collection[str] = (),
        exchanges: list[str] | None = None,
        bindings: list[tuple[str, str, str, bool]] | None = None,
    ) -> None:
        # One address or several (roger.core.amqp_urls): each attempt takes the next one, so
        # a stopped node costs one refused connect, not a backoff.
        urls = parse_amqp_urls(url)
        self.addresses = [pika.URLParameters(u) for u in urls]
        self._urls = [redact(u) for u in urls]
        self._address = 0
        for params in self.addresses:
            # Named so that operators (and tests) can find this worker's connection.
            params.client_properties = {"connection_name": name}
        self.ioloop = ioloop
        self.declarations = declarations
        # Declared only when missing; used as they are when they exist (their arguments
        # may differ: roger.core.topology.keeps_its_arguments).
        self.keep_existing = frozenset(keep_existing)
        self.exchanges = exchanges or []  # topic exchanges (the delay ladder's)
        self.bindings = bindings or []  # (destination, source, pattern, is an exchange)
        self.on_ready, self.on_lost, self.on_fatal = on_ready, on_lost, on_fatal
        self.conn: SelectConnection | None = None
        self.pub: Any = None
        self.generation = 0
        self.ready = False
        self.closing = False
        self.failures = 0
        self.opened = 0  # connections opened so far
        self._confirms: Confirms | None = None  # of the publish channel ``pub``
        # A consumer channel closed by the consumer timeout: (queue, channel, timeout or None)
        self.on_ack_timeout: Callable[[str, Any, float | None], None] | None = None
        # Sends the acks still held (``Ledger``) before this side drops the connection:
        # those jobs are done, and redelivered they would run again for nothing.
        self.flush_acks: Callable[[], None] = lambda: None

    # -- connection ---------------------------------------------------------------
    @property
    def params(self) -> pika.URLParameters:
        """The address of the current (or next) connection attempt."""
        return self.addresses[self._address]

    def connect(self) -> None:
        self.conn = SelectConnection(
            self.params,
            on_open_callback=self._opened,
            on_open_error_callback=self._open_failed,
            on_close_callback=self._closed,
            custom_ioloop=self.ioloop,
        )

    def _opened(self, conn: SelectConnection) -> None:
        if not inbound.install(conn):
            log.warning("this pika's internals differ: deliveries go through its own reader")
        conn.channel(on_open_callback=self._pub_opened)
        opened = self.opened = self.opened + 1
        self.ioloop.call_later(DECLARE_DEADLINE, lambda: self._declare_deadline(opened))

    def _declare_deadline(self, opened: int) -> None:
        conn = self.conn
        if opened != self.opened or conn is None or self.ready or self.closing:
            return  # declared, or a later connection is the current one
        if conn.is_open:
            log.error(
                "queue declarations unanswered %.0fs after connecting; reconnecting",
                DECLARE_DEADLINE,
            )
            conn.close()

    def _open_failed(self, conn: Any, error: Exception) -> None:
        log.warning("cannot connect to RabbitMQ at %s: %s", self._urls[self._address], error)
        self._retry_later()

    def _retry_later(self) -> None:
        if self.closing:
            self.ioloop.stop()
            return
        self._address = (self._address + 1) % len(self.addresses)
        # The backoff grows once per round through all addresses.
        delay = BACKOFF[min(self.failures // len(self.addresses), len(BACKOFF) - 1)]
        self.failures += 1
        self.ioloop.call_later(delay, self.connect)

    def _closed(self, conn: Any, reason: Exception) -> None:
        was_ready, self.ready, self.pub = self.ready, False, None
        self._confirms = None  # unconfirmed publishes are forgotten: their sources requeue
        if self.closing:
            self.ioloop.stop()
            return
        log.warning("AMQP connection lost (%s); reconnecting", reason)
        if was_ready:
            self.on_lost()
        self._retry_later()

    def _channel_closed(self, channel: Any, reason: Exception) -> None:
        if self.closing or self.conn is None or not self.conn.is_open:
            return
        code = getattr(reason, "reply_code", 0)
        if code == 406 and not self.ready:  # PRECONDITION_FAILED while declaring
            self.on_fatal(f"RabbitMQ refused the queue declarations: {reason}")
            return
        log.warning("AMQP channel closed (%s); dropping the connection", reason)
        self._start_over()

    def _start_over(self) -> None:
        """Close the connection from this side, held acks first; ``_closed`` connects
        again. Nothing to do while it is closing or closed already."""
        if self.conn is None or not self.conn.is_open or self.closing:
            return
        self.flush_acks()  # may finish a worker that is stopping: then it closed already
        if self.conn.is_open and not self.closing:
            self.conn.close()

    def close(self) -> None:
        """Close (unacked deliveries go back to their queues); the loop stops after."""
        self.closing = True
        if self.conn is not None and self.conn.is_open:
            self.conn.close()
        else:  # never opened, or still opening: closing mid-handshake trips an assert in pika
            self.ioloop.stop()

    # -- publish channel and topology -------------------------------------------------
    def _pub_opened(self, channel: Any) -> None:
        self.pub = channel
        confirms = self._confirms = Confirms(channel, self._unroutable)
        channel.add_on_close_callback(self._channel_closed)
        channel.confirm_delivery(ack_nack_callback=confirms.on_confirm, callback=self._declare)

    def _unroutable(self, queue: str) -> None:
        """A publish found no queue (deleted under us): its source stays unacked, and a
        new connection declares the topology again."""
        log.error("publish to %s returned: no such queue; reconnecting to re-declare", queue)
        self._start_over()

    def _declare(self, _frame: Any) -> None:
        """Find which ``keep_existing`` queues exist (each on a throwaway channel: a
        passive declare of a missing queue closes its channel), then declare."""
        probe = [n for n, _ in self.declarations if n in self.keep_existing]
        if not probe:
            self._declare_all(set())
            return
        existing: set[str] = set()
        left = [len(probe)]

        def probed(name: str, messages: int | None) -> None:
            if messages is not None:
                existing.add(name)
            left[0] -= 1
            if left[0] == 0 and self.pub is not None:
                self._declare_all(existing)

        for name in probe:
            self.count(name, functools.partial(probed, name))

    def _declare_all(self, existing: set[str]) -> None:
        left = [len(self.declarations) + len(self.exchanges) + len(self.bindings)]

        def one_done(_f: Any) -> None:
            left[0] -= 1
            if left[0] == 0:
                self.ready, self.failures = True, 0
                self.generation += 1
                self.on_ready()

        # One channel answers in order: exchanges and queues exist before their bindings.
        for exchange in self.exchanges:
            self.pub.exchange_declare(exchange, "topic", durable=True, callback=one_done)
        for name, arguments in self.declarations:
            if name in existing:  # deleted since: the 404 starts a new connection
                self.pub.queue_declare(name, passive=True, callback=one_done)
            else:
                self.pub.queue_declare(name, durable=True, arguments=arguments, callback=one_done)
        for destination, source, pattern, to_exchange in self.bindings:
            if to_exchange:
                self.pub.exchange_bind(destination, source, pattern, callback=one_done)
            else:
                self.pub.queue_bind(destination, source, pattern, callback=one_done)

    def publish(
        self, routing_key: str, body: bytes, props: Any, on_confirm: Confirm, exchange: str = ""
    ) -> bool:
        """Publish on the confirm channel; False if there is none open now."""
        if self.pub is None or self._confirms is None:
            return False
        return self._confirms.publish(routing_key, body, props, on_confirm, exchange)

    def unconfirmed(self) -> int:
        return 0 if self._confirms is None else self._confirms.pending()

    # -- consumers -----------------------------------------------------------------
    def consume(self, queue: str, prefetch: int, on_channel: Callable[[Any], None]) -> None:
        """Open a consumer channel for ``queue`` with ``prefetch``; the caller consumes."""

        def closed(channel: Any, reason: Exception) -> None:
            code = getattr(reason, "reply_code", 0)
            text = str(getattr(reason, "reply_text", ""))
            conn = self.conn
            if (
                self.on_ack_timeout is not None
                and is_ack_timeout(code, text)
                and not self.closing
                and conn is not None
                and conn.is_open
            ):
                log.warning("RabbitMQ closed the consumer channel of %s: %s", queue, text)
                self.on_ack_timeout(queue, channel, timeout_in_reply(text))
                return
            self._channel_closed(channel, reason)

        def opened(channel: Any) -> None:
            channel.add_on_close_callback(closed)
            channel.add_on_cancel_callback(lambda _frame: self._cancelled_by_broker(queue))
            channel.basic_qos(prefetch_count=prefetch, callback=lambda _f: on_channel(channel))

        assert self.conn is not None
        self.conn.channel(on_open_callback=opened)

    def _cancelled_by_broker(self, queue: str) -> None:
        """The broker dropped our consumer (queue deleted, node moved): start over."""
        log.warning("RabbitMQ cancelled the consumer of %s; reconnecting to re-declare", queue)
        self._start_over()

    def sample(self, names: list[str], on_counts: Callable[[str, int, int], None]) -> None:
        """Passive-declare queues on a throwaway channel; off the hot path."""
        if self.conn is None or not self.conn.is_open:
            return

        def opened(channel: Any) -> None:
            left = [len(names)]

            def got(frame: Any) -> None:
                m = frame.method
                on_counts(m.queue, m.message_count, m.consumer_count)
                left[0] -= 1
                if left[0] == 0 and channel.is_open:
                    channel.close()

            for name in names:
                channel.queue_declare(name, passive=True, callback=got)

        self.conn.channel(on_open_callback=opened)

    def count(self, queue: str, on_count: Callable[[int | None], None]) -> None:
        """Ready messages of ``queue`` on a throwaway channel: ``on_count(n)``, or
        ``on_count(None)`` if the broker refused (no such queue) or the channel closed."""
        if self.conn is None or not self.conn.is_open:
            return  # the connection is gone: the deliveries come back to a new one
        answered = [False]

        def once(n: int | None) -> None:
            if not answered[0]:
                answered[0] = True
                on_count(n)

        def opened(channel: Any) -> None:
            def got(frame: Any) -> None:
                once(frame.method.message_count)
                if channel.is_open:
                    channel.close()

            channel.add_on_close_callback(lambda _ch, _reason: once(None))
            channel.queue_declare(queue, passive=True, callback=got)

        self.conn.channel(on_open_callback=opened)

    def take_head(self, queue: str, on_taken: Callable[[Any, bytes | None], None]) -> None:
        """Take the oldest message of ``queue`` (acked) on a throwaway channel, off the hot
        path: ``on_taken(props, body)``, or ``on_taken(None, None)`` if there was none (or
        the channel closed first)."""
        if self.conn is None or not self.conn.is_open:
            return
        answered = [False]

        def once(props: Any, body: bytes | None) -> None:
            if not answered[0]:
                answered[0] = True
                on_taken(props, body)

        def opened(channel: Any) -> None:
            def got(ch: Any, method: Any, props: Any, body: bytes) -> None:
                ch.basic_ack(method.delivery_tag)
                once(props, body)
                if ch.is_open:
                    ch.close()  # the ack goes out before the close

            def empty(_frame: Any) -> None:
                once(None, None)
                if channel.is_open:
                    channel.close()

            channel.add_on_close_callback(lambda _ch, _reason: once(None, None))
            channel.add_callback(empty, [spec.Basic.GetEmpty], one_shot=True)
            channel.basic_get(queue, got, auto_ack=False)

        self.conn.channel(on_open_callback=opened)
