"""What every part of the partition state shares for one AMQP connection.

The parts (start-up and control stream, pause, execution locks, queue keys) run on the
connection's ioloop thread and must all agree on which connection is current: a timer or
an answer from a connection that has since been lost must do nothing. ``Session`` holds
that connection, its generation and the channels made on it; the parts hold a reference
to the one ``Session`` of their ``PartitionState``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pika

from roger.broker.channels import Confirm, Confirms, OneShotChannels
from roger.broker.flow import Step

log = logging.getLogger("roger.state")

PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")


def noop(_ok: bool) -> None:
    pass


class Session:
    def __init__(self, partition: str, clock: Callable[[], float] = time.time) -> None:
        self.partition = partition
        self.clock = clock
        self.conn: Any = None
        self.generation = 0
        self.pub: Confirms | None = None  # confirm channel for state publishes
        self.cons: Any = None  # channel consuming the control and pause streams
        self.one_shots = OneShotChannels(None)
        self.stage = "the AMQP connection"  # what start-up waits for now (for the log)

    def begin(self, conn: Any) -> int:
        """A new connection is current; returns its generation."""
        self.conn = conn
        self.generation += 1
        self.one_shots = OneShotChannels(conn)
        return self.generation

    def end(self) -> None:
        """The connection is gone: pending publishes and channel requests are told so."""
        if self.pub is not None:
            self.pub.fail_all()
        self.one_shots.fail_waiting()
        self.pub, self.cons, self.conn = None, None, None

    def alive(self, gen: int) -> bool:
        return gen == self.generation and self.conn is not None and self.conn.is_open

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        """Timers are never cancelled: each checks that its generation is still current."""
        if self.conn is not None:
            self.conn.ioloop.call_later(delay, fn)

    def slept(self, delay: float) -> Step:
        """A step answered after ``delay`` seconds (never, if the connection is gone)."""
        return lambda resume: self.later(delay, lambda: resume(None))

    def drop(self, gen: int) -> None:
        """Close the connection (the runtime reconnects and ``attach`` starts over)."""
        if self.alive(gen):
            self.conn.close()

    def publish(self, routing_key: str, body: bytes, props: Any, done: Confirm = noop) -> None:
        """Publish on the state's confirm channel; ``done(False)`` if there is none."""
        if self.pub is None or not self.pub.publish(routing_key, body, props, done):
            done(False)
