"""Pause/resume of a partition queue, stored in RabbitMQ by the worker's own client.

The worker owns where paused state lives (``roger.Client(url).pause(partition, queue)`` /
``.resume(...)``, read back with ``.info(...).paused``; running workers watch it). Every
call goes through this module so the operator follows the worker's storage, whatever it is.
"""

from __future__ import annotations

from collections.abc import Iterable

from roger.broker.client import Client


def set_paused(url: str, partition: str, queue: str, paused: bool) -> None:
    """Pause or resume one queue."""
    with Client(url) as client:
        if paused:
            client.pause(partition, queue)
        else:
            client.resume(partition, queue)


def paused_queues(url: str, partition: str, queues: Iterable[str]) -> set[str]:
    """The queues among ``queues`` that are paused in the broker."""
    with Client(url) as client:
        info = client.info(partition, queues=tuple(queues), retry_levels=())
        return set(info.paused)
