"""The chart documents itself: every value described and listed in the generated README,
NOTES that point to published docs, ArtifactHub metadata."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.chart import CHART, ROOT

pytestmark = pytest.mark.unit

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def _properties(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for key, sub in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        out.append((here, sub))
        out.extend(_properties(sub, here))
    return out


def test_every_schema_property_has_a_description() -> None:
    found = _properties(SCHEMA)
    assert len(found) > 50
    assert not [p for p, sub in found if not sub.get("description")]


def test_every_value_is_in_the_schema_and_the_readme() -> None:
    described = {p for p, _ in _properties(SCHEMA)}
    readme = (CHART / "README.md").read_text()

    def leaves(values: dict[str, Any], path: str = "") -> list[str]:
        out = []
        for key, value in values.items():
            here = f"{path}.{key}" if path else key
            nested = (
                isinstance(value, dict) and value and f"{here}.{next(iter(value))}" in described
            )
            out.extend(leaves(value, here) if nested else [here])
        return out

    for key in leaves(VALUES):
        assert key in described, key
        assert f"| `{key}` |" in readme, key


def test_the_chart_readme_is_generated_and_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "chart_readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_notes_point_to_published_docs_not_repository_paths() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    without_urls = re.sub(r"https://\S+", "", notes)
    assert not re.search(r"\b(examples|docs|charts)/", without_urls), without_urls
    assert "https://github.com/roger-k8s/roger-k8s/blob/main/docs/install.md" in notes


def test_artifacthub_annotations() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    notes = chart["annotations"]
    assert notes["artifacthub.io/license"] == "Apache-2.0"
    for key in ("links", "images", "changes", "crds", "crdsExamples"):
        assert yaml.safe_load(notes[f"artifacthub.io/{key}"]), key
    images = yaml.safe_load(notes["artifacthub.io/images"])
    assert images[0]["image"] == f"{VALUES['image']['repository']}:{chart['appVersion']}"
    kinds = {c["kind"] for c in yaml.safe_load(notes["artifacthub.io/crdsExamples"])}
    assert kinds == {"Partition", "Callback"}
