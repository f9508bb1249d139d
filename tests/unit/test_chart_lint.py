"""What ``ct lint`` (chart-testing) checks besides ``helm lint --strict`` (test_chart.py):
yamllint on the chart's plain YAML, Chart.yaml's fields, and a version bump over the last
released chart. chart-testing itself cannot be had here (its Go module is not served by
the module proxy, and it is no PyPI package), so these are its checks, run directly.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile

import pytest
import yaml

from tests.chart import CHART, ROOT

pytestmark = pytest.mark.unit

PREVIOUS = ROOT / "tests" / "e2e" / "fixtures" / "roger-chart-0.1.0.tgz"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")


def test_yamllint_is_clean() -> None:
    files = [CHART / "Chart.yaml", CHART / "values.yaml", *sorted((CHART / "rules").glob("*"))]
    proc = subprocess.run(
        [sys.executable, "-m", "yamllint", "-c", str(ROOT / "charts" / ".yamllint.yaml")]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _version(text: str) -> tuple[int, ...]:
    match = SEMVER.match(text)
    assert match, text
    return tuple(int(g) for g in match.groups())


def test_chart_yaml_fields() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == CHART.name
    assert chart["type"] == "application" and chart["description"]
    _version(chart["version"])
    _version(chart["appVersion"])
    assert chart["home"].startswith("https://") and chart["sources"]
    assert all(m.get("name") for m in chart["maintainers"])
    assert not (CHART / "requirements.yaml").exists()


def test_the_version_is_bumped_over_the_last_released_chart() -> None:
    with tarfile.open(PREVIOUS) as tar:
        member = tar.extractfile("roger/Chart.yaml")
        assert member is not None
        released = yaml.safe_load(member.read())["version"]
    current = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    assert _version(current) > _version(released), (current, released)
