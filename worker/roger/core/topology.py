"""Queue arguments of a partition queue and its retry, buried and invalid queues.

Pure, so the worker, the client and the operator declare identical queues (RabbitMQ
refuses a re-declare whose arguments differ).
"""

from __future__ import annotations

from typing import Any

from roger.core import naming

QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


def main_queue_arguments() -> dict[str, Any]:
    return dict(QUORUM)


def retry_queue_arguments(partition: str, queue: str, seconds: int) -> dict[str, Any]:
    """Messages wait ``seconds`` then are dead-lettered back to the main queue.

    ``at-least-once`` dead-lettering (RabbitMQ >= 3.10, needs ``reject-publish``) keeps a
    message in the retry queue until the main queue has confirmed it.
    """
    return {
        **QUORUM,
        "x-message-ttl": seconds * 1000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": naming.queue_name(partition, queue),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def buried_queue_arguments() -> dict[str, Any]:
    """No length bound among the arguments: RabbitMQ cannot change an argument in place
    (a re-declare with another ``x-max-length`` is refused), so the bound of ``.buried``
    is the worker's own (``Outbox.keep_bound``) and, under the operator, a policy that can
    change (``roger_operator.builders.queue_plan``). Queues declared by earlier versions
    carry ``x-max-length``: ``keeps_its_arguments`` lets the worker use them as they are."""
    return dict(QUORUM)


def keeps_its_arguments(partition: str, queue: str) -> set[str]:
    """Queues the worker uses as they exist (passive declare) and declares only when they
    do not: ``.buried``, which may carry a length bound from an earlier version."""
    return {naming.buried_queue_name(partition, queue)}


BURIED_LOG_MAX_AGE = "30D"
BURIED_LOG_MAX_BYTES = 256 * 1024 * 1024
BURIED_LOG_SEGMENT_BYTES = 8 * 1024 * 1024


def buried_log_arguments() -> dict[str, Any]:
    """A stream kept 30 days or 256 MiB (whole 8 MiB segments go, oldest first)."""
    return {
        "x-queue-type": "stream",
        "x-max-age": BURIED_LOG_MAX_AGE,
        "x-max-length-bytes": BURIED_LOG_MAX_BYTES,
        "x-stream-max-segment-size-bytes": BURIED_LOG_SEGMENT_BYTES,
    }


def replay_staging_arguments(partition: str, queue: str) -> dict[str, Any]:
    """Rejected (``nack`` without requeue) by the replayer, a message is moved by the
    broker to the job's queue, kept here until that queue confirmed it (at-least-once
    dead-lettering: the same guarantee as the retry queues)."""
    return {
        **QUORUM,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": naming.queue_name(partition, queue),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def invalid_queue_arguments() -> dict[str, Any]:
    return dict(QUORUM)


def declarations(
    partition: str, queue: str, retry_levels: tuple[int, ...]
) -> list[tuple[str, dict[str, Any]]]:
    """Every (queue name, arguments) of one partition queue, main queue first."""
    return [
        (naming.queue_name(partition, queue), main_queue_arguments()),
        *(
            (
                naming.retry_queue_name(partition, queue, s),
                retry_queue_arguments(partition, queue, s),
            )
            for s in retry_levels
        ),
        (naming.buried_queue_name(partition, queue), buried_queue_arguments()),
        (naming.invalid_queue_name(partition, queue), invalid_queue_arguments()),
    ]
