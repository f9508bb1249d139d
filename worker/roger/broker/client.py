"""``roger.Client``: enqueue jobs and read queue statistics; safe to share.

Any number of threads may use one client. Enqueues go through one connection owned by an
I/O thread (``roger.broker.publisher``): concurrent enqueues are pipelined and each call
returns once the broker has confirmed its own persistent message. Rarer calls (cancel,
pause, info, releasing a key) share a second, blocking connection under a lock. After
``fork()`` the child drops both connections without touching them (the parent still owns
the sockets) and opens its own on first use. ``roger.AsyncClient`` awaits the same
futures for asyncio code.

Over 400 lines because it is the one public class users hold: the buried-jobs methods
only delegate to ``roger.broker.buried_store``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import pika
from pika.exceptions import AMQPChannelError, AMQPConnectionError

from roger.broker import buried_store, queues_admin, state_client
from roger.broker import enqueue_flow as flow
from roger.broker.buried_store import ReplayReport
from roger.broker.connect import blocking_connection
from roger.broker.enqueue_flow import EnqueueError, EnqueueResult, JobSpec
from roger.broker.publisher import ConnectionLost, Publish, Publisher
from roger.broker.state_client import DuplicateJob
from roger.core import buried as bu
from roger.core import naming
from roger.core import state as st
from roger.core.amqp_urls import parse_amqp_urls
from roger.core.inventory import PartitionCounts, QueueActivity, management_target
from roger.core.jobs import JobDefinition

__all__ = [
    "Client",
    "DuplicateJob",
    "EnqueueError",
    "EnqueueResult",
    "PartitionInfo",
    "ReplayReport",
]

_RECOVERABLE = (AMQPConnectionError, AMQPChannelError, ConnectionError, OSError)
T = TypeVar("T")
_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


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


class Client:
    def __init__(self, amqp_url: str, name: str | None = None) -> None:
        # One address or several (roger.core.amqp_urls): a connection tries them in order.
        self.addresses_text = parse_amqp_urls(amqp_url)
        self.addresses = [pika.URLParameters(u) for u in self.addresses_text]
        for params in self.addresses:
            # How this client shows in RabbitMQ's connection list.
            params.client_properties = {"connection_name": name or f"roger-client {os.getpid()}"}
        self._reset()
        _CLIENTS.add(self)

    def _reset(self) -> None:
        """Fresh per-process state (also in a forked child: the parent's locks may be held)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()  # the publisher's life
        self._control_lock = threading.RLock()  # the blocking connection
        self._publisher: Publisher | None = None
        self._control_conn: Any = None
        self._pool: ThreadPoolExecutor | None = None

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's connections without a frame on them."""
        publisher, conn = self._publisher, self._control_conn
        self._reset()
        if publisher is not None:
            publisher.abandon_in_child()
        impl = getattr(conn, "_impl", None)
        sock = getattr(getattr(impl, "_transport", None), "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._pid != os.getpid():
            self._forget_parent()
            return
        with self._lock:
            publisher, self._publisher = self._publisher, None
            pool, self._pool = self._pool, None
        if publisher is not None:
            publisher.close()
        if pool is not None:
            pool.shutdown(wait=True)
        with self._control_lock:
            if self._control_conn is not None and self._control_conn.is_open:
                with contextlib.suppress(*_RECOVERABLE):
                    self._control_conn.close()
            self._control_conn = None

    # -- the publishing connection ------------------------------------------------------
    def _live_publisher(self) -> Publisher:
        publisher = self._publisher
        if publisher is not None and publisher.alive:
            return publisher  # the common case takes no lock: 32 threads would queue on it
        if self._pid != os.getpid():
            self._forget_parent()
        with self._lock:
            if self._publisher is None or not self._publisher.alive:
                self._publisher = self._start_publisher()
                # a client dropped without close() must not leave its thread and connection
                weakref.finalize(self, self._publisher.close)
            return self._publisher

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

    def _connected(self) -> bool:
        """A live publishing connection of this process (submitting will not block)."""
        publisher = self._publisher
        return publisher is not None and publisher.alive

    def _submit(self, publishes: list[Publish]) -> None:
        try:
            self._live_publisher().submit(publishes)
        except ConnectionLost:  # it died since we looked: the next one is new
            self._live_publisher().submit(publishes)

    def _dispatch(self, actions: list[flow.Action]) -> list[Future[Any]]:
        """Start every action of one step; publishes go to the I/O thread in one batch."""
        publishes = [a for a in actions if isinstance(a, Publish)]
        if publishes:
            try:
                self._submit(publishes)
            except AMQPConnectionError as exc:  # each job fails (keys taken are released)
                for p in publishes:
                    p.future.set_exception(exc)
        out: list[Future[Any]] = []
        for a in actions:
            if isinstance(a, Publish):
                out.append(a.future)
            else:
                out.append(self._control_pool().submit(self._control, a.call))
        return out

    def _control_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(2, thread_name_prefix="roger-client-control")
            return self._pool

    def _run(self, steps: flow.Steps) -> list[tuple[EnqueueResult, BaseException | None]]:
        """Drive ``steps`` in this thread, waiting on each step's futures."""
        outcomes: list[Any] | None = None
        try:
            while True:
                actions = steps.send(outcomes)  # type: ignore[arg-type]
                futures = self._dispatch(actions)
                if len(futures) > 1:
                    wait(futures)  # one wake-up for the batch, not one per confirm
                outcomes = [_outcome(f) for f in futures]
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # -- the blocking connection --------------------------------------------------------
    @property
    def _conn(self) -> Any:
        """The blocking connection, open (for the ``state_client`` helpers)."""
        if self._pid != os.getpid():
            self._forget_parent()
        with self._control_lock:
            if self._control_conn is None or not self._control_conn.is_open:
                self._control_conn = blocking_connection(self.addresses)
            return self._control_conn

    def _control(self, call: Callable[[Any], T]) -> T:
        """``call(connection)`` under the lock; after a connection failure, once more."""
        with self._control_lock:
            try:
                return call(self._conn)
            except _RECOVERABLE:
                with contextlib.suppress(*_RECOVERABLE):
                    if self._control_conn is not None and self._control_conn.is_open:
                        self._control_conn.close()
                self._control_conn = None
                return call(self._conn)

    # -- enqueue ------------------------------------------------------------------------
    def enqueue(
        self,
        partition: str,
        job: JobDefinition | str,
        args: Any = None,
        *,
        queue: str | None = None,
        id: str | None = None,
    ) -> str:
        """Publish a job (persistent, confirmed) and return its id.

        A job with a queue_key first takes the key (atomic test-and-set, confirmed) and
        raises ``roger.DuplicateJob`` while another job holds it. ``id`` is the caller's
        own job id (Roger's ``Job.create(module, args, id)``), used as given: it is not
        checked for uniqueness (a queue_key is what refuses a second job).
        """
        [(result, exc)] = self._run(flow.steps([flow.prepare(partition, job, args, queue, id)]))
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
        return [result for result, _ in self._run(flow.steps(prepared))] if prepared else []

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
        return self._control(lambda conn: _info(conn, partition, queues, retry_levels))

    # -- buried jobs (roger.broker.buried_store; docs/admin.md) ---------------------------
    def _publish_many(self, items: list[tuple[str, bytes, Any]]) -> None:
        """Publish on the I/O thread, pipelined; return once all are confirmed (or raise)."""
        publishes = [Publish(queue, body, props) for queue, body, props in items]
        if not publishes:
            return
        self._submit(publishes)
        wait([p.future for p in publishes])
        for p in publishes:
            p.future.result()

    def _buried_queues(self, partition: str, queue: str | None) -> tuple[str, ...]:
        naming.validate_name("partition", partition)
        if queue is not None:
            return (naming.validate_name("queue", queue),)
        records = self._control(lambda conn: state_client.status_records(conn, partition))
        return st.learned_topology(records)[0] or ("default",)

    def buried(
        self,
        partition: str,
        *,
        queue: str | None = None,
        job: str | None = None,
        error: str | None = None,
    ) -> list[bu.BuriedJob]:
        """Buried jobs, oldest first, read without consuming or reordering them (the
        queues of the partition's workers when ``queue`` is left out)."""
        chosen = bu.Selection(job=job, error=error)
        out: list[bu.BuriedJob] = []
        for q in self._buried_queues(partition, queue):
            found = self._control(
                functools.partial(
                    buried_store.jobs, partition=partition, queue=q, publish=self._publish_many
                )
            )
            out.extend(bu.select(found, chosen))
        return out

    def buried_job(self, partition: str, ident: str, queue: str | None = None) -> bu.BuriedJob:
        """One buried job by job id (its newest burial) or burial id; KeyError if none."""
        for q in self._buried_queues(partition, queue):
            found = self._control(
                functools.partial(
                    buried_store.jobs, partition=partition, queue=q, publish=self._publish_many
                )
            )
            job = bu.find(found, ident)
            if job is not None:
                return job
        raise KeyError(ident)

    def replay_buried(
        self,
        partition: str,
        *,
        ids: Sequence[str] = (),
        all_jobs: bool = False,
        queue: str | None = None,
        job: str | None = None,
        error: str | None = None,
        dry_run: bool = False,
        force: bool = False,
        max_replays: int = bu.MAX_REPLAYS,
    ) -> ReplayReport:
        """Put buried jobs back as fresh attempts (``ids`` or ``all_jobs``, filtered); a job
        replayed ``max_replays`` times already is refused unless ``force``."""
        chosen = bu.Selection(tuple(ids), None, job, error, all_jobs)
        report = ReplayReport()
        for q in self._buried_queues(partition, queue):
            one = self._control(
                functools.partial(
                    buried_store.replay,
                    publish=self._publish_many,
                    partition=partition,
                    queue=q,
                    selection=chosen,
                    max_replays=max_replays,
                    force=force,
                    dry_run=dry_run,
                )
            )
            report.replayed += one.replayed
            report.refused += one.refused
            report.recovered += one.recovered
        return report

    def drop_buried(
        self,
        partition: str,
        *,
        ids: Sequence[str] = (),
        all_jobs: bool = False,
        queue: str | None = None,
        job: str | None = None,
        error: str | None = None,
    ) -> list[bu.BuriedJob]:
        """Remove buried jobs for good (``ids`` or ``all_jobs``, filtered)."""
        chosen = bu.Selection(tuple(ids), None, job, error, all_jobs)
        out: list[bu.BuriedJob] = []
        for q in self._buried_queues(partition, queue):
            out += self._control(
                functools.partial(
                    buried_store.drop,
                    partition=partition,
                    queue=q,
                    selection=chosen,
                    publish=self._publish_many,
                )
            )
        return out

    # -- queued jobs, purge, partitions (roger.broker.queues_admin; docs/admin.md) --------
    def _learned(self, partition: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        records = self._control(lambda conn: state_client.status_records(conn, partition))
        queues, levels = st.learned_topology(records)
        return queues or ("default",), levels or naming.DEFAULT_RETRY_LEVELS

    def queued(
        self, partition: str, queue: str | None = None, limit: int = 20
    ) -> dict[str, list[dict[str, Any]]]:
        """Up to ``limit`` jobs at the head of each queue, left in place (each one looked
        at counts as a delivery: see docs/admin.md)."""
        naming.validate_name("partition", partition)
        queues = (naming.validate_name("queue", queue),) if queue else self._learned(partition)[0]
        return {
            q: self._control(
                functools.partial(
                    queues_admin.peek, name=naming.queue_name(partition, q), limit=limit
                )
            )
            for q in queues
        }

    def purge_counts(self, partition: str, queue: str) -> dict[str, int]:
        """What ``purge`` would remove: ready jobs per queue (main and retry queues)."""
        names = self._purge_names(partition, queue)
        counts = {n: self._control(functools.partial(queues_admin.count, name=n)) for n in names}
        return {n: c for n, c in counts.items() if c is not None}

    def _purge_names(self, partition: str, queue: str) -> list[str]:
        naming.validate_name("partition", partition)
        naming.validate_name("queue", queue)
        return queues_admin.queue_family(partition, queue, self._learned(partition)[1])

    def purge(self, partition: str, queue: str, *, buried: bool = False) -> dict[str, int]:
        """Remove every ready job of ``queue`` and its retry queues (and, with ``buried``,
        every buried job); how many each queue lost. Running jobs are not touched."""
        names = self._purge_names(partition, queue)
        out = self._control(lambda conn: queues_admin.purge(conn, names))
        if buried:
            dropped = self.drop_buried(partition, all_jobs=True, queue=queue)
            out[naming.buried_log_name(partition, queue)] = len(dropped)
        return out

    def partitions(self, management_url: str | None = None) -> list[PartitionCounts]:
        """Every partition the broker holds, with queues and counts (management API)."""
        target = management_target(self.addresses_text[0], management_url)
        return queues_admin.broker_partitions(target)

    def activity(self, management_url: str | None = None) -> dict[str, QueueActivity]:
        """Per queue of the vhost: unacked messages and publish/ack rates (management API)."""
        target = management_target(self.addresses_text[0], management_url)
        return queues_admin.broker_activity(target)


def _outcome(future: Future[Any]) -> Any:
    """A finished action's result, or the exception it raised (as a value)."""
    try:
        return future.result()
    except Exception as exc:
        return exc


def _count(conn: Any, name: str) -> tuple[int, int] | None:
    """Messages and consumers of a queue, None if it does not exist (a passive declare)."""
    ch = conn.channel()
    try:
        ok = ch.queue_declare(name, passive=True)
    except AMQPChannelError:  # 404 closed the channel
        return None
    finally:
        if ch.is_open:
            ch.close()
    return ok.method.message_count, ok.method.consumer_count


def _info(
    conn: Any,
    partition: str,
    queues: Sequence[str] | None,
    retry_levels: tuple[int, ...] | None,
) -> PartitionInfo:
    records = state_client.status_records(conn, partition)
    learned_queues, learned_levels = st.learned_topology(records)
    if queues is None:
        queues = learned_queues or ("default",)
    if retry_levels is None:
        retry_levels = learned_levels if learned_levels is not None else naming.DEFAULT_RETRY_LEVELS
    out: dict[str, QueueInfo] = {}
    for queue in queues:
        main = _count(conn, naming.queue_name(partition, queue))
        info = QueueInfo(queue=queue, exists=main is not None)
        if main is not None:
            info.messages, info.consumers = main
        for s in retry_levels:
            found = _count(conn, naming.retry_queue_name(partition, queue, s))
            info.retry[s] = found[0] if found else 0
        info.retrying = sum(info.retry.values())
        buried = _count(conn, naming.buried_queue_name(partition, queue))
        invalid = _count(conn, naming.invalid_queue_name(partition, queue))
        info.buried = buried[0] if buried else 0
        info.invalid = invalid[0] if invalid else 0
        out[queue] = info
    paused = state_client.paused_queues(conn, partition, queues)
    for name in paused:
        out[name].paused = True
    workers = [st.status_view(w) for w in state_client.live_workers(conn, partition, records)]
    return PartitionInfo(partition=partition, queues=out, paused=paused, workers=workers)


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)
