"""Writing the ``CallbackRejected`` Event (``roger.core.rejections``) before the worker exits.

Best effort and bounded (the API client's short timeouts, no retries): a worker that cannot
reach the API server still exits with its error on stderr.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from roger.core import rejections
from roger.core.config import WorkerConfig
from roger.core.kube_events import Regarding
from roger.extras import MissingExtra, require_extra
from roger.kube import instance, kube_namespace
from roger.kube.client import ApiFailure, EventsApi, KubeEventsApi

log = logging.getLogger("roger.kube")


def report_callback_rejected(
    config: WorkerConfig,
    message: str,
    config_text: str | None,
    *,
    env: Mapping[str, str] | None = None,
    api: EventsApi | None = None,
) -> bool:
    """Write (or refresh) the Event about the worker's Partition; whether it was written."""
    env = os.environ if env is None else env
    namespace = kube_namespace(config, env)
    if not namespace:
        return False
    name = config.kube.name or env.get("ROGER_KUBE_NAME") or config.partition
    if api is None:
        try:
            require_extra("events", "Kubernetes Events")
            api = KubeEventsApi.from_environment()
        except (MissingExtra, Exception) as exc:  # no extra, no credentials
            log.warning("cannot report the rejected callback to Kubernetes: %s", exc)
            return False
    try:
        uid = (api.get_partition(namespace, name).get("metadata") or {}).get("uid")
        digest = rejections.config_digest(config_text)
        body = rejections.rejection_event(
            Regarding(namespace, name, uid), message, digest, instance(env), time.time()
        )
        try:
            api.create_event(namespace, body)
        except ApiFailure as exc:
            if exc.status != 409:
                raise
            patch = rejections.repeat_patch(message, time.time())
            api.patch_event(namespace, body["metadata"]["name"], patch)
        return True
    except ApiFailure as exc:
        log.warning("cannot report the rejected callback to Kubernetes: %s", exc)
        return False
    finally:
        api.close()
