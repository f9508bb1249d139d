"""Roger: a RabbitMQ-backed multi-tenant job processor (a Python port of Roger for Elixir).

``Client``, ``AsyncClient`` and the enqueue results are loaded lazily so that job
processes, which import this package, do not pay for pika.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from roger.core.hooks import Callback
from roger.core.jobs import JobDefinition, job
from roger.core.message import Job

if TYPE_CHECKING:
    from roger.broker.aio import AsyncClient
    from roger.broker.client import Client
    from roger.broker.enqueue_flow import EnqueueError, EnqueueResult
    from roger.broker.state_client import DuplicateJob

__all__ = [
    "AsyncClient",
    "Callback",
    "Client",
    "DuplicateJob",
    "EnqueueError",
    "EnqueueResult",
    "Job",
    "JobDefinition",
    "__version__",
    "job",
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from roger.broker.client import Client

        return Client
    if name == "AsyncClient":
        from roger.broker.aio import AsyncClient

        return AsyncClient
    if name in ("EnqueueError", "EnqueueResult"):
        from roger.broker import enqueue_flow

        return getattr(enqueue_flow, name)
    if name == "DuplicateJob":
        from roger.broker.state_client import DuplicateJob

        return DuplicateJob
    if name == "__version__":
        from roger.version import package_version

        return package_version()
    raise AttributeError(name)
