"""Kubernetes I/O for the worker: lifecycle hooks as Events about the worker's Partition.

``observer_from_config`` is the one entry point the worker CLI uses: it returns a started
``KubeEventsObserver`` or ``None`` (no namespace, or no credentials), saying so once.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from roger.core.config import WorkerConfig
from roger.extras import MissingExtra, require_extra
from roger.kube.client import ApiFailure, EventsApi, KubeEventsApi
from roger.kube.metrics import kube_event_metrics
from roger.kube.observer import KubeEventsObserver

__all__ = [
    "ApiFailure",
    "EventsApi",
    "KubeEventsApi",
    "KubeEventsObserver",
    "kube_namespace",
    "observer_from_config",
]

log = logging.getLogger("roger.kube")


def kube_namespace(config: WorkerConfig, env: Mapping[str, str] | None = None) -> str | None:
    """--kube-namespace / kube.namespace, else the pod's (ROGER_KUBE_NAMESPACE, POD_NAMESPACE)."""
    env = os.environ if env is None else env
    return (
        config.kube.namespace or env.get("ROGER_KUBE_NAMESPACE") or env.get("POD_NAMESPACE") or None
    )


def instance(env: Mapping[str, str] | None = None) -> str:
    """The reporting instance: the pod's name (downward API), else the host name."""
    env = os.environ if env is None else env
    return env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname()


def observer_from_config(
    config: WorkerConfig,
    *,
    env: Mapping[str, str] | None = None,
    api: EventsApi | None = None,
    registry: CollectorRegistry | None = None,
    kubeconfig: str | None = None,
) -> KubeEventsObserver | None:
    env = os.environ if env is None else env
    namespace = kube_namespace(config, env)
    if not namespace:
        log.info(
            "Kubernetes Events off: no namespace (set --kube-namespace, kube.namespace in "
            "--config, or ROGER_KUBE_NAMESPACE/POD_NAMESPACE)"
        )
        return None
    if not config.kube.events:
        log.info("Kubernetes Events off: kube.events is empty")
        return None
    name = config.kube.name or env.get("ROGER_KUBE_NAME") or config.partition
    if api is None:
        try:
            require_extra("events", "Kubernetes Events")
        except MissingExtra as exc:
            log.warning("Kubernetes Events off: %s", exc)
            return None
        try:
            api = KubeEventsApi.from_environment(kubeconfig)
        except Exception as exc:  # no in-cluster account and no usable kubeconfig
            log.warning("Kubernetes Events off: no Kubernetes credentials (%s)", exc)
            return None
    log.info(
        "Kubernetes Events on: %s about Partition %s/%s",
        ",".join(config.kube.events),
        namespace,
        name,
    )
    return KubeEventsObserver(
        api,
        namespace=namespace,
        name=name,
        partition=config.partition,
        instance=instance(env),
        hooks=config.kube.events,
        metrics=kube_event_metrics(registry),
    )
