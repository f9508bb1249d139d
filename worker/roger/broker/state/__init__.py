"""Partition-wide state seen from a worker (callback-style pika on the worker's connection).

``PartitionState`` (in ``partition``) is what the runtime uses; each of the other modules
holds one concern of it. The pure rules (events, folding, arguments) are in
``roger.core.state``; the blocking client side is ``roger.broker.state_client``.
"""

from roger.broker.state.partition import PartitionState, worker_ident
from roger.broker.state.session import PERSISTENT

__all__ = ["PERSISTENT", "PartitionState", "worker_ident"]
