"""The worker config file (``roger worker --config``) rendered from a Partition.

The output is exactly what ``roger.core.config.parse_config`` accepts (unit tests check it);
the AMQP URL is never part of it: pods get it from the Secret by reference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import yaml

from roger_operator.builders.callback_secrets import worker_config
from roger_operator.builders.model import CallbackResource, PartitionSpec


def render_config(spec: PartitionSpec, callbacks: Sequence[CallbackResource]) -> dict[str, Any]:
    """The config mapping; ``callbacks`` are the resolved ones, in ``spec.callbacks`` order."""
    config: dict[str, Any] = {
        "partition": spec.partition_id,
        "queues": {q.name: q.max_workers for q in spec.queues},
        "jobs": list(spec.jobs),
        "callbacks": [
            {"class": cb.module, "hooks": list(cb.hooks), "config": worker_config(i, cb)}
            for i, cb in enumerate(callbacks)
        ],
        "retry_levels": list(spec.retry_levels),
        "buried_max_length": spec.buried_max_length,
        "metrics_port": spec.metrics_port,
        "shutdown_timeout": spec.shutdown_timeout,
        "callback_timeout": spec.callback_timeout,
        "kube": {
            "namespace": spec.namespace,
            "name": spec.name,
            "events": list(spec.event_hooks),
        },
    }
    if spec.job_processes is not None:  # absent: the text (and rollout hash) stays as before
        config["job_processes"] = spec.job_processes
    if spec.broker_consumer_timeout is not None:  # likewise
        config["broker_consumer_timeout"] = spec.broker_consumer_timeout
    return config


def config_text(config: dict[str, Any]) -> str:
    """YAML for the ConfigMap; key order kept so the text (and its hash) is stable."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def config_hash(text: str, extra: Any = None) -> str:
    """A short digest of what the pods run; a change rolls the Deployment."""
    digest = hashlib.sha256(text.encode())
    if extra is not None:
        digest.update(json.dumps(extra, sort_keys=True).encode())
    return digest.hexdigest()[:16]
