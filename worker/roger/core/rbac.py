"""The least privilege a worker pod needs: emit Events about its Partition.

One source for the worker Role: the operator builds each partition's Role from these
rules, and the chart grants the operator (at least) these so it may bind them.

The worker writes core/v1 Events (``roger.kube``: a count that grows by PATCH, as
client-go's EventRecorder does), so it needs create/patch on core ``events`` only, plus
``get`` on its Partition to learn the uid the Events refer to.
"""

from __future__ import annotations

from typing import Any, Final

WORKER_RULES: Final[tuple[dict[str, Any], ...]] = (
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["roger.dev"], "resources": ["partitions"], "verbs": ["get"]},
)
