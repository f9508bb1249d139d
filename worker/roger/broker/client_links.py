"""A client's two connections, per process, and how one enqueue step is carried out.

Enqueues go through the publishing connection, owned by an I/O thread
(``roger.broker.publisher``): concurrent callers' publishes are pipelined and each caller
waits for its own batch's confirms with one wake-up. Rarer calls (queue keys, cancel,
pause, info) share a second, blocking connection under a lock. After ``fork()`` the
child drops both without touching them (the parent still owns the sockets) and opens
its own on first use.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
from pika.exceptions import AMQPChannelError, AMQPConnectionError

from roger.broker import enqueue_flow as flow
from roger.broker.connect import blocking_connection
from roger.broker.publisher import ConnectionLost, Publish, Publisher
from roger.broker.publishes import Batch, batch

RECOVERABLE = (AMQPConnectionError, AMQPChannelError, ConnectionError, OSError)
T = TypeVar("T")


@dataclass
class Started:
    """One step's actions under way: its publishes' batch and its control calls."""

    actions: list[flow.Action]
    batch: Batch
    controls: list[Future[Any]]

    def wait(self) -> None:
        self.batch.wait()
        if self.controls:
            wait(self.controls)

    def outcomes(self) -> list[flow.Outcome]:
        """Each action's result or exception, in order (once finished)."""
        controls = iter(self.controls)
        return [
            a.outcome() if isinstance(a, Publish) else outcome(next(controls)) for a in self.actions
        ]


def outcome(future: Future[Any]) -> Any:
    """A finished call's result, or the exception it raised (as a value)."""
    try:
        return future.result()
    except Exception as exc:
        return exc


class Links:
    def __init__(self, addresses: list[pika.URLParameters]) -> None:
        self.addresses = addresses
        self.reset()

    def reset(self) -> None:
        """Fresh per-process state (also in a forked child: the parent's locks may be held)."""
        self.pid = os.getpid()
        self._lock = threading.Lock()  # the publisher's life
        self._control_lock = threading.RLock()  # the blocking connection
        self.publisher: Publisher | None = None
        self._control_conn: Any = None
        self._pool: ThreadPoolExecutor | None = None

    def forget_parent(self) -> None:
        """In a forked child: drop the parent's connections without a frame on them."""
        publisher, conn = self.publisher, self._control_conn
        self.reset()
        if publisher is not None:
            publisher.abandon_in_child()
        impl = getattr(conn, "_impl", None)
        sock = getattr(getattr(impl, "_transport", None), "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        if self.pid != os.getpid():
            self.forget_parent()
            return
        with self._lock:
            publisher, self.publisher = self.publisher, None
            pool, self._pool = self._pool, None
        if publisher is not None:
            publisher.close()
        if pool is not None:
            pool.shutdown(wait=True)
        with self._control_lock:
            if self._control_conn is not None and self._control_conn.is_open:
                with contextlib.suppress(*RECOVERABLE):
                    self._control_conn.close()
            self._control_conn = None

    # -- the publishing connection ------------------------------------------------------
    def live_publisher(self) -> Publisher:
        publisher = self.publisher
        if publisher is not None and publisher.alive:
            return publisher  # the common case takes no lock: 32 threads would queue on it
        if self.pid != os.getpid():
            self.forget_parent()
        with self._lock:
            if self.publisher is None or not self.publisher.alive:
                self.publisher = self._start_publisher()
                # a client dropped without close() must not leave its thread and connection
                weakref.finalize(self, self.publisher.close)
            return self.publisher

    def _start_publisher(self) -> Publisher:
        """A publishing connection to the first address that answers, in order."""
        error: Exception | None = None
        for params in self.addresses:
            try:
                return Publisher(params).start()
            except AMQPConnectionError as exc:
                error = exc
        assert error is not None
        raise error

    def connected(self) -> bool:
        """A live publishing connection of this process (submitting will not block)."""
        publisher = self.publisher
        return publisher is not None and publisher.alive

    def submit(self, publishes: list[Publish]) -> None:
        try:
            self.live_publisher().submit(publishes)
        except ConnectionLost:  # it died since we looked: the next one is new
            self.live_publisher().submit(publishes)

    def dispatch(
        self, actions: list[flow.Action], on_done: Callable[[], None] | None = None
    ) -> Started:
        """Start every action of one step; publishes go to the I/O thread in one batch
        (``on_done`` runs once all of them are settled, on the thread that settles)."""
        publishes = [a for a in actions if isinstance(a, Publish)]
        group = batch(publishes, on_done)
        if publishes:
            try:
                self.submit(publishes)
            except AMQPConnectionError as exc:  # each job fails (keys taken are released)
                for p in publishes:
                    p.settle(exc)
        controls = [
            self._control_pool().submit(self.control, a.call)
            for a in actions
            if isinstance(a, flow.Control)
        ]
        return Started(actions, group, controls)

    def run(self, steps: flow.Steps) -> list[tuple[flow.EnqueueResult, BaseException | None]]:
        """Drive ``steps`` in this thread, one wake-up per step."""
        outcomes: list[Any] | None = None
        try:
            while True:
                started = self.dispatch(steps.send(outcomes))  # type: ignore[arg-type]
                started.wait()
                outcomes = started.outcomes()
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def publish_many(self, publishes: list[Publish]) -> None:
        """Publish, pipelined; return once all are confirmed (or raise the first error)."""
        if not publishes:
            return
        group = batch(publishes)
        self.submit(publishes)
        group.wait()
        for p in publishes:
            if p.error is not None:
                raise p.error

    # -- the blocking connection --------------------------------------------------------
    def _control_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(2, thread_name_prefix="roger-client-control")
            return self._pool

    @property
    def conn(self) -> Any:
        """The blocking connection, open."""
        if self.pid != os.getpid():
            self.forget_parent()
        with self._control_lock:
            if self._control_conn is None or not self._control_conn.is_open:
                self._control_conn = blocking_connection(self.addresses)
            return self._control_conn

    def control(self, call: Callable[[Any], T]) -> T:
        """``call(connection)`` under the lock; after a connection failure, once more."""
        with self._control_lock:
            try:
                return call(self.conn)
            except RECOVERABLE:
                with contextlib.suppress(*RECOVERABLE):
                    if self._control_conn is not None and self._control_conn.is_open:
                        self._control_conn.close()
                self._control_conn = None
                return call(self.conn)
