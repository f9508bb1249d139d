"""The Partition and Callback resources as plain values, with the CRD's defaults applied.

The API server already applies the CRD defaults; they are applied again here so that the
builders give the same answer for an object that was never stored (unit tests, dry runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from roger.core.hooks import HOOKS, HookName
from roger.core.naming import DEFAULT_BURIED_MAX_LENGTH, DEFAULT_RETRY_LEVELS
from roger.core.partition_ref import PartitionRefError, broker_ref

GROUP: Final = "roger.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
PARTITION_KIND: Final = "Partition"
CALLBACK_KIND: Final = "Callback"
PLURAL: Final = "partitions"
CALLBACK_PLURAL: Final = "callbacks"

MANAGER: Final = "roger-operator"
CHILD_PREFIX: Final = "roger-"
MAX_PARTITION_NAME: Final = 63 - len(CHILD_PREFIX)  # 57, enforced by the CRD too

CONFIG_DIR: Final = "/etc/roger"
CONFIG_FILE: Final = "worker.yaml"
CONFIG_PATH: Final = f"{CONFIG_DIR}/{CONFIG_FILE}"
AMQP_URL_ENV: Final = "ROGER_AMQP_URL"
LOG_FORMAT_ENV: Final = "ROGER_LOG_FORMAT"  # roger --log-format
DEFAULT_METRICS_PORT: Final = 9100
DEFAULT_SHUTDOWN_TIMEOUT: Final = 10.0
DEFAULT_CALLBACK_TIMEOUT: Final = 30.0
DEFAULT_RUN_AS_USER: Final = 65532
GRACE_MARGIN_SECONDS: Final = 20

# Labels and annotations.
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_VERSION: Final = "app.kubernetes.io/version"
LABEL_PARTITION: Final = "roger.dev/partition"
WORKER_APP: Final = "roger-worker"
CONFIG_HASH_ANNOTATION: Final = "roger.dev/config-hash"
CONFIG_HASH_LABEL: Final = CONFIG_HASH_ANNOTATION  # on each config's ConfigMap
MANAGED_SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGER}"


class SpecError(ValueError):
    """A Partition/Callback the API server let through but that cannot be built."""


@dataclass(frozen=True)
class QueueSpec:
    name: str
    max_workers: int = 1
    paused: bool = False


@dataclass(frozen=True)
class CallbackResource:
    """A resolved Callback object."""

    name: str
    module: str  # package.module:Class
    hooks: tuple[HookName, ...] = HOOKS
    config: Mapping[str, Any] = field(default_factory=dict)
    resource_version: str = ""


@dataclass(frozen=True)
class PartitionSpec:
    name: str
    namespace: str
    uid: str
    generation: int
    partition_id: str
    secret_name: str
    secret_key: str
    image: str
    replicas: int
    jobs: tuple[str, ...]
    queues: tuple[QueueSpec, ...]
    retry_levels: tuple[int, ...]
    buried_max_length: int
    callbacks: tuple[str, ...]
    event_hooks: tuple[HookName, ...]
    metrics_port: int
    shutdown_timeout: float
    callback_timeout: float
    grace_period: int
    image_pull_policy: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    env: tuple[Mapping[str, Any], ...] = ()
    pod_template: Mapping[str, Any] = field(default_factory=dict)
    job_processes: int | None = None  # None: the worker's default (one per usable CPU)
    broker_consumer_timeout: float | None = None  # None: the worker's default (RabbitMQ's)
    log_format: str = "text"  # or "json"

    @property
    def child_name(self) -> str:
        return child_name(self.name)


def child_name(partition_name: str) -> str:
    """The name of every child object (one per kind): ``roger-<partition>``."""
    return f"{CHILD_PREFIX}{partition_name}"


def selector_labels(partition_name: str) -> dict[str, str]:
    """The Deployment's (immutable) pod selector."""
    return {LABEL_NAME: WORKER_APP, LABEL_INSTANCE: partition_name}


def selector_string(partition_name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(partition_name).items()))


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must be an object")
    return value


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def parse_partition(obj: Mapping[str, Any]) -> PartitionSpec:
    """A Partition object (as the API returns it) -> ``PartitionSpec`` with defaults."""
    meta = _mapping(obj.get("metadata"), "metadata")
    spec = _mapping(obj.get("spec"), "spec")
    name = str(meta.get("name", ""))
    if not name or len(name) > MAX_PARTITION_NAME:
        raise SpecError(f"Partition name must be 1-{MAX_PARTITION_NAME} characters")
    _mapping(_mapping(spec.get("amqp"), "spec.amqp").get("secretRef"), "secretRef")
    try:
        ref = broker_ref(obj)  # the same answer as `kubectl roger` finds
    except PartitionRefError as exc:
        raise SpecError(str(exc)) from None
    worker = _mapping(spec.get("worker"), "spec.worker")
    if not worker.get("image"):
        raise SpecError("spec.worker.image is required")
    queues = tuple(
        QueueSpec(
            name=str(q["name"]),
            max_workers=int(q.get("maxWorkers", 1)),
            paused=bool(q.get("paused", False)),
        )
        for q in spec.get("queues") or ()
    )
    if not queues:
        raise SpecError("spec.queues needs at least one queue")
    retry = _mapping(spec.get("retry"), "spec.retry")
    events = spec.get("events")
    hooks: tuple[HookName, ...] = HOOKS
    if isinstance(events, Mapping) and events.get("hooks") is not None:
        hooks = tuple(h for h in HOOKS if h in events["hooks"])
    shutdown = float(worker.get("shutdownTimeout", DEFAULT_SHUTDOWN_TIMEOUT))
    grace = worker.get("terminationGracePeriodSeconds")
    return PartitionSpec(
        name=name,
        namespace=str(meta.get("namespace", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0) or 0),
        partition_id=ref.partition_id,
        secret_name=ref.secret_name,
        secret_key=ref.secret_key,
        image=str(worker["image"]),
        replicas=int(worker.get("replicas", 1)),
        jobs=tuple(str(j) for j in spec.get("jobs") or ()),
        queues=queues,
        retry_levels=tuple(int(v) for v in retry.get("levels") or DEFAULT_RETRY_LEVELS),
        buried_max_length=int(retry.get("buriedMaxLength", DEFAULT_BURIED_MAX_LENGTH)),
        callbacks=tuple(str(c) for c in spec.get("callbacks") or ()),
        event_hooks=hooks,
        metrics_port=int(worker.get("metricsPort", DEFAULT_METRICS_PORT)),
        shutdown_timeout=shutdown,
        callback_timeout=float(worker.get("callbackTimeout", DEFAULT_CALLBACK_TIMEOUT)),
        grace_period=int(grace) if grace is not None else int(shutdown) + GRACE_MARGIN_SECONDS,
        image_pull_policy=worker.get("imagePullPolicy"),
        resources=_mapping(worker.get("resources"), "spec.worker.resources"),
        env=tuple(worker.get("env") or ()),
        pod_template=_mapping(worker.get("podTemplate"), "spec.worker.podTemplate"),
        job_processes=int(worker["jobProcesses"]) if worker.get("jobProcesses") else None,
        broker_consumer_timeout=_optional_float(worker.get("brokerConsumerTimeout")),
        log_format=str(worker.get("logFormat") or "text"),
    )


def parse_callback(obj: Mapping[str, Any]) -> CallbackResource:
    meta = _mapping(obj.get("metadata"), "metadata")
    spec = _mapping(obj.get("spec"), "spec")
    hooks = spec.get("hooks")
    return CallbackResource(
        name=str(meta.get("name", "")),
        module=str(spec.get("module", "")),
        hooks=HOOKS if hooks is None else tuple(h for h in HOOKS if h in hooks),
        config=dict(_mapping(spec.get("config"), "spec.config")),
        resource_version=str(meta.get("resourceVersion", "")),
    )


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether ``obj`` is controlled by the object with ``uid`` (its owner reference)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)
