"""Every alert says where its runbook is, and each one can be switched off on its own."""

from __future__ import annotations

import re

import pytest

from tests.chart import of_kind, render
from tests.monitoring import ROOT, alert_rules

pytestmark = pytest.mark.unit

RUNBOOKS = ROOT / "docs" / "runbooks.md"
PUBLISHED = "https://github.com/roger-k8s/roger-k8s/blob/main/docs/runbooks.md#"


def test_every_alert_links_its_runbook_section() -> None:
    headings = {
        h.lower() for h in re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), re.M)
    }  # GitHub anchors: the heading, lowercased
    alerts = {r["alert"] for r in alert_rules()}
    assert headings == {a.lower() for a in alerts}, "one runbook section per alert, no other"
    for rule in alert_rules():
        assert rule["annotations"]["runbook_url"] == PUBLISHED + rule["alert"].lower()


def _alerts(*sets: str) -> set[str]:
    (rule,) = of_kind(render("monitoring.prometheusRule.enabled=true", *sets), "PrometheusRule")
    return {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}


def test_single_alerts_can_be_disabled() -> None:
    everything = {r["alert"] for r in alert_rules()}
    assert _alerts() == everything
    off = "monitoring.prometheusRule.disabledAlerts={RogerMessagesParked,RogerOperatorDown}"
    assert _alerts(off) == everything - {"RogerMessagesParked", "RogerOperatorDown"}
    # A group whose alerts are all off is left out rather than left empty.
    (rule,) = of_kind(
        render(
            "monitoring.prometheusRule.enabled=true",
            "monitoring.prometheusRule.disabledAlerts={RogerOperatorErrors,RogerOperatorDown}",
        ),
        "PrometheusRule",
    )
    assert "roger.operator" not in {g["name"] for g in rule["spec"]["groups"]}


def test_an_unknown_alert_name_is_refused() -> None:
    with pytest.raises(AssertionError, match="schema"):
        render("monitoring.prometheusRule.disabledAlerts={RogerTypo}")
