"""Turn a Pod's container into a local process description (pure; no I/O).

On the local cluster kwok marks Pods Running without running anything. To see the system
work end to end we run each worker container's command with its env as a local process:
env from values, Secrets, ConfigMaps and the downward API; ConfigMap volumes written to a
directory of the pod's own, with mount paths in args rewritten to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class UnresolvableEnv(ValueError):
    """An env var or volume that cannot be resolved locally (missing Secret key, ...)."""


@dataclass(frozen=True)
class LocalProcess:
    argv: list[str]
    env: dict[str, str]
    # relative path under the pod's directory -> file content
    files: dict[str, str] = field(default_factory=dict)
    grace_seconds: float = 30.0


FIELD_REFS = {"metadata.name", "metadata.namespace", "spec.nodeName", "status.podIP"}


def _env_value(
    item: Mapping[str, Any],
    pod: Mapping[str, Any],
    secrets: Mapping[str, Mapping[str, str]],
    config_maps: Mapping[str, Mapping[str, str]],
) -> str | None:
    if "value" in item:
        return str(item["value"])
    source = item.get("valueFrom") or {}
    if "secretKeyRef" in source or "configMapKeyRef" in source:
        kind, store = (
            ("secretKeyRef", secrets)
            if "secretKeyRef" in source
            else ("configMapKeyRef", config_maps)
        )
        ref = source[kind]
        value = store.get(ref["name"], {}).get(ref["key"])
        if value is None and not ref.get("optional"):
            raise UnresolvableEnv(
                f"env {item['name']}: {kind} {ref['name']}/{ref['key']} not found"
            )
        return value
    if "fieldRef" in source:
        path = source["fieldRef"]["fieldPath"]
        if path == "status.podIP":
            return "127.0.0.1"  # the local process lives on loopback, never the pod CIDR
        section, _, key = path.partition(".")
        value = (pod.get(section) or {}).get(key)
        if value is None:
            raise UnresolvableEnv(f"env {item['name']}: fieldRef {path} is not supported locally")
        return str(value)
    if "resourceFieldRef" in source:
        return "0"
    return ""


def pod_container(pod: Mapping[str, Any], container_name: str | None) -> Mapping[str, Any]:
    """The container named ``container_name`` (the first one when there is none)."""
    containers = pod["spec"]["containers"]
    return next((c for c in containers if c["name"] == container_name), containers[0])


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    secrets: Mapping[str, Mapping[str, str]],
    config_maps: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """The container's env with values, Secret and ConfigMap keys and the downward API
    resolved (optional keys that are missing are left out)."""
    env: dict[str, str] = {}
    for item in container.get("env") or ():
        value = _env_value(item, pod, secrets, config_maps)
        if value is not None:
            env[item["name"]] = value
    return env


def local_process(
    pod: Mapping[str, Any],
    container_name: str | None,
    secrets: Mapping[str, Mapping[str, str]],
    config_maps: Mapping[str, Mapping[str, str]],
    pod_dir: str,
) -> LocalProcess:
    """Describe how to run one container of ``pod`` locally, its volumes under ``pod_dir``."""
    spec = pod["spec"]
    container = pod_container(pod, container_name)
    env = container_env(pod, container, secrets, config_maps)

    volumes = {v["name"]: v for v in spec.get("volumes") or ()}
    files: dict[str, str] = {}
    rewrites: list[tuple[str, str]] = []
    for mount in container.get("volumeMounts") or ():
        volume = volumes.get(mount["name"], {})
        local_dir = f"{pod_dir}/volumes/{mount['name']}"
        rewrites.append((mount["mountPath"].rstrip("/"), local_dir))
        if "configMap" in volume:
            data = config_maps.get(volume["configMap"]["name"])
            if data is None:
                raise UnresolvableEnv(f"volume {mount['name']}: ConfigMap not found")
            items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for it in items:
                files[f"volumes/{mount['name']}/{it['path']}"] = data[it["key"]]

    def rewrite(arg: str) -> str:
        for mount_path, local_dir in sorted(rewrites, key=lambda r: -len(r[0])):
            if arg == mount_path or arg.startswith(mount_path + "/"):
                return local_dir + arg[len(mount_path) :]
        return arg

    argv = [rewrite(a) for a in [*(container.get("command") or ()), *(container.get("args") or ())]]
    return LocalProcess(
        argv=argv,
        env={k: rewrite(v) for k, v in env.items()},
        files=files,
        grace_seconds=float(spec.get("terminationGracePeriodSeconds") or 30),
    )
