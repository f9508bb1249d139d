"""The CRDs explain themselves: ``kubectl explain`` has a description for every field, and
the operator's effective defaults are schema defaults (so ``kubectl get -o yaml`` shows them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from roger_operator.builders import model

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRDS = sorted((ROOT / "crds").glob("*.yaml"))
# The API server describes ObjectMeta itself and allows nothing else on the root metadata.
SERVER_DESCRIBED = {"metadata"}


def _schema(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    (version,) = crd["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def fields(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field ``kubectl explain`` lists: properties at any depth, through arrays and maps."""
    for name, sub in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        yield here, sub
        yield from fields(sub, here)
    if isinstance(schema.get("items"), dict):
        yield from fields(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from fields(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("path", CRDS, ids=lambda p: p.name)
def test_every_field_has_a_description(path: Path) -> None:
    schema = _schema(path)
    assert schema.get("description"), "the kind itself"
    listed = list(fields(schema))
    assert len(listed) > 5
    missing = [
        name
        for name, sub in listed
        if name not in SERVER_DESCRIBED and not str(sub.get("description", "")).strip()
    ]
    assert not missing, f"{path.name}: fields without a description: {missing}"


def test_the_walk_sees_nested_fields() -> None:
    names = {name for name, _ in fields(_schema(ROOT / "crds/partitions.roger.dev.yaml"))}
    assert {
        "spec.queues[].maxWorkers",
        "status.conditions[].reason",
        "spec.amqp.secretRef.key",
        "status.queues[].unacked",
        "spec.worker.podTemplate.runAsUser",
    } <= names


def _field(path: str) -> dict[str, Any]:
    found = dict(fields(_schema(ROOT / "crds/partitions.roger.dev.yaml")))
    return found[path]


@pytest.mark.parametrize(
    ("path", "effective"),
    [
        ("spec.worker.shutdownTimeout", model.DEFAULT_SHUTDOWN_TIMEOUT),
        ("spec.worker.callbackTimeout", model.DEFAULT_CALLBACK_TIMEOUT),
        ("spec.worker.podTemplate.runAsUser", model.DEFAULT_RUN_AS_USER),
        ("spec.worker.replicas", 1),
        ("spec.worker.metricsPort", 9100),
        ("spec.queues[].maxWorkers", 1),
        ("spec.amqp.secretRef.key", "url"),
        ("spec.events.hooks", list(model.HOOKS)),
    ],
)
def test_effective_defaults_are_schema_defaults(path: str, effective: object) -> None:
    assert _field(path).get("default") == effective, path


def test_objects_holding_defaults_default_to_empty() -> None:
    """A default inside an absent object never applies: the object itself defaults to {}."""
    for path in ("spec.events", "spec.retry", "spec.worker.podTemplate"):
        assert _field(path).get("default") == {}, path
