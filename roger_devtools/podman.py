"""Turn a Pod's container into a ``podman run`` command line (pure; no I/O).

The image tests run our images with exactly what the operator puts on a worker Pod: the
Pod comes from the operator's own builders, and this module translates every setting it
uses (user and group, read-only root filesystem, capabilities, privilege escalation,
seccomp, resource limits, ConfigMap and emptyDir volumes, command, env). A setting it does
not know raises ``Untranslatable``, so a new field in the operator's Pods fails the image
tests instead of being silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from roger_devtools.podspec import container_env, pod_container


class Untranslatable(ValueError):
    """A Pod setting with no podman equivalent here (the test must learn it first)."""


# Where a kubelet projects the Pod's ServiceAccount token, CA and namespace.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class ServiceAccount:
    """What a kubelet gives a Pod for in-cluster config: a token of its ServiceAccount, the
    cluster's CA and the API server's address (KUBERNETES_SERVICE_HOST/PORT)."""

    token: str
    ca_crt: str
    namespace: str
    host: str
    port: int


@dataclass(frozen=True)
class PodmanRun:
    argv: list[str]  # podman run ... IMAGE COMMAND...
    # relative path under the pod's directory -> file content (ConfigMap volumes)
    files: dict[str, str] = field(default_factory=dict)


# Settings a kubelet applies that have nothing to translate for podman here.
_IGNORED_CONTAINER_KEYS = {
    "name",
    "image",
    "imagePullPolicy",
    "ports",  # the tests use host networking or publish ports themselves
    "startupProbe",
    "livenessProbe",
    "readinessProbe",
    "terminationMessagePolicy",
    "terminationMessagePath",
}
_POD_SECURITY_KEYS = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"}
_CONTAINER_SECURITY_KEYS = {
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "capabilities",
    "seccompProfile",
}
_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
}


def memory_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity ("64Mi", "1G", 1048576) in bytes."""
    match = re.fullmatch(r"(\d+)([kMG]i?|)", str(quantity))
    if not match or match.group(2) not in _SUFFIXES:
        raise Untranslatable(f"memory quantity {quantity!r}")
    return int(match.group(1)) * _SUFFIXES[match.group(2)]


def cpus(quantity: str | int | float) -> str:
    """A Kubernetes CPU quantity ("500m", 2) as podman's --cpus."""
    text = str(quantity)
    return f"{int(text[:-1]) / 1000:g}" if text.endswith("m") else f"{float(text):g}"


def _seccomp(profile: Mapping[str, Any] | None) -> list[str]:
    kind = (profile or {}).get("type", "RuntimeDefault")
    if kind == "RuntimeDefault":
        return []  # podman's default profile is the runtime's default
    if kind == "Unconfined":
        return ["--security-opt", "seccomp=unconfined"]
    raise Untranslatable(f"seccompProfile {kind}")


def _security(pod_sc: Mapping[str, Any], sc: Mapping[str, Any]) -> list[str]:
    unknown = (set(pod_sc) - _POD_SECURITY_KEYS) | (set(sc) - _CONTAINER_SECURITY_KEYS)
    if unknown:
        raise Untranslatable(f"securityContext fields {sorted(unknown)}")
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    if non_root and (user is None or int(user) == 0):
        raise Untranslatable("runAsNonRoot needs a numeric non-zero runAsUser here")
    args: list[str] = []
    if user is not None:
        args += ["--user", f"{int(user)}:{int(group)}" if group is not None else str(int(user))]
    if pod_sc.get("fsGroup") is not None:
        args += ["--group-add", str(int(pod_sc["fsGroup"]))]
    if sc.get("readOnlyRootFilesystem"):
        # podman adds writable tmpfs on /tmp, /run and /var/tmp to --read-only; a kubelet
        # does not: only the Pod's volumes are writable.
        args += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    caps = sc.get("capabilities") or {}
    for cap in caps.get("drop") or ():
        args += ["--cap-drop", str(cap)]
    for cap in caps.get("add") or ():
        args += ["--cap-add", str(cap)]
    args += _seccomp(sc.get("seccompProfile", pod_sc.get("seccompProfile")))
    return args


def _resources(resources: Mapping[str, Any]) -> list[str]:
    limits = resources.get("limits") or {}
    unknown = set(limits) - {"memory", "cpu"}
    if unknown:
        raise Untranslatable(f"resource limits {sorted(unknown)}")
    args: list[str] = []
    if "memory" in limits:
        size = memory_bytes(limits["memory"])
        args += ["--memory", str(size), "--memory-swap", str(size)]  # no swap, as a kubelet
    if "cpu" in limits:
        args += ["--cpus", cpus(limits["cpu"])]
    return args


def _volumes(
    spec: Mapping[str, Any],
    container: Mapping[str, Any],
    config_maps: Mapping[str, Mapping[str, str]],
    pod_dir: str,
) -> tuple[list[str], dict[str, str]]:
    volumes = {v["name"]: v for v in spec.get("volumes") or ()}
    args: list[str] = []
    files: dict[str, str] = {}
    for mount in container.get("volumeMounts") or ():
        volume = volumes.get(mount["name"])
        if volume is None or mount.get("subPath"):
            raise Untranslatable(f"volumeMount {mount['name']}")
        target = mount["mountPath"]
        if "configMap" in volume:
            data = config_maps.get(volume["configMap"]["name"])
            if data is None:
                raise Untranslatable(f"volume {mount['name']}: ConfigMap not found")
            items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for it in items:
                files[f"volumes/{mount['name']}/{it['path']}"] = data[it["key"]]
            # ConfigMap volumes are always read-only in a kubelet
            args += ["--volume", f"{pod_dir}/volumes/{mount['name']}:{target}:ro"]
        elif "emptyDir" in volume:
            mode = "ro" if mount.get("readOnly") else "rw"
            size = (volume["emptyDir"] or {}).get("sizeLimit")
            sized = f",tmpfs-size={memory_bytes(size)}" if size else ""
            args += ["--mount", f"type=tmpfs,destination={target},tmpfs-mode=1777{sized},{mode}"]
        else:
            raise Untranslatable(f"volume {mount['name']}: only configMap and emptyDir")
    return args, files


def podman_run(
    pod: Mapping[str, Any],
    container_name: str | None,
    *,
    name: str,
    secrets: Mapping[str, Mapping[str, str]],
    config_maps: Mapping[str, Mapping[str, str]],
    pod_dir: str,
    network: str = "host",
    image: str | None = None,
    service_account: ServiceAccount | None = None,
    extra: Sequence[str] = (),
) -> PodmanRun:
    """``podman run`` of one container of ``pod`` with the Pod's settings (``image``
    replaces the container's; ``extra`` flags go before the image). With
    ``service_account``, and unless the Pod opts out, its token is mounted as a kubelet
    mounts it, so that the process inside finds its in-cluster config."""
    spec = pod["spec"]
    container = pod_container(pod, container_name)
    unknown = (
        set(container)
        - _IGNORED_CONTAINER_KEYS
        - {
            "command",
            "args",
            "env",
            "volumeMounts",
            "securityContext",
            "resources",
        }
    )
    if unknown:
        raise Untranslatable(f"container fields {sorted(unknown)}")
    argv = ["podman", "run", "--rm", "--pull=never", "--name", name, "--network", network]
    argv += _security(spec.get("securityContext") or {}, container.get("securityContext") or {})
    argv += _resources(container.get("resources") or {})
    volume_args, files = _volumes(spec, container, config_maps, pod_dir)
    argv += volume_args
    env = container_env(pod, container, secrets, config_maps)
    if service_account is not None and spec.get("automountServiceAccountToken") is not False:
        sa = service_account
        for key, text in (("token", sa.token), ("ca.crt", sa.ca_crt), ("namespace", sa.namespace)):
            files[f"volumes/serviceaccount/{key}"] = text
        argv += ["--volume", f"{pod_dir}/volumes/serviceaccount:{SERVICE_ACCOUNT_DIR}:ro"]
        env = {"KUBERNETES_SERVICE_HOST": sa.host, "KUBERNETES_SERVICE_PORT": str(sa.port), **env}
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    command = list(container.get("command") or ())
    if command:
        argv += ["--entrypoint", command[0]]
    argv += [*extra, image or container["image"], *command[1:], *(container.get("args") or ())]
    return PodmanRun(argv=argv, files=files)
