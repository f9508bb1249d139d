#!/usr/bin/env python3
"""Generate the Grafana dashboards in charts/roger/dashboards/ (committed output).

    .venv/bin/python hack/dashboards.py          # rewrite the JSON files
    .venv/bin/python hack/dashboards.py --check  # exit 1 if they are out of date

Every query uses metric names from worker/roger/core/metric_names.py (counters with the
``_total`` suffix) or RabbitMQ's own; tests/unit/test_dashboards.py checks it, and
tests/e2e/test_dashboard_data.py evaluates every query against a real Prometheus.
The job's name is the ``job_name`` label (``job`` and ``namespace`` are the scrape's target
labels); the operator's ``roger_operator_partitions`` says the Partitions' namespace in
``partition_namespace``.
(Over 400 lines: mostly data, every panel and query of both dashboards.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "charts" / "roger" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}

W = 'namespace=~"$namespace", partition=~"$partition"'  # worker series of the selection
WQ = W + ', queue=~"$queue"'
RI = "$__rate_interval"


def _datasource_var() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
    }


def _query_var(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,  # on time range change: partitions come and go
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
        "regex": "",
        "options": [],
    }


class Layout:
    """Panels placed left to right, two per row (or full width), rows as headers."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def panel(
        self,
        title: str,
        description: str,
        targets: list[tuple[str, str]],
        unit: str = "short",
        width: int = 12,
        kind: str = "timeseries",
        stack: bool = False,
    ) -> None:
        if self.x + width > 24:
            self.y += 8
            self.x = 0
        custom: dict[str, Any] = {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1}
        if stack:
            custom["stacking"] = {"mode": "normal", "group": "A"}
        self.panels.append(
            {
                "type": kind,
                "id": self._id(),
                "title": title,
                "description": description,
                "datasource": DS,
                "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
                "fieldConfig": {
                    "defaults": {
                        "unit": unit,
                        "min": 0,
                        **({"custom": custom} if kind == "timeseries" else {}),
                    },
                    "overrides": [],
                },
                "options": {
                    "legend": {"displayMode": "table", "placement": "right", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "datasource": DS,
                        "expr": expr,
                        "legendFormat": legend,
                        "range": True,
                    }
                    for i, (expr, legend) in enumerate(targets)
                ],
            }
        )
        self.x += width
        if self.x >= 24:
            self.x = 0
            self.y += 8


def _dashboard(
    uid: str, title: str, description: str, variables: list[dict[str, Any]], layout: Layout
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["roger", "rabbitmq", "jobs"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "links": [
            {
                "type": "dashboards",
                "tags": ["roger"],
                "asDropdown": True,
                "title": "Roger",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "annotations": {"list": []},
        "templating": {"list": variables},
        "panels": layout.panels,
    }


def partitions_dashboard() -> dict[str, Any]:
    p = Layout()
    p.row("Jobs")
    p.panel(
        "Jobs/s by hook",
        "Lifecycle hooks fired per second (before_run = started, after_run = succeeded).",
        [
            (
                f"sum by (hook) (rate(roger_lifecycle_events_total{{{WQ}}}[{RI}]))",
                "{{hook}}",
            )
        ],
        unit="ops",
    )
    p.panel(
        "Outcomes/s",
        "Settled jobs per second by outcome.",
        [
            (
                f"sum by (outcome) (rate(roger_job_outcomes_total{{{WQ}}}[{RI}]))",
                "{{outcome}}",
            )
        ],
        unit="ops",
        stack=True,
    )
    p.panel(
        "Failures/s by job",
        "Failed runs (raised, timeout, worker_crash): on_error (will be retried) plus"
        " on_buried (final).",
        [
            (
                "sum by (partition, job_name) (rate(roger_lifecycle_events_total"
                f'{{{WQ}, hook=~"on_error|on_buried"}}[{RI}]))',
                "{{partition}} {{job_name}}",
            )
        ],
        unit="ops",
    )
    p.panel(
        "Retries/s by job",
        "Jobs republished to a .retry.<seconds> queue.",
        [
            (
                f"sum by (partition, job_name) (rate(roger_job_retries_total{{{WQ}}}[{RI}]))",
                "{{partition}} {{job_name}}",
            )
        ],
        unit="ops",
    )
    p.panel(
        "Buried",
        "Jobs buried in the interval, and messages held in each .buried queue.",
        [
            (
                "sum by (partition, job_name) (increase(roger_lifecycle_events_total"
                f'{{{WQ}, hook="on_buried"}}[{RI}]))',
                "buried {{partition}} {{job_name}}",
            ),
            (
                f"max by (partition, queue) (roger_queue_buried{{{WQ}}})",
                "in {{partition}}-{{queue}}.buried",
            ),
        ],
    )
    p.panel(
        "Cancelled",
        "Jobs cancelled (queued or running) in the interval.",
        [
            (
                "sum by (partition, job_name) (increase(roger_lifecycle_events_total"
                f'{{{WQ}, hook="on_cancel"}}[{RI}]))',
                "{{partition}} {{job_name}}",
            )
        ],
    )
    p.panel(
        "Duration percentiles",
        "Job run time, all outcomes.",
        [
            (
                f"histogram_quantile({q}, sum by (le) "
                f"(rate(roger_job_duration_seconds_bucket{{{WQ}}}[{RI}])))",
                f"p{int(q * 100)}",
            )
            for q in (0.5, 0.95, 0.99)
        ],
        unit="s",
    )
    p.panel(
        "Running jobs",
        "Jobs running now, per queue (at most the queue's maxWorkers per worker).",
        [
            (
                f"sum by (partition, queue) (roger_jobs_running{{{WQ}}})",
                "{{partition}}-{{queue}}",
            )
        ],
        stack=True,
    )
    p.row("Queues")
    p.panel(
        "Backlog per queue",
        "Ready messages waiting, and messages waiting in .retry.* queues (sampled by workers).",
        [
            (
                f"max by (partition, queue) (roger_queue_messages{{{WQ}}})",
                "ready {{partition}}-{{queue}}",
            ),
            (
                f"max by (partition, queue) (roger_queue_retrying{{{WQ}}})",
                "retrying {{partition}}-{{queue}}",
            ),
        ],
    )
    p.panel(
        "Consumers",
        "Consumers per queue as RabbitMQ reports them (0 while paused or without workers).",
        [
            (
                f"max by (partition, queue) (roger_queue_consumers{{{WQ}}})",
                "{{partition}}-{{queue}}",
            )
        ],
    )
    p.panel(
        "RabbitMQ: messages per queue",
        "The broker's own view (rabbitmq_prometheus per-object metrics): ready and"
        " unacknowledged messages of the partition's queues, with or without workers.",
        [
            (
                'sum by (queue) (rabbitmq_queue_messages_ready{queue=~"($partition)-($queue)"})',
                "ready {{queue}}",
            ),
            (
                'sum by (queue) (rabbitmq_queue_messages_unacked{queue=~"($partition)-($queue)"})',
                "unacked {{queue}}",
            ),
        ],
    )
    p.panel(
        "Parked messages",
        "Messages that must not run (bad JSON, unknown job...) parked in .invalid, by reason;"
        " and what each .invalid queue holds.",
        [
            (
                "sum by (partition, queue, reason) "
                f"(increase(roger_messages_parked_total{{{WQ}}}[{RI}]))",
                "parked {{partition}}-{{queue}} {{reason}}",
            ),
            (
                f"max by (partition, queue) (roger_queue_invalid{{{WQ}}})",
                "in {{partition}}-{{queue}}.invalid",
            ),
        ],
    )
    p.panel(
        "Paused queues",
        "1 while a queue is paused (spec.queues[].paused).",
        [
            (
                f"max by (partition, queue) (roger_queue_paused{{{WQ}}})",
                "{{partition}}-{{queue}}",
            )
        ],
    )
    p.row("Callbacks, Kubernetes Events, workers")
    p.panel(
        "Callback failures",
        "Callback hooks that raised, hung or died, per interval (jobs are unaffected).",
        [
            (
                "sum by (partition, callback, hook, reason) "
                f"(increase(roger_callback_failures_total{{{W}}}[{RI}]))",
                "{{partition}} {{callback}}.{{hook}} {{reason}}",
            )
        ],
    )
    p.panel(
        "Dropped Events",
        "Lifecycle events that never became Kubernetes Events (API down, forbidden,"
        " Partition missing, budget), per interval.",
        [
            (
                "sum by (partition, cause) "
                f"(increase(roger_kube_events_dropped_total{{{W}}}[{RI}]))",
                "{{partition}} {{cause}}",
            )
        ],
    )
    p.panel(
        "Kubernetes Events recorded",
        "Lifecycle events recorded on Events of the Partition, and the API writes they cost.",
        [
            (
                f"sum by (partition, reason) (rate(roger_kube_events_emitted_total{{{W}}}[{RI}]))",
                "{{partition}} {{reason}}",
            ),
            (
                f"sum by (partition, verb) (rate(roger_kube_event_writes_total{{{W}}}[{RI}]))",
                "{{partition}} {{verb}} requests",
            ),
        ],
        unit="ops",
    )
    p.panel(
        "Workers up",
        "Worker processes answering Prometheus, per partition.",
        [(f"count by (partition) (roger_worker_info{{{W}}})", "{{partition}}")],
    )
    p.panel(
        "Broker reconnects",
        "AMQP reconnections of the workers, per interval.",
        [
            (
                f"sum by (partition) (increase(roger_broker_reconnects_total{{{W}}}[{RI}]))",
                "{{partition}}",
            )
        ],
    )
    return _dashboard(
        "roger-partitions",
        "Roger / Partitions",
        "Jobs, queues, callbacks and Events of Roger partitions (workers and RabbitMQ).",
        [
            _datasource_var(),
            _query_var("namespace", "Namespace", "label_values(roger_worker_info, namespace)"),
            _query_var(
                "partition",
                "Partition",
                'label_values(roger_worker_info{namespace=~"$namespace"}, partition)',
            ),
            _query_var(
                "queue",
                "Queue",
                "label_values(roger_queue_messages"
                '{namespace=~"$namespace", partition=~"$partition"}, queue)',
            ),
        ],
        p,
    )


def operator_dashboard() -> dict[str, Any]:
    o = 'namespace=~"$namespace"'
    p = Layout()
    p.row("Operator")
    p.panel(
        "Reconciles/s",
        "Reconciliations of Partitions and Callbacks by result.",
        [
            (
                f"sum by (kind, result) (rate(roger_operator_reconciles_total{{{o}}}[{RI}]))",
                "{{kind}} {{result}}",
            )
        ],
        unit="ops",
    )
    p.panel(
        "Reconcile errors",
        "Errors per interval by kind and stage.",
        [
            (
                f"sum by (kind, stage) (increase(roger_operator_errors_total{{{o}}}[{RI}]))",
                "{{kind}} {{stage}}",
            )
        ],
    )
    p.panel(
        "Reconcile duration",
        "p50 and p99 of a reconciliation.",
        [
            (
                f"histogram_quantile({q}, sum by (le) "
                f"(rate(roger_operator_reconcile_duration_seconds_bucket{{{o}}}[{RI}])))",
                f"p{int(q * 100)}",
            )
            for q in (0.5, 0.99)
        ],
        unit="s",
    )
    p.panel(
        "Partitions by phase",
        "Partitions the operator manages, by phase.",
        [(f"sum by (phase) (roger_operator_partitions{{{o}}})", "{{phase}}")],
        stack=True,
    )
    return _dashboard(
        "roger-operator",
        "Roger / Operator",
        "The Roger operator: reconciliations, errors, durations, managed Partitions.",
        [
            _datasource_var(),
            _query_var(
                "namespace",
                "Operator namespace",
                "label_values(roger_operator_info, namespace)",
            ),
            # Kept for links between the dashboards; the operator's series have neither.
            _query_var(
                "partition",
                "Partition",
                'label_values(roger_worker_info{namespace=~"$namespace"}, partition)',
            )
            | {"hide": 2},
            _query_var(
                "queue",
                "Queue",
                "label_values(roger_queue_messages"
                '{namespace=~"$namespace", partition=~"$partition"}, queue)',
            )
            | {"hide": 2},
        ],
        p,
    )


DASHBOARDS = {
    "roger-partitions.json": partitions_dashboard,
    "roger-operator.json": operator_dashboard,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render().items():
        path = OUT / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {stale}; run: python hack/dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
