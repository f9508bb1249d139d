"""The worker's settings: one model for the CLI flags and the ``--config`` file.

The operator renders exactly this file into a ConfigMap, so the file format is a contract:
keys below are the file's keys (YAML or JSON). The AMQP URL is never in the file; it comes
from ``--amqp-url`` or the ``ROGER_AMQP_URL`` environment variable (a Secret in a pod).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from roger.core.hooks import HOOKS, HookName
from roger.core.naming import (
    DEFAULT_BURIED_MAX_LENGTH,
    DEFAULT_RETRY_LEVELS,
    validate_name,
    validate_queue,
)

MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
CLASS_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_MODULE_RE = re.compile(MODULE_PATTERN)
_CLASS_PATH_RE = re.compile(CLASS_PATH_PATTERN)


class ConfigError(ValueError):
    """Settings that cannot run a worker; the message says what to fix."""


@dataclass(frozen=True)
class CallbackSpec:
    """One callback class, the hooks it may receive, and its keyword arguments."""

    path: str  # "package.module:Class"
    hooks: tuple[HookName, ...] = HOOKS
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KubeSettings:
    """Where lifecycle Events go; no namespace means no Events."""

    namespace: str | None = None
    name: str | None = None  # Partition object name, defaults to the partition
    events: tuple[HookName, ...] = HOOKS


@dataclass(frozen=True)
class WorkerConfig:
    partition: str
    queues: Mapping[str, int]  # queue name -> max_workers (0: declared, not consumed)
    jobs: tuple[str, ...]
    callbacks: tuple[CallbackSpec, ...] = ()
    retry_levels: tuple[int, ...] = DEFAULT_RETRY_LEVELS
    buried_max_length: int = DEFAULT_BURIED_MAX_LENGTH
    metrics_port: int | None = None
    shutdown_timeout: float = 10.0
    callback_timeout: float = 30.0
    kube: KubeSettings = KubeSettings()
    # Job processes per queue (its slots are split over them); None: one per usable CPU.
    job_processes: int | None = None
    # The broker's consumer_timeout (seconds) as configured there (RabbitMQ's default):
    # queues whose jobs may outlast it are named at start-up (roger.core.ack_timeout).
    broker_consumer_timeout: float = 1800.0


def split_slots(max_workers: int, processes: int) -> list[int]:
    """A queue's slots spread over at most ``processes`` job processes, as evenly as can be.

    ``split_slots(10, 3) == [4, 3, 3]``; one process per slot when ``processes >= max_workers``.
    """
    count = min(max_workers, max(1, processes))
    if count <= 0:
        return []
    base, extra = divmod(max_workers, count)
    return [base + 1 if i < extra else base for i in range(count)]


def _hooks(value: Any, where: str) -> tuple[HookName, ...]:
    if value is None:
        return HOOKS
    if not isinstance(value, list | tuple) or any(h not in HOOKS for h in value):
        raise ConfigError(f"{where}: hooks must be a list of {', '.join(HOOKS)}; got {value!r}")
    return tuple(value)


def parse_callback(value: Any) -> CallbackSpec:
    if isinstance(value, str):
        value = {"class": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"callback must be 'module:Class' or a mapping; got {value!r}")
    path = value.get("class")
    if not isinstance(path, str) or not _CLASS_PATH_RE.match(path):
        raise ConfigError(f"callback class must look like 'package.module:Class'; got {path!r}")
    config = value.get("config") or {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"callback {path}: config must be a mapping; got {config!r}")
    unknown = set(value) - {"class", "hooks", "config"}
    if unknown:
        raise ConfigError(f"callback {path}: unknown keys {sorted(unknown)}")
    for key, item in config.items():
        if isinstance(item, Mapping) and "valueFrom" in item:
            _env_reference(path, key, item)
    return CallbackSpec(path=path, hooks=_hooks(value.get("hooks"), path), config=dict(config))


_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_reference(path: str, key: str, item: Mapping[str, Any]) -> str:
    """The variable named by ``{valueFrom: {env: NAME}}`` (how the operator passes a value
    from a Secret: the pod gets it as an env var, the file only names the variable)."""
    source = item.get("valueFrom")
    name = source.get("env") if isinstance(source, Mapping) else None
    if set(item) != {"valueFrom"} or set(source or ()) != {"env"} or not isinstance(name, str):
        raise ConfigError(
            f"callback {path}: config {key}: a value from the environment is "
            f"{{valueFrom: {{env: NAME}}}}; got {dict(item)!r}"
        )
    if not _ENV_NAME_RE.match(name):
        raise ConfigError(f"callback {path}: config {key}: {name!r} is not a variable name")
    return name


def resolve_callback_config(config: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """A callback's keyword arguments with every ``{valueFrom: {env: NAME}}`` replaced by the
    variable's value; a missing variable is a ``ConfigError`` naming it (never its value)."""
    out: dict[str, Any] = {}
    for key, item in config.items():
        if isinstance(item, Mapping) and "valueFrom" in item:
            name = _env_reference("callback", key, item)
            if name not in env:
                raise ConfigError(f"config {key}: environment variable {name} is not set")
            out[key] = env[name]
        else:
            out[key] = item
    return out


def parse_retry_levels(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError as exc:
            raise ConfigError(f"retry levels must be integers, e.g. 1,3,5; got {value!r}") from exc
    if (
        not isinstance(value, list | tuple)
        or not value
        or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value)
    ):
        raise ConfigError(f"retry levels must be a non-empty list of seconds >= 1; got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"retry levels must not repeat; got {value!r}")
    return tuple(value)


def parse_queue_spec(spec: str) -> tuple[str, int]:
    """``NAME=MAX`` from the command line."""
    name, sep, max_workers = spec.partition("=")
    if not sep:
        raise ConfigError(f"--queue takes NAME=MAX_WORKERS, e.g. default=10; got {spec!r}")
    try:
        workers = int(max_workers)
    except ValueError as exc:
        raise ConfigError(f"--queue {spec!r}: MAX_WORKERS must be an integer") from exc
    return name, workers


def _queues(value: Any) -> dict[str, int]:
    if isinstance(value, list):  # [{name: default, max_workers: 10}, ...]
        items: dict[str, Any] = {}
        for q in value:
            if not isinstance(q, Mapping) or "name" not in q:
                raise ConfigError(f"each queue needs a name; got {q!r}")
            items[q["name"]] = q.get("max_workers", q.get("maxWorkers", 1))
        value = items
    if not isinstance(value, Mapping) or not value:
        raise ConfigError("at least one queue is required, e.g. --queue default=10")
    queues: dict[str, int] = {}
    for name, workers in value.items():
        validate_name("queue", name)
        if not isinstance(workers, int) or isinstance(workers, bool) or not 0 <= workers <= 10000:
            raise ConfigError(f"queue {name}: max_workers must be an integer 0..10000")
        queues[name] = workers
    return queues


def _modules(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError("at least one jobs module is required (--jobs myapp.jobs)")
    for m in value:
        if not isinstance(m, str) or not _MODULE_RE.match(m):
            raise ConfigError(f"jobs module must be a Python import path; got {m!r}")
    return tuple(value)


_FILE_KEYS = {
    "partition",
    "queues",
    "jobs",
    "callbacks",
    "retry_levels",
    "buried_max_length",
    "metrics_port",
    "shutdown_timeout",
    "callback_timeout",
    "kube",
    "job_processes",
    "broker_consumer_timeout",
}


def parse_config(data: Mapping[str, Any]) -> WorkerConfig:
    """Validate a mapping (config file merged with CLI flags) into a ``WorkerConfig``."""
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}; known: {sorted(_FILE_KEYS)}")
    if "partition" not in data:
        raise ConfigError("a partition is required (--partition NAME)")
    partition = validate_name("partition", data["partition"])
    kube_raw = data.get("kube") or {}
    if not isinstance(kube_raw, Mapping):
        raise ConfigError(f"kube must be a mapping; got {kube_raw!r}")
    kube = KubeSettings(
        namespace=kube_raw.get("namespace") or None,
        name=kube_raw.get("name") or None,
        events=_hooks(kube_raw.get("events"), "kube.events"),
    )
    buried = data.get("buried_max_length", DEFAULT_BURIED_MAX_LENGTH)
    if not isinstance(buried, int) or buried < 1:
        raise ConfigError(f"buried_max_length must be an integer >= 1; got {buried!r}")
    port = data.get("metrics_port")
    if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
        raise ConfigError(f"metrics_port must be 0..65535; got {port!r}")
    processes = data.get("job_processes")
    if processes is not None and (
        not isinstance(processes, int) or isinstance(processes, bool) or not 1 <= processes <= 1024
    ):
        raise ConfigError(f"job_processes must be an integer 1..1024; got {processes!r}")
    timeouts = {}
    for key, default in (
        ("shutdown_timeout", 10.0),
        ("callback_timeout", 30.0),
        ("broker_consumer_timeout", 1800.0),
    ):
        value = data.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{key} must be a number of seconds >= 0; got {value!r}")
        timeouts[key] = float(value)
    queues = _queues(data.get("queues"))
    for queue in queues:
        validate_queue(partition, queue)
    return WorkerConfig(
        partition=partition,
        queues=queues,
        jobs=_modules(data.get("jobs")),
        callbacks=tuple(parse_callback(c) for c in data.get("callbacks") or ()),
        retry_levels=parse_retry_levels(data.get("retry_levels", list(DEFAULT_RETRY_LEVELS))),
        buried_max_length=buried,
        metrics_port=port,
        kube=kube,
        job_processes=processes,
        **timeouts,
    )
