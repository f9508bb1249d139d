"""Dashboards and alert rules as data: their queries, the metric names they use.

Shared by the unit tests (names exist, files well-formed) and the dashboard proof (every
panel's query evaluated on a real Prometheus).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from roger.core import metric_names as names

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "roger"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
ALERTS_FILE = CHART / "rules" / "roger-alerts.yaml"

INFOS = {names.WORKER_INFO, names.OPERATOR_INFO}
# RabbitMQ's rabbitmq_prometheus metrics used by dashboards (per-object metrics on).
RABBITMQ = {
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages",
    "rabbitmq_queue_consumers",
}
PROMETHEUS_BUILTINS = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"}


def exposed_names() -> set[str]:
    """Every series name Roger's processes expose, as Prometheus stores them."""
    out: set[str] = set()
    for attr in dir(names):
        value = getattr(names, attr)
        if not attr.isupper() or not isinstance(value, str):
            continue
        if value in names.COUNTERS:
            out.add(value + "_total")
        elif value in names.HISTOGRAMS:
            out |= {value + "_bucket", value + "_sum", value + "_count"}
        elif value in INFOS:
            out.add(value + "_info")
        else:
            out.add(value)
    return out


_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan", "atan2"}


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small lexer, enough for ours)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    found = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        token = m.group(0)
        rest = s[m.end() :].lstrip()
        if rest.startswith("(") or token.lower() in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        if m.start() > 0 and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # part of a number like 1e3
        found.add(token)
    return found


def unknown_names(expr: str) -> set[str]:
    allowed = exposed_names() | RABBITMQ | PROMETHEUS_BUILTINS
    return metric_names_in(expr) - allowed


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_queries() -> list[Query]:
    queries = []
    for path in DASHBOARDS:
        dash = load_dashboard(path)
        for panel in panels(dash):
            for target in panel["targets"]:
                queries.append(Query(dash["uid"], panel["title"], target["refId"], target["expr"]))
    return queries


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS_FILE.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's template variables replaced as Grafana would for single values."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    if "$" in expr.replace("$__", ""):
        raise ValueError(f"unsubstituted variable in {expr!r}")
    return expr
