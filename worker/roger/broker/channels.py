"""Channels of callback-style pika, shared by the worker's link and its partition state.

- ``Confirms``: publisher confirms of one confirm-mode channel (publish with a callback
  told ``True`` on ack, ``False`` on nack). The worker's link and its partition state both
  publish this way; one copy of the bookkeeping keeps them from drifting apart.
- ``OneShotChannels`` / ``OneShot``: a channel of its own for each operation the broker may
  refuse (exclusive declare, ``basic.get`` on a missing queue, ``queue.delete if_empty``):
  a refusal closes that channel only, and surfaces as ``Refused`` inside the flow that
  asked. At most a fixed number are open at once per connection (pika raises
  ``NoFreeChannels`` past the broker's ``channel_max``; a partition with many keys must
  never get there): further requests wait for a free one.
- Steps (see ``roger.broker.flow``) for the long-lived channels a flow sets up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika

from roger.broker.flow import Refused, Resume, Step

Confirm = Callable[[bool], None]
MAX_ONE_SHOT = 32  # one-shot channels open at once on one connection


class Confirms:
    """Publisher confirms of one confirm-mode channel.

    Every publish is ``mandatory``: RabbitMQ confirms a message that no queue took (the
    queue does not exist) and drops it, unless it is returned first. A returned publish is
    told ``False``, as a refused one, so that its source is never acknowledged for a
    message that sits nowhere. ``on_unroutable`` hears of each return.
    """

    def __init__(
        self, channel: Any, on_unroutable: Callable[[str], None] = lambda _q: None
    ) -> None:
        self.channel = channel
        self._seq = 0
        self._waiting: dict[int, Confirm] = {}  # delivery tag -> callback, in tag order
        self._targets: dict[int, tuple[str, Any]] = {}  # tag -> (routing key, message id)
        self._returned: set[int] = set()
        self._on_unroutable = on_unroutable
        channel.add_on_return_callback(self._on_return)

    def publish(
        self, routing_key: str, body: bytes, props: Any, done: Confirm, exchange: str = ""
    ) -> bool:
        """Publish (to the default exchange unless ``exchange``); False (and ``done`` never
        called) if the channel is closed."""
        if not self.channel.is_open:
            return False
        self.channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
        self._seq += 1
        self._waiting[self._seq] = done
        self._targets[self._seq] = (routing_key, getattr(props, "message_id", None))
        return True

    def _on_return(self, _ch: Any, method: Any, props: Any, _body: bytes) -> None:
        """A return comes before the confirm of its message: mark the oldest waiting
        publish with the same routing key and message id."""
        target = (method.routing_key, getattr(props, "message_id", None))
        for tag, sent in self._targets.items():
            if sent == target and tag not in self._returned:
                self._returned.add(tag)
                break
        self._on_unroutable(method.routing_key)

    def published(self, routing_key: str, body: bytes, props: Any) -> Step:
        """A step answered with True once the broker confirmed, False if it did not."""

        def step(resume: Resume) -> None:
            if not self.publish(routing_key, body, props, resume):
                resume(False)

        return step

    def on_confirm(self, frame: Any) -> None:
        """``ack_nack_callback`` of ``confirm_delivery``."""
        method = frame.method
        ok = method.NAME == "Basic.Ack"
        tag = method.delivery_tag
        if method.multiple:
            tags = []
            for t in self._waiting:  # ascending: stop at the first one past ``tag``
                if t > tag:
                    break
                tags.append(t)
        else:
            tags = [tag] if tag in self._waiting else []
        for t in tags:
            self._targets.pop(t, None)
            returned = t in self._returned
            self._returned.discard(t)
            self._waiting.pop(t)(ok and not returned)

    def pending(self) -> int:
        return len(self._waiting)

    def fail_all(self) -> None:
        """The channel is gone: every publish not confirmed is told False."""
        waiting, self._waiting = self._waiting, {}
        self._targets.clear()
        self._returned.clear()
        for done in waiting.values():
            done(False)


@dataclass(frozen=True, slots=True)
class Got:
    """A message taken with ``basic.get`` (unacknowledged until ``ack``/``nack``)."""

    tag: int
    props: Any
    body: bytes


class OneShot:
    """A channel for operations that may be refused; a refusal answers the waiting step
    with ``Refused(reply_code)`` (0 when the connection itself went away)."""

    def __init__(self, channel: Any, on_closed: Callable[[], None]) -> None:
        self.channel = channel
        self._on_closed = on_closed
        self._waiting: Resume | None = None
        channel.add_on_close_callback(self._closed)

    def _closed(self, _ch: Any, reason: Any) -> None:
        self._on_closed()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            connection_open = bool(getattr(self.channel.connection, "is_open", False))
            code = int(getattr(reason, "reply_code", 0) or 0) if connection_open else 0
            waiting(Refused(code, str(getattr(reason, "reply_text", ""))))

    def _answer(self, value: Any) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting(value)

    def _op(self, start: Callable[[Resume], None]) -> Step:
        def step(resume: Resume) -> None:
            if not self.channel.is_open:
                resume(Refused(0, "channel closed"))
                return
            self._waiting = resume
            start(self._answer)

        return step

    def declare(self, name: str, **kwargs: Any) -> Step:
        """``queue.declare``; answered with its ``Queue.DeclareOk`` frame."""
        return self._op(lambda ok: self.channel.queue_declare(name, callback=ok, **kwargs))

    def delete(self, name: str, if_empty: bool = False) -> Step:
        return self._op(lambda ok: self.channel.queue_delete(name, if_empty=if_empty, callback=ok))

    def get(self, name: str) -> Step:
        """``basic.get`` (to be acked); answered with a ``Got`` or None (queue empty)."""

        def start(ok: Resume) -> None:
            self.channel.add_callback(lambda _f: ok(None), [pika.spec.Basic.GetEmpty], True)
            self.channel.basic_get(
                name,
                callback=lambda _c, m, p, b: ok(Got(m.delivery_tag, p, b)),
                auto_ack=False,
            )

        return self._op(start)

    def ack(self, tag: int) -> None:
        if self.channel.is_open:
            self.channel.basic_ack(tag)

    def nack(self, tag: int, requeue: bool = True) -> None:
        if self.channel.is_open:
            self.channel.basic_nack(tag, requeue=requeue)

    def finish(self) -> None:
        """Close without waiting (unacked messages go back to their queue)."""
        self._waiting = None
        if self.channel.is_open:
            self.channel.close()


class OneShotChannels:
    """Opens ``OneShot`` channels on one connection, at most ``limit`` at a time."""

    def __init__(self, conn: Any, limit: int = MAX_ONE_SHOT) -> None:
        self.conn = conn
        self.limit = limit
        self.open_now = 0
        self._queue: deque[Resume] = deque()

    def opened(self) -> Step:
        """A step answered with a ``OneShot`` (``Refused(0)`` if the connection is gone)."""
        return self._request

    def _request(self, resume: Resume) -> None:
        if self.conn is None or not self.conn.is_open:
            resume(Refused(0, "connection closed"))
        elif self.open_now < self.limit:
            self._open(resume)
        else:
            self._queue.append(resume)

    def _open(self, resume: Resume) -> None:
        self.open_now += 1
        released = [False]

        def release() -> None:
            if not released[0]:
                released[0] = True
                self.open_now -= 1
                self._next()

        try:
            self.conn.channel(on_open_callback=lambda ch: resume(OneShot(ch, release)))
        except Exception as exc:  # NoFreeChannels, connection closing
            release()
            resume(Refused(0, f"no channel: {exc}"))

    def _next(self) -> None:
        while self._queue and self.open_now < self.limit:
            resume = self._queue.popleft()
            if self.conn is None or not self.conn.is_open:
                resume(Refused(0, "connection closed"))
            else:
                self._open(resume)

    def fail_waiting(self) -> None:
        """The connection is gone: requests still waiting for a channel are refused."""
        self.conn = None
        queue, self._queue = self._queue, deque()
        for resume in queue:
            resume(Refused(0, "connection closed"))


# -- steps on long-lived channels -------------------------------------------------------


def channel_opened(conn: Any) -> Step:
    """A new channel (for the life of the connection); answered with it."""
    return lambda resume: conn.channel(on_open_callback=resume)


def confirms_selected(channel: Any, on_confirm: Callable[[Any], None]) -> Step:
    return lambda resume: channel.confirm_delivery(ack_nack_callback=on_confirm, callback=resume)


def declared(channel: Any, name: str, **kwargs: Any) -> Step:
    return lambda resume: channel.queue_declare(name, callback=resume, **kwargs)


def qos_set(channel: Any, prefetch: int) -> Step:
    return lambda resume: channel.basic_qos(prefetch_count=prefetch, callback=resume)


def cancel_stream_consumer(channel: Any, tag: str) -> None:
    """Cancel a consumer of a stream. Deliveries already on their way arrive after the
    cancel; pika rejects those of a cancelled manual-ack consumer, and RabbitMQ answers a
    reject on a stream by closing the whole connection (540 NOT_IMPLEMENTED, measured on
    3.10). Marked as a no-ack consumer in pika's books (cleared at its CancelOk), they are
    dropped instead: a stream keeps its messages, and credit no longer matters."""
    channel._consumers_with_noack.add(tag)
    channel.basic_cancel(tag)
