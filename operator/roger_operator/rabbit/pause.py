"""Pause/resume of a partition queue, stored in RabbitMQ by the worker's own client.

The worker owns where paused state lives (``roger.Client(url).pause(partition, queue)`` /
``.resume(...)``, read back with ``.info(...).paused``; running workers watch it). Every
call goes through this module so the operator follows the worker's storage, whatever it is.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)
_warned = False


def _client(url: str) -> Any | None:
    global _warned
    try:
        roger = importlib.import_module("roger")
        client_cls = getattr(roger, "Client", None)
    except ImportError:
        client_cls = None
    if client_cls is None or not hasattr(client_cls, "pause"):
        if not _warned:
            log.warning("roger.Client has no pause/resume; spec.queues[].paused is not applied")
            _warned = True
        return None
    return client_cls(url)


def _close(client: Any) -> None:
    close = getattr(client, "close", None)
    if callable(close):
        close()


def set_paused(url: str, partition: str, queue: str, paused: bool) -> bool:
    """Pause or resume one queue; False when the worker package cannot do it."""
    client = _client(url)
    if client is None:
        return False
    try:
        if paused:
            client.pause(partition, queue)
        else:
            client.resume(partition, queue)
    finally:
        _close(client)
    return True


def paused_queues(url: str, partition: str, queues: Iterable[str]) -> set[str] | None:
    """The queues paused in the broker, or None when that cannot be read."""
    client = _client(url)
    if client is None or not hasattr(client, "info"):
        return None
    try:
        info = client.info(partition, queues=tuple(queues), retry_levels=())
        return set(getattr(info, "paused", ()) or ())
    finally:
        _close(client)
