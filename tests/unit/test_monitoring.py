"""Dashboards and alert rules: well-formed, only real metric names, alerts unit-tested."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.monitoring import (
    ALERTS_FILE,
    DASHBOARDS,
    ROOT,
    alert_rules,
    dashboard_queries,
    load_dashboard,
    metric_names_in,
    panels,
    unknown_names,
)

pytestmark = pytest.mark.unit

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
REQUIRED_PANELS = {
    "Jobs/s by hook",
    "Failures/s by job",
    "Retries/s by job",
    "Buried",
    "Cancelled",
    "Duration percentiles",
    "Running jobs",
    "Backlog per queue",
    "Consumers",
    "Parked messages",
    "Callback failures",
    "Dropped Events",
    "Reconciles/s",
}
REQUIRED_ALERTS = {
    "RogerJobsBuried",
    "RogerBacklogGrowing",
    "RogerQueueWithoutConsumers",
    "RogerCallbackFailures",
    "RogerWorkerDown",
    "RogerOperatorErrors",
}


def test_lexer_finds_metric_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, job) (rate(x_bucket{a="b{c}", d=~"$v"}[5m])))'
        " / on (instance) group_left (pod) up unless y_total offset 5m > 1e3"
    )
    assert metric_names_in(expr) == {"x_bucket", "up", "y_total"}


def test_dashboards_are_generated_from_hack_dashboards_py() -> None:
    proc = subprocess.run(
        [sys.executable, "hack/dashboards.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_dashboards_have_templated_datasource_namespace_partition_queue() -> None:
    assert DASHBOARDS, "no charts/roger/dashboards/*.json"
    uids = set()
    for path in DASHBOARDS:
        dash = load_dashboard(path)
        uids.add(dash["uid"])
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert {"datasource", "namespace", "partition", "queue"} <= set(variables), path.name
        assert variables["datasource"]["type"] == "datasource"
        for panel in panels(dash):
            assert panel["datasource"]["uid"] == "${datasource}", (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
        # Panels never overlap.
        cells = set()
        for panel in dash["panels"]:
            g = panel["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, (path.name, panel["title"])
                    cells.add((x, y))
    assert len(uids) == len(DASHBOARDS)


def test_dashboards_have_the_required_panels() -> None:
    titles = {q.panel for q in dashboard_queries()}
    assert titles >= REQUIRED_PANELS, REQUIRED_PANELS - titles


def test_dashboard_queries_use_only_known_metric_names() -> None:
    bad = {
        f"{q.dashboard}/{q.panel}/{q.ref}": unknown_names(q.expr)
        for q in dashboard_queries()
        if unknown_names(q.expr)
    }
    assert not bad, f"not in worker/roger/core/metric_names.py nor builtins: {bad}"
    for q in dashboard_queries():
        assert metric_names_in(q.expr), q


def test_partition_queries_filter_by_the_variables() -> None:
    for q in dashboard_queries():
        if q.dashboard == "roger-partitions":
            assert "$partition" in q.expr, q
            if "rabbitmq_" not in q.expr:
                assert "$namespace" in q.expr, q


def test_alert_rules_use_only_known_metric_names() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert not unknown_names(rule["expr"]), (rule["alert"], unknown_names(rule["expr"]))
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])


def test_promtool_checks_the_rules() -> None:
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_every_alert() -> None:
    tests = sorted((ROOT / "tests" / "promtool").glob("*.yaml"))
    assert tests
    tested = set()
    for path in tests:
        text = path.read_text()
        tested |= {r["alert"] for r in alert_rules() if f"alertname: {r['alert']}\n" in text}
    assert tested == {r["alert"] for r in alert_rules()}, "alerts without a promtool test"
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", *map(str, tests)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
