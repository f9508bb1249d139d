"""Drive callback-style ``PartitionState`` from a test: a SelectConnection in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pika
from pika.adapters.select_connection import IOLoop, SelectConnection

from roger.broker.state import PartitionState


class StateLoop:
    """One connection, one ``PartitionState``, its ioloop on a background thread."""

    def __init__(self, url: str, partition: str, queues: list[str], **kwargs: Any) -> None:
        self.ioloop = IOLoop()
        self.cancels: list[str] = []
        self.pauses: list[tuple[str, bool]] = []
        self.ready = threading.Event()
        self.state = PartitionState(
            partition,
            queues,
            on_ready=self.ready.set,
            on_cancel=self.cancels.append,
            on_pause=lambda q, p: self.pauses.append((q, p)),
            **kwargs,
        )
        self.thread = threading.Thread(target=self.ioloop.start, daemon=True)
        self.thread.start()
        self.conn = self._connect(url)
        assert self.ready.wait(15), "partition state never caught up"

    def _connect(self, url: str) -> SelectConnection:
        """A new connection, made on the loop's thread (pika is not thread-safe)."""
        opened: Future[Any] = Future()

        def connect() -> None:
            SelectConnection(
                pika.URLParameters(url),
                on_open_callback=lambda c: (self.state.attach(c), opened.set_result(c)),
                on_open_error_callback=lambda _c, e: opened.set_exception(e),
                on_close_callback=lambda _c, _r: self.state.detach(),
                custom_ioloop=self.ioloop,
            )

        self.ioloop.add_callback_threadsafe(connect)
        conn: SelectConnection = opened.result(10)
        return conn

    def reconnect(self, url: str) -> None:
        """Lose the connection (the broker sees it closed) and open a new one, as a worker
        whose connection dropped does."""
        closed = threading.Event()
        self.ready.clear()

        def close() -> None:
            self.conn.close()
            self.ioloop.call_later(0.2, closed.set)

        self.ioloop.add_callback_threadsafe(close)
        assert closed.wait(10)
        self.conn = self._connect(url)
        assert self.ready.wait(15), "partition state never caught up again"

    def call(self, fn: Callable[[Callable[[Any], None]], None], timeout: float = 60) -> Any:
        """Run ``fn(done)`` on the loop; return what it passes to ``done``.

        The bound is generous: a broker busy creating and deleting quorum queues for other
        tests (``make test`` runs three streams on one broker) has taken over 10 s to
        answer a lock's declaration. A call that never answers still fails."""
        fut: Future[Any] = Future()
        self.ioloop.add_callback_threadsafe(lambda: fn(fut.set_result))
        return fut.result(timeout)

    def close(self) -> None:
        """Close the connection (as a worker dying would, from the broker's side)."""
        if self.thread.is_alive():
            done = threading.Event()

            def stop() -> None:
                if self.conn.is_open:
                    self.conn.close()
                self.ioloop.call_later(0.2, lambda: (self.ioloop.stop(), done.set()))

            self.ioloop.add_callback_threadsafe(stop)
            done.wait(5)
            self.thread.join(5)
