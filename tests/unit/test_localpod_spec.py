"""A Pod's container becomes a local process: env, secrets, downward API, volumes."""

from __future__ import annotations

import pytest

from roger_devtools.podspec import UnresolvableEnv, local_process

pytestmark = pytest.mark.unit

POD = {
    "metadata": {"name": "w-1", "namespace": "ns"},
    "spec": {
        "terminationGracePeriodSeconds": 12,
        "containers": [
            {
                "name": "worker",
                "command": ["roger", "worker", "--config", "/etc/roger/worker.yaml"],
                "env": [
                    {"name": "PLAIN", "value": "1"},
                    {"name": "URL", "valueFrom": {"secretKeyRef": {"name": "s", "key": "url"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                ],
                "volumeMounts": [{"name": "config", "mountPath": "/etc/roger"}],
            }
        ],
        "volumes": [{"name": "config", "configMap": {"name": "cm"}}],
    },
}


def test_container_becomes_local_process() -> None:
    p = local_process(POD, None, {"s": {"url": "amqp://x"}}, {"cm": {"worker.yaml": "a: 1"}}, "/d")
    assert p.argv == ["roger", "worker", "--config", "/d/volumes/config/worker.yaml"]
    assert p.env == {"PLAIN": "1", "URL": "amqp://x", "POD": "w-1", "IP": "127.0.0.1"}
    assert p.files == {"volumes/config/worker.yaml": "a: 1"}
    assert p.grace_seconds == 12


def test_missing_secret_is_a_clear_error() -> None:
    with pytest.raises(UnresolvableEnv, match="secretKeyRef s/url not found"):
        local_process(POD, None, {}, {"cm": {"worker.yaml": ""}}, "/d")
