"""Opening a blocking connection, with every failure to open as pika's public error.

pika's ``BlockingConnection`` reports some failures to open with exception types from
``pika.adapters.utils.connection_workflow`` (a handshake that times out against a broker
that accepts and never answers raises ``AMQPConnectorStackTimeout``, which is not an
``AMQPConnectionError``). Callers handle ``AMQPConnectionError``; this is the one place
that makes that true.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pika
from pika.adapters.utils.connection_workflow import AMQPConnectorException
from pika.exceptions import AMQPConnectionError


def blocking_connection(params: pika.ConnectionParameters | Sequence[Any]) -> Any:
    """``pika.BlockingConnection(params)``; any failure to open is an ``AMQPConnectionError``."""
    try:
        return pika.BlockingConnection(params)
    except AMQPConnectorException as exc:
        raise AMQPConnectionError(f"{type(exc).__name__}: {exc}") from exc
