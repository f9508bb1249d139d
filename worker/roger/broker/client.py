"""``roger.Client``: enqueue jobs and read queue statistics; safe to share.

Any number of threads may use one client. Enqueues go through one connection owned by an
I/O thread (``roger.broker.publisher``): concurrent enqueues are pipelined and each call
returns once the broker has confirmed its own persistent message. Rarer calls (cancel,
pause, info, releasing a key) share a second, blocking connection under a lock. After
``fork()`` the child drops both connections without touching them (the parent still owns
the sockets) and opens its own on first use (``roger.broker.client_links``).
``roger.AsyncClient`` drives the same steps for asyncio code. The admin calls (buried
jobs, queued jobs, purge) are in ``roger.broker.client_admin``.
"""

from __future__ import annotations

import datetime
import os
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import pika

from roger.broker import enqueue_flow as flow
from roger.broker import partition_info, state_client
from roger.broker.buried_store import ReplayReport
from roger.broker.client_admin import AdminCalls
from roger.broker.client_links import Links
from roger.broker.enqueue_flow import EnqueueError, EnqueueResult, JobSpec
from roger.broker.partition_info import PartitionInfo, QueueInfo
from roger.broker.publishes import Publish
from roger.broker.state_client import DuplicateJob
from roger.core import naming
from roger.core.amqp_urls import parse_amqp_urls
from roger.core.jobs import JobDefinition

__all__ = [
    "Client",
    "DuplicateJob",
    "EnqueueError",
    "EnqueueResult",
    "PartitionInfo",
    "QueueInfo",
    "ReplayReport",
]

T = TypeVar("T")
_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


class Client(AdminCalls):
    def __init__(self, amqp_url: str, name: str | None = None) -> None:
        # One address or several (roger.core.amqp_urls): a connection tries them in order.
        self.addresses_text = parse_amqp_urls(amqp_url)
        self.addresses = [pika.URLParameters(u) for u in self.addresses_text]
        for params in self.addresses:
            # How this client shows in RabbitMQ's connection list.
            params.client_properties = {"connection_name": name or f"roger-client {os.getpid()}"}
        self._links = Links(self.addresses)
        _CLIENTS.add(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._links.close()

    @property
    def _conn(self) -> Any:
        """The blocking connection, open (for the ``state_client`` helpers)."""
        return self._links.conn

    def _control(self, call: Callable[[Any], T]) -> T:
        """``call(connection)`` on the blocking connection (retried once after a failure)."""
        return self._links.control(call)

    def _publish_many(self, items: list[tuple[str, bytes, Any]]) -> None:
        """Publish on the I/O thread, pipelined; return once all are confirmed (or raise)."""
        self._links.publish_many([Publish.of(queue, body, props) for queue, body, props in items])

    # -- enqueue ------------------------------------------------------------------------
    def enqueue(
        self,
        partition: str,
        job: JobDefinition | str,
        args: Any = None,
        *,
        queue: str | None = None,
        id: str | None = None,
        delay: float | None = None,
        at: datetime.datetime | None = None,
        queue_key: str | None = None,
    ) -> str:
        """Publish a job (persistent, confirmed) and return its id.

        A job with a queue_key first takes the key (atomic test-and-set, confirmed) and
        raises ``roger.DuplicateJob`` while another job holds it. ``id`` is the caller's
        own job id (Roger's ``Job.create(module, args, id)``), used as given: it is not
        checked for uniqueness (a queue_key is what refuses a second job).

        ``delay`` (seconds) or ``at`` (an aware datetime) delays the job: it waits in the
        broker (``roger.core.delay``) and starts within about a second of its time. A
        ``queue_key`` (``queue_key=`` replaces the job's own) is taken now, as for an
        immediate job, and held until the job ran.
        """
        [(result, exc)] = self._links.run(
            flow.steps([flow.prepare_one(partition, job, args, queue, id, delay, at, queue_key)])
        )
        if exc is not None:
            raise exc
        return result.job_id

    def enqueue_many(self, partition: str, jobs: Iterable[JobSpec]) -> list[EnqueueResult]:
        """Enqueue ``(job, args)``, ``(job, args, queue)`` or ``(job, args, queue, id)``
        tuples, all confirmed as one pipeline; one result per job, in order. Queue keys are
        taken first (a job whose key is held, also by an earlier job of the batch, is
        ``duplicate``). Bad input (a bad name, args that are not JSON) raises
        ``EnqueueError`` before anything is sent."""
        prepared = flow.prepare_many(partition, jobs)
        return [result for result, _ in self._links.run(flow.steps(prepared))] if prepared else []

    # -- partition state (the blocking connection) --------------------------------------
    def cancel(self, partition: str, job_id: str) -> None:
        """Cancel a job cluster-wide: skipped if queued, killed if running; ``on_cancel``
        runs once. Remembered for 7 days, also when no worker runs now."""
        naming.validate_name("partition", partition)
        self._control(lambda conn: state_client.cancel(conn, partition, job_id))

    def pause(self, partition: str, queue: str) -> None:
        """Stop consuming ``queue`` on every worker (running jobs finish); persisted."""
        naming.validate_name("partition", partition)
        self._control(lambda conn: state_client.set_paused(conn, partition, queue, True))

    def resume(self, partition: str, queue: str) -> None:
        naming.validate_name("partition", partition)
        self._control(lambda conn: state_client.set_paused(conn, partition, queue, False))

    def release_queue_key(self, partition: str, queue_key: str) -> bool:
        """Free a queue key by hand (a client died between taking it and publishing)."""
        naming.validate_name("partition", partition)
        return bool(
            self._control(lambda conn: state_client.release_queue_key(conn, partition, queue_key))
        )

    def queue_key_holder(self, partition: str, queue_key: str) -> str | None:
        """The id of the job holding ``queue_key``, or None when the key is free."""
        naming.validate_name("partition", partition)
        return self._control(lambda conn: state_client.queue_key_holder(conn, partition, queue_key))

    def info(
        self,
        partition: str,
        queues: tuple[str, ...] | None = None,
        retry_levels: tuple[int, ...] | None = None,
    ) -> PartitionInfo:
        """Messages and consumers of each queue and its retry, buried and invalid queues.

        ``queues`` and ``retry_levels`` left out are learned from the status records of
        the partition's running workers (stream ``<p>.workers``); with no worker running,
        they are ``("default",)`` and Roger's default retry levels.
        """
        naming.validate_name("partition", partition)
        return self._control(
            lambda conn: partition_info.info(conn, partition, queues, retry_levels)
        )


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._links.forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)
