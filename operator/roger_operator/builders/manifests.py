"""Child manifests of a Partition: ServiceAccount, Role, RoleBinding, ConfigMap, Service,
Deployment. All carry a controller owner reference (garbage collection does the deleting)
and the ``app.kubernetes.io/*`` labels; they are applied with server-side apply.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

from roger.core.rbac import WORKER_RULES
from roger_operator.builders.callback_secrets import env_entries
from roger_operator.builders.config import config_hash, config_text, render_config
from roger_operator.builders.config_maps import CONFIG_VOLUME, config_map_name
from roger_operator.builders.model import (
    AMQP_URL_ENV,
    API_VERSION,
    CONFIG_DIR,
    CONFIG_FILE,
    CONFIG_HASH_ANNOTATION,
    CONFIG_HASH_LABEL,
    CONFIG_PATH,
    DEFAULT_RUN_AS_USER,
    GROUP,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_PARTITION,
    LOG_FORMAT_ENV,
    MANAGER,
    PARTITION_KIND,
    PLURAL,
    WORKER_APP,
    CallbackResource,
    PartitionSpec,
    selector_labels,
)

Manifest = dict[str, Any]
WORKER_CONTAINER = "worker"
WORKER_COMMAND = ("roger", "worker", "--config", CONFIG_PATH)
# Downward API: the worker names its Events' reporting instance after the pod.
POD_NAME_ENV = "POD_NAME"
POD_NAMESPACE_ENV = "POD_NAMESPACE"

# Probes on the worker's metrics port (roger.metrics.server). /healthz: the event loop turns
# and no job process is wedged; /readyz: connected and consuming every unpaused queue.
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
# Up to 2 min to start (imports, first connection) before liveness counts.
STARTUP_PROBE = {"periodSeconds": 2, "failureThreshold": 60, "timeoutSeconds": 3}
# A wedged worker is restarted after ~30 s of failed /healthz (it fails 15 s after the loop
# stops turning), short of a slow scrape or a GC pause.
LIVENESS_PROBE = {"periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 5}
# Out of the Service and of rollout progress within ~10 s of losing the broker.
READINESS_PROBE = {
    "periodSeconds": 5,
    "failureThreshold": 2,
    "successThreshold": 1,
    "timeoutSeconds": 3,
}
# Rollouts only add pods (maxUnavailable 0): a working pod goes only once its replacement
# has been Ready for MIN_READY_SECONDS; a rollout stuck this long is reported as failed.
MAX_SURGE = 1
MIN_READY_SECONDS = 10
PROGRESS_DEADLINE_SECONDS = 300


def labels(spec: PartitionSpec, component: str = "worker") -> dict[str, str]:
    return {
        LABEL_NAME: WORKER_APP,
        LABEL_INSTANCE: spec.name,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: "roger",
        LABEL_MANAGED_BY: MANAGER,
        LABEL_PARTITION: spec.name,
    }


def owner_reference(spec: PartitionSpec) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": PARTITION_KIND,
        "name": spec.name,
        "uid": spec.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(spec: PartitionSpec, component: str = "worker") -> dict[str, Any]:
    return {
        "name": spec.child_name,
        "namespace": spec.namespace,
        "labels": labels(spec, component),
        "ownerReferences": [owner_reference(spec)],
    }


def service_account(spec: PartitionSpec) -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(spec)}


def worker_rules(spec: PartitionSpec) -> list[dict[str, Any]]:
    """``WORKER_RULES``, narrowed to this Partition where a rule names objects."""
    rules = []
    for rule in WORKER_RULES:
        rule = copy.deepcopy(dict(rule))
        if rule["apiGroups"] == [GROUP] and rule["resources"] == [PLURAL]:
            rule["resourceNames"] = [spec.name]
        rules.append(rule)
    return rules


def role(spec: PartitionSpec) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(spec),
        "rules": worker_rules(spec),
    }


def role_binding(spec: PartitionSpec) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(spec),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": spec.child_name,
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": spec.child_name, "namespace": spec.namespace}
        ],
    }


def config_map(spec: PartitionSpec, text: str, digest: str) -> Manifest:
    """The config of one pod template, named after its content (``builders.config_maps``):
    immutable, so a pod always reads the config its ReplicaSet was made with."""
    meta = _meta(spec, "config")
    meta["name"] = config_map_name(spec.name, digest)
    meta["labels"][CONFIG_HASH_LABEL] = digest
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "immutable": True,
        "data": {CONFIG_FILE: text},
    }


def service(spec: PartitionSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, "metrics"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec.name),
            "ports": [
                {
                    "name": "metrics",
                    "port": spec.metrics_port,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                }
            ],
        },
    }


def _env(spec: PartitionSpec, extra: Sequence[Manifest] = ()) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {
            "name": AMQP_URL_ENV,
            "valueFrom": {"secretKeyRef": {"name": spec.secret_name, "key": spec.secret_key}},
        },
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": POD_NAMESPACE_ENV,
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    if spec.log_format != "text":  # only when asked: existing pods keep their template
        env.append({"name": LOG_FORMAT_ENV, "value": spec.log_format})
    env.extend(extra)  # callback config values from Secrets (by reference)
    own = {e["name"] for e in env}
    env.extend(copy.deepcopy(dict(e)) for e in spec.env if e.get("name") not in own)
    return env


def pod_security_context(spec: PartitionSpec) -> dict[str, Any]:
    """Pod Security "restricted": non-root, RuntimeDefault seccomp."""
    user = int(spec.pod_template.get("runAsUser", DEFAULT_RUN_AS_USER))
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": user,
        "fsGroup": user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def probes() -> dict[str, Any]:
    """startupProbe, livenessProbe and readinessProbe of the worker container."""

    def http(path: str, settings: Mapping[str, int]) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "metrics", "scheme": "HTTP"}, **settings}

    return {
        "startupProbe": http(HEALTH_PATH, STARTUP_PROBE),
        "livenessProbe": http(HEALTH_PATH, LIVENESS_PROBE),
        "readinessProbe": http(READY_PATH, READINESS_PROBE),
    }


def grace_period(spec: PartitionSpec) -> int:
    """terminationGracePeriodSeconds, always above the worker's shutdown timeout (running
    jobs get the whole timeout, the worker its last acks, before SIGKILL)."""
    return max(spec.grace_period, math.ceil(spec.shutdown_timeout) + 1)


def rollout_strategy() -> dict[str, Any]:
    return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": MAX_SURGE}}


def deployment(
    spec: PartitionSpec, template_hash: str, extra_env: Sequence[Manifest] = ()
) -> Manifest:
    """The workers; their config volume is the ConfigMap of ``template_hash``."""
    pt = spec.pod_template
    pod_labels = {**dict(pt.get("labels") or {}), **labels(spec)}
    pod_annotations = {
        **dict(pt.get("annotations") or {}),
        CONFIG_HASH_ANNOTATION: template_hash,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(spec.metrics_port),
    }
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": spec.image,
        "command": list(WORKER_COMMAND),
        "env": _env(spec, extra_env),
        "ports": [{"name": "metrics", "containerPort": spec.metrics_port, "protocol": "TCP"}],
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": container_security_context(),
        # Why a pod died (a jobs module that does not import, a refused queue argument)
        # is in its status, where the operator reads it for the Partition's Degraded.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **probes(),
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if spec.resources:
        container["resources"] = copy.deepcopy(dict(spec.resources))
    pod_spec: dict[str, Any] = {
        "serviceAccountName": spec.child_name,
        "automountServiceAccountToken": True,
        "terminationGracePeriodSeconds": grace_period(spec),
        "securityContext": pod_security_context(spec),
        "containers": [container],
        "volumes": [
            {
                "name": CONFIG_VOLUME,
                "configMap": {"name": config_map_name(spec.name, template_hash)},
            },
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    for key in (
        "nodeSelector",
        "priorityClassName",
        "imagePullSecrets",
        "tolerations",
        "affinity",
        "topologySpreadConstraints",
    ):
        if pt.get(key):
            pod_spec[key] = copy.deepcopy(pt[key])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(spec),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(spec.name)},
            "strategy": rollout_strategy(),
            "minReadySeconds": MIN_READY_SECONDS,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


def build_children(
    spec: PartitionSpec, callbacks: Sequence[CallbackResource]
) -> tuple[list[Manifest], str]:
    """Every child in apply order (RBAC before the pods that use it) and the config hash."""
    text = config_text(render_config(spec, callbacks))
    digest = config_hash(text)
    return [
        service_account(spec),
        role(spec),
        role_binding(spec),
        config_map(spec, text, digest),
        service(spec),
        deployment(spec, digest, env_entries(callbacks)),
    ], digest
