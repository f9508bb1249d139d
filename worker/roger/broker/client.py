"""``roger.Client``: enqueue jobs and read queue statistics (blocking pika).

One connection and one confirm channel, reused; a dropped connection is re-opened once
per call. ``enqueue`` returns after the broker has confirmed the persistent message.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

import pika
from pika.exceptions import AMQPChannelError, AMQPConnectionError, UnroutableError

from roger.broker import state_client
from roger.broker.state_client import DuplicateJob
from roger.core import naming, topology
from roger.core import state as st
from roger.core.jobs import JobDefinition
from roger.core.message import JOB_NAME_RE, JobMessage, encode, new_job_id, properties

log = logging.getLogger("roger.client")
_RECOVERABLE = (AMQPConnectionError, AMQPChannelError, ConnectionError, OSError)


class EnqueueError(RuntimeError):
    """The job could not be enqueued (bad name, no such queue, broker refusal)."""


@dataclass
class QueueInfo:
    queue: str
    exists: bool
    messages: int = 0  # ready in the main queue
    consumers: int = 0
    retrying: int = 0
    retry: dict[int, int] = field(default_factory=dict)  # per level (seconds)
    buried: int = 0
    invalid: int = 0
    paused: bool = False


@dataclass
class PartitionInfo:
    partition: str
    queues: dict[str, QueueInfo]
    paused: list[str] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)  # live, with running jobs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _definition(job: JobDefinition | str) -> tuple[str, JobDefinition | None]:
    """A job name and, when its module imports here, its definition (for defaults)."""
    if isinstance(job, JobDefinition):
        return job.name, job
    if not isinstance(job, str) or not JOB_NAME_RE.match(job):
        raise EnqueueError(f"job must be a @roger.job function or 'module:function'; got {job!r}")
    module, _, attr = job.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr, None)
    except ImportError:
        found = None
    return job, found if isinstance(found, JobDefinition) else None


class Client:
    def __init__(self, amqp_url: str, name: str | None = None) -> None:
        self.params = pika.URLParameters(amqp_url)
        # How this client shows in RabbitMQ's connection list.
        self.params.client_properties = {"connection_name": name or f"roger-client {os.getpid()}"}
        self._conn: Any = None
        self._ch: Any = None
        self._declared: set[str] = set()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None and self._conn.is_open:
            with contextlib.suppress(*_RECOVERABLE):
                self._conn.close()
        self._conn = self._ch = None

    def _channel(self) -> Any:
        if self._ch is None or not self._ch.is_open:
            if self._conn is None or not self._conn.is_open:
                self._conn = pika.BlockingConnection(self.params)
                self._declared.clear()
            self._ch = self._conn.channel()
            self._ch.confirm_delivery()
        return self._ch

    def _twice(self, fn: Any) -> Any:
        """Run ``fn(channel)``; after a connection failure, reconnect and run it once more."""
        try:
            return fn(self._channel())
        except _RECOVERABLE:
            self.close()
            return fn(self._channel())

    def enqueue(
        self,
        partition: str,
        job: JobDefinition | str,
        args: Any = None,
        *,
        queue: str | None = None,
    ) -> str:
        """Publish a job (persistent, confirmed) and return its id.

        A job with a queue_key first takes the key (atomic test-and-set, confirmed) and
        raises ``roger.DuplicateJob`` while another job holds it.
        """
        naming.validate_name("partition", partition)
        name, definition = _definition(job)
        queue = queue or (definition.queue if definition else "default")
        naming.validate_name("queue", queue)
        queue_key, execution_key = definition.keys(args) if definition else (None, None)
        msg = JobMessage(
            id=new_job_id(),
            name=name,
            args=args,
            queue=queue,
            queue_key=queue_key,
            execution_key=execution_key,
            queued_at=time.time(),
            max_execution_time=definition.max_execution_time if definition else None,
        )
        try:
            body = encode(msg)
        except (TypeError, ValueError) as exc:
            raise EnqueueError(f"args must be JSON-serialisable: {exc}") from None
        props = pika.BasicProperties(**properties(msg, partition))
        target = naming.queue_name(partition, queue)

        def publish(ch: Any) -> None:
            if target not in self._declared:
                ch.queue_declare(target, durable=True, arguments=topology.main_queue_arguments())
                self._declared.add(target)
            ch.basic_publish("", target, body, props, mandatory=True)

        if queue_key is not None:
            taken = self._twice(
                lambda _ch: state_client.take_queue_key(
                    self._conn, partition, queue_key, msg.id, queue
                )
            )
            if not taken:
                raise DuplicateJob(partition, queue_key)
        try:
            self._twice(publish)
        except BaseException as exc:
            if queue_key is not None:  # the job is not there: do not keep its key
                with contextlib.suppress(*_RECOVERABLE):
                    self._twice(
                        lambda _ch: state_client.release_queue_key(
                            self._conn, partition, queue_key, msg.id
                        )
                    )
            if isinstance(exc, UnroutableError):
                raise EnqueueError(f"queue {target} does not exist") from None
            raise
        if queue_key is not None:
            self._hold_key(partition, queue_key, msg.id)
        return msg.id

    def _hold_key(self, partition: str, queue_key: str, job_id: str) -> None:
        """The job is queued: its key, taken for a minute, is held until the job leaves.

        Best effort: the job is published whatever happens here; failing, the key frees
        itself after ``QUEUE_KEY_PENDING_HOLD`` while the job may still be queued."""
        try:
            self._twice(
                lambda _ch: state_client.hold_queue_key(self._conn, partition, queue_key, job_id)
            )
        except (*_RECOVERABLE, TimeoutError) as exc:
            log.warning(
                "job %s is queued but its queue_key %r could not be held (%s): "
                "it frees itself in %.0fs",
                job_id,
                queue_key,
                exc,
                st.QUEUE_KEY_PENDING_HOLD,
            )

    def cancel(self, partition: str, job_id: str) -> None:
        """Cancel a job cluster-wide: skipped if queued, killed if running; ``on_cancel``
        runs once. Remembered for 7 days, also when no worker runs now."""
        naming.validate_name("partition", partition)
        self._twice(lambda _ch: state_client.cancel(self._conn, partition, job_id))

    def pause(self, partition: str, queue: str) -> None:
        """Stop consuming ``queue`` on every worker (running jobs finish); persisted."""
        naming.validate_name("partition", partition)
        self._twice(lambda _ch: state_client.set_paused(self._conn, partition, queue, True))

    def resume(self, partition: str, queue: str) -> None:
        naming.validate_name("partition", partition)
        self._twice(lambda _ch: state_client.set_paused(self._conn, partition, queue, False))

    def release_queue_key(self, partition: str, queue_key: str) -> bool:
        """Free a queue key by hand (a client died between taking it and publishing)."""
        naming.validate_name("partition", partition)
        return bool(
            self._twice(
                lambda _ch: state_client.release_queue_key(self._conn, partition, queue_key)
            )
        )

    def _count(self, name: str) -> tuple[int, int] | None:
        try:
            ok = self._channel().queue_declare(name, passive=True)
        except AMQPChannelError:  # 404: the channel is closed; the next call reopens it
            return None
        return ok.method.message_count, ok.method.consumer_count

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
        records = self._twice(lambda _ch: state_client.status_records(self._conn, partition))
        learned_queues, learned_levels = st.learned_topology(records)
        if queues is None:
            queues = learned_queues or ("default",)
        if retry_levels is None:
            retry_levels = (
                learned_levels if learned_levels is not None else naming.DEFAULT_RETRY_LEVELS
            )
        out: dict[str, QueueInfo] = {}
        for queue in queues:
            main = self._twice(lambda _ch, q=queue: self._count(naming.queue_name(partition, q)))
            info = QueueInfo(queue=queue, exists=main is not None)
            if main is not None:
                info.messages, info.consumers = main
            for s in retry_levels:
                found = self._count(naming.retry_queue_name(partition, queue, s))
                info.retry[s] = found[0] if found else 0
            info.retrying = sum(info.retry.values())
            buried = self._count(naming.buried_queue_name(partition, queue))
            invalid = self._count(naming.invalid_queue_name(partition, queue))
            info.buried = buried[0] if buried else 0
            info.invalid = invalid[0] if invalid else 0
            out[queue] = info
        conn = self._conn
        paused = state_client.paused_queues(conn, partition, queues)
        for name in paused:
            out[name].paused = True
        workers = [st.status_view(w) for w in state_client.live_workers(conn, partition, records)]
        return PartitionInfo(partition=partition, queues=out, paused=paused, workers=workers)
