"""``spec.autoscaling.engine: keda``: the KEDA ScaledObject (and TriggerAuthentication) that
scale a Partition through its scale subresource, instead of the built-in loop.

Pure: a Partition object in, manifests out. The target is the built-in one
(``builders.autoscale``): ``replicas = ceil(sum(jobs_q / maxWorkers_q) / target)``. KEDA says
it with one ``rabbitmq`` trigger per consumed queue (named ``q0``, ``q1``, ...) composed by
``advanced.scalingModifiers``: the formula weighs each queue by ``1/maxWorkers`` and sums
(several triggers alone would take the *largest* queue's replicas, not the sum).

What a trigger counts depends on how KEDA reaches RabbitMQ (docs/autoscaling.md):

- ``keda.authenticationRef`` set (a TriggerAuthentication whose ``host`` is the management API,
  ``http://user:pass@host:15672/vhost``): ``protocol: http``, where ``QueueLength`` counts
  ready *and* unacked (running) jobs, as the built-in loop does. A paused queue counts only its
  running jobs: a second trigger with ``excludeUnacknowledged`` reads its ready ones, and the
  formula subtracts them.
- unset: the operator renders a TriggerAuthentication that hands KEDA the Partition's own AMQP
  Secret (KEDA reads it; nothing is copied) and the triggers use ``protocol: amqp``, where
  RabbitMQ tells a passive declare only the *ready* jobs. Running jobs are not counted, and a
  paused queue counts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from roger.core import naming
from roger_operator.builders.autoscale import ENGINE_KEDA, AutoscalingSpec, parse_autoscaling
from roger_operator.builders.manifests import Manifest, labels, owner_reference
from roger_operator.builders.model import API_VERSION, PARTITION_KIND, PartitionSpec

KEDA_API_VERSION: Final = "keda.sh/v1alpha1"
SCALED_OBJECT: Final = "ScaledObject"
TRIGGER_AUTHENTICATION: Final = "TriggerAuthentication"
AUTH_KINDS: Final = (TRIGGER_AUTHENTICATION, "ClusterTriggerAuthentication")
# How often KEDA checks the triggers to wake a Partition from zero (its default is 30 s):
# the built-in loop's default --autoscale-interval.
POLLING_INTERVAL: Final = 5
# HPA policies that let a count jump at once, as the built-in loop does (the HPA's defaults
# would at most double, or add 4 pods, per 15 s on the way up).
POLICY_PERIOD: Final = 15


@dataclass(frozen=True)
class KedaSettings:
    """``spec.autoscaling.keda``."""

    auth_name: str | None = None  # a user's TriggerAuthentication giving the management API
    auth_kind: str = TRIGGER_AUTHENTICATION

    @property
    def management_api(self) -> bool:
        return self.auth_name is not None


def keda_settings(body: Mapping[str, Any]) -> KedaSettings:
    raw = ((body.get("spec") or {}).get("autoscaling") or {}).get("keda") or {}
    ref = raw.get("authenticationRef") or {}
    if not ref.get("name"):
        return KedaSettings()
    kind = str(ref.get("kind") or TRIGGER_AUTHENTICATION)
    return KedaSettings(str(ref["name"]), kind if kind in AUTH_KINDS else TRIGGER_AUTHENTICATION)


def wants_keda(body: Mapping[str, Any]) -> bool:
    """Whether the Partition asks for a ScaledObject (raises ``AutoscalingError``)."""
    auto = parse_autoscaling(body)
    return auto is not None and auto.engine == ENGINE_KEDA


def _meta(spec: PartitionSpec) -> dict[str, Any]:
    return {
        "name": spec.child_name,
        "namespace": spec.namespace,
        "labels": labels(spec, "autoscaler"),
        "ownerReferences": [owner_reference(spec)],
    }


def trigger_authentication(spec: PartitionSpec) -> Manifest:
    """KEDA reads ``host`` from the Partition's AMQP Secret itself (no copy of the URL)."""
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": TRIGGER_AUTHENTICATION,
        "metadata": _meta(spec),
        "spec": {
            "secretTargetRef": [
                {"parameter": "host", "name": spec.secret_name, "key": spec.secret_key}
            ]
        },
    }


def _number(value: float) -> str:
    """A quantity KEDA parses (``value``, ``target``): ``4``, ``0.5``."""
    return f"{value:g}"


def _trigger(
    name: str, queue: str, value: float, settings: KedaSettings, auth: Mapping[str, str]
) -> dict[str, Any]:
    metadata = {
        "queueName": queue,
        "mode": "QueueLength",
        "value": _number(value),
        "protocol": "http" if settings.management_api else "amqp",
    }
    return {
        "type": "rabbitmq",
        "name": name,
        "metricType": "AverageValue",
        "metadata": metadata,
        "authenticationRef": dict(auth),
    }


def _auth_ref(spec: PartitionSpec, settings: KedaSettings) -> dict[str, str]:
    if settings.auth_name is not None:
        return {"name": settings.auth_name, "kind": settings.auth_kind}
    return {"name": spec.child_name, "kind": TRIGGER_AUTHENTICATION}


def _triggers(
    spec: PartitionSpec, auto: AutoscalingSpec, settings: KedaSettings
) -> tuple[list[dict[str, Any]], list[str]]:
    """The triggers and the formula's terms (one per queue that counts)."""
    auth = _auth_ref(spec, settings)
    triggers: list[dict[str, Any]] = []
    terms: list[str] = []
    for index, q in enumerate(spec.queues):
        if q.max_workers <= 0:
            continue  # not consumed: counts nothing
        if q.paused and not settings.management_api:
            continue  # ready jobs only over AMQP, and a paused queue's ready jobs never count
        name = f"q{index}"
        queue = naming.queue_name(spec.partition_id, q.name)
        # The trigger's own target: what it would ask for alone (unused by the formula).
        triggers.append(_trigger(name, queue, auto.target * q.max_workers, settings, auth))
        if q.paused:  # running jobs only: all messages minus the ready ones
            ready = _trigger(f"{name}ready", queue, auto.target * q.max_workers, settings, auth)
            ready["metadata"]["excludeUnacknowledged"] = "true"
            triggers.append(ready)
            terms.append(f"({name} - {name}ready) / {q.max_workers}")
        else:
            terms.append(f"{name} / {q.max_workers}")
    if not triggers:
        # Nothing counts (every queue paused over AMQP, or not consumed): KEDA needs one
        # trigger all the same; the formula leaves it out, so the load is 0.
        first = spec.queues[0]
        queue = naming.queue_name(spec.partition_id, first.name)
        triggers.append(_trigger("q0", queue, auto.target, settings, auth))
    return triggers, terms


def _policies(auto: AutoscalingSpec) -> dict[str, Any]:
    """HPA ``behavior`` from the stabilisation windows, with no rate limit of its own."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": int(auto.scale_up_window),
            "selectPolicy": "Max",
            "policies": [
                {"type": "Pods", "value": auto.max_replicas, "periodSeconds": POLICY_PERIOD}
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": int(auto.scale_down_window),
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": POLICY_PERIOD}],
        },
    }


def scaled_object(spec: PartitionSpec, auto: AutoscalingSpec, settings: KedaSettings) -> Manifest:
    """The ScaledObject of a Partition with ``engine: keda``."""
    triggers, terms = _triggers(spec, auto, settings)
    advanced: dict[str, Any] = {
        "restoreToOriginalReplicaCount": False,
        "horizontalPodAutoscalerConfig": {"behavior": _policies(auto)},
    }
    advanced["scalingModifiers"] = {
        "formula": " + ".join(terms) or "0",
        "target": _number(auto.target),
        "activationTarget": "0",
        "metricType": "AverageValue",
    }
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": SCALED_OBJECT,
        "metadata": _meta(spec),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": API_VERSION,
                "kind": PARTITION_KIND,
                "name": spec.name,
            },
            "minReplicaCount": auto.min_replicas,
            "maxReplicaCount": auto.max_replicas,
            "cooldownPeriod": int(auto.zero_cooldown),
            "pollingInterval": POLLING_INTERVAL,
            "advanced": advanced,
            "triggers": triggers,
        },
    }


def keda_manifests(
    spec: PartitionSpec, auto: AutoscalingSpec, settings: KedaSettings
) -> list[Manifest]:
    """What a keda-engine Partition needs, in apply order (authentication first)."""
    out = [] if settings.management_api else [trigger_authentication(spec)]
    return [*out, scaled_object(spec, auto, settings)]
