"""What an adopter reads before installing: the license, the parts and their extras."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from roger import extras

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_apache_2_license_with_pep_639_metadata() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # PEP 639
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(PROJECT["urls"])


def test_the_bare_install_is_the_worker_and_client() -> None:
    assert _names(PROJECT["dependencies"]) == {"pika", "prometheus-client", "pyyaml"}
    optional = {k: _names(v) for k, v in PROJECT["optional-dependencies"].items()}
    # Not the kubernetes package in the operator: kopf would import it (~12 MiB of RSS).
    assert optional == {"events": {"kubernetes"}, "operator": {"kopf", "urllib3", "croniter"}}
    assert {k: set(v) for k, v in extras.EXTRAS.items()} == optional


def test_dev_tools_are_dependency_groups_not_extras() -> None:
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    assert {"pytest", "mypy", "ruff", "uv"} <= _names(
        [r for g in ("test", "lint") for r in groups[g]]
    )


@pytest.mark.parametrize(
    ("path", "extra"), [("worker/Dockerfile", "events"), ("operator/Dockerfile", "operator")]
)
def test_images_install_an_extra_from_the_metadata(path: str, extra: str) -> None:
    text = (ROOT / path).read_text()
    assert f"'roger-k8s[{extra}]'" in text
    hand_picked = re.findall(r"pip install [^\n]*\"(?:pika|kubernetes|kopf)", text)
    assert not hand_picked, "dependencies come from pyproject.toml"


def test_a_missing_extra_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(extras.EXTRAS, "events", ("json", "no_such_module_x"))
    assert extras.absent_modules("events") == ["no_such_module_x"]
    with pytest.raises(ImportError, match=r"pip install 'roger-k8s\[events\]'"):
        extras.require_extra("events", "Kubernetes Events")
    monkeypatch.setitem(extras.EXTRAS, "events", ("json",))
    extras.require_extra("events", "Kubernetes Events")
