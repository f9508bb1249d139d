"""The admin calls of ``roger.Client``: buried jobs (``roger.broker.buried_store``),
queued jobs, purge and the broker's partitions (``roger.broker.queues_admin``); see
docs/admin.md. A mixin so that the client's own module stays about enqueueing."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from roger.broker import buried_store, queues_admin, state_client
from roger.broker.buried_store import ReplayReport
from roger.core import buried as bu
from roger.core import naming
from roger.core import worker_status as ws
from roger.core.inventory import PartitionCounts, QueueActivity, management_target

T = TypeVar("T")


class AdminCalls:
    """Needs ``_control`` (a call on the blocking connection), ``_publish_many`` and
    ``addresses_text`` from the class it is mixed into."""

    addresses_text: tuple[str, ...]

    def _control(self, call: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def _publish_many(self, items: list[tuple[str, bytes, Any]]) -> None:
        raise NotImplementedError

    def _buried_queues(self, partition: str, queue: str | None) -> tuple[str, ...]:
        naming.validate_name("partition", partition)
        if queue is not None:
            return (naming.validate_name("queue", queue),)
        records = self._control(lambda conn: state_client.status_records(conn, partition))
        return ws.learned_topology(records)[0] or ("default",)

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
        queues, levels = ws.learned_topology(records)
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
