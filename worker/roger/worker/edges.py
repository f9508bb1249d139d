"""The worker's I/O edges in one place: real by default, swapped for fakes in unit tests.

The runtime's state machine (deliveries, fates, acks, pool, partition features) never
creates an I/O object itself; it asks its ``Edges``. Tests pass fakes of the event loop,
the AMQP link, the partition state and the job processes (tests/unit/runtime_fakes.py),
in the spirit of Dramatiq's StubBroker: they add speed and reach to the integration tests
on the real broker, and replace none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pika.adapters.select_connection import IOLoop

from roger.broker.state import PartitionState
from roger.worker.link import Link
from roger.worker.procs import ChildProc


@dataclass(frozen=True)
class Edges:
    ioloop: Callable[[], Any] = IOLoop
    link: Callable[..., Link] = Link
    partition_state: Callable[..., PartitionState] = PartitionState
    job_process: Callable[..., ChildProc] = ChildProc


REAL_EDGES = Edges()
