"""What a caller hands the publishing I/O thread, how it waits, and how a publish fails.

A ``Publish`` is one message with its outcome; a ``Batch`` is the publishes one caller
submitted together, waited for with one wake-up (a lock released by the I/O thread when
the last of them is settled). A ``concurrent.futures.Future`` per message cost a
``Condition`` and its waiter lock per call and a Python-level ``notify_all`` per confirm
on the I/O thread, which serves every caller of a shared client.

Only one thread settles a publish: the I/O thread once it took the publish, or the
submitting thread before it handed the publish over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from roger.broker import wire


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


class Batch:
    """Publishes submitted together: ``wait`` returns once every one is settled."""

    __slots__ = ("_left", "_lock", "_on_done")

    def __init__(self, count: int, on_done: Callable[[], None] | None = None) -> None:
        self._left = count
        self._lock = threading.Lock()
        self._lock.acquire()
        self._on_done = on_done  # called on the settling thread (asyncio: call_soon_threadsafe)
        if count == 0:
            self._finish()

    def one_settled(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._finish()

    def _finish(self) -> None:
        self._lock.release()
        if self._on_done is not None:
            self._on_done()

    @property
    def done(self) -> bool:
        return self._left <= 0

    def wait(self, timeout: float | None = None) -> bool:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        self._lock.release()  # any later wait returns at once
        return True


class Publish:
    """One message to publish; ``declare`` arguments are declared first (once per
    connection when ``remember``, else before every publish: queue-key queues vanish).
    ``props`` is the encoded property section (``wire.properties``). ``queue`` is the
    routing key: a queue's name on the default exchange, or a delayed job's route on
    ``exchange``."""

    __slots__ = (
        "batch",
        "body",
        "channel",
        "declare",
        "error",
        "exchange",
        "frames",
        "message_id",
        "props",
        "queue",
        "remember",
        "returned",
        "settled",
    )

    def __init__(
        self,
        queue: str,
        body: bytes,
        props: bytes,
        message_id: str | None = None,
        declare: dict[str, Any] | None = None,
        remember: bool = True,
        exchange: str = "",
    ) -> None:
        self.queue, self.body, self.props, self.message_id = queue, body, props, message_id
        self.exchange = exchange
        self.declare, self.remember = declare, remember
        self.batch: Batch | None = None
        self.error: BaseException | None = None
        self.settled = False
        self.returned = False
        self.frames = b""
        self.channel = 0  # the channel number ``frames`` were built for

    @classmethod
    def of(cls, queue: str, body: bytes, props: pika.BasicProperties) -> Publish:
        """From pika properties (buried-jobs moves, tombstones)."""
        return cls(queue, body, b"".join(props.encode()), props.message_id)

    def build(self, channel: int, body_max: int) -> None:
        self.frames = wire.publish(
            channel, self.queue, self.body, self.props, body_max, self.exchange
        )
        self.channel = channel

    def settle(self, error: BaseException | None = None) -> None:
        if self.settled:
            return
        self.settled, self.error = True, error
        if self.batch is not None:
            self.batch.one_settled()

    def outcome(self) -> BaseException | None:
        """None once confirmed, else why not."""
        return self.error


def batch(publishes: list[Publish], on_done: Callable[[], None] | None = None) -> Batch:
    """Group ``publishes`` (not yet submitted) under one wake-up."""
    group = Batch(len(publishes), on_done)
    for p in publishes:
        p.batch = group
    return group
