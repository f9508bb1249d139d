"""The operator's Prometheus metrics (names from ``roger.core.metric_names``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

from roger.core import metric_names as names

INFO = Info(names.OPERATOR_INFO, "The operator; present from start-up, before any reconcile")
# trigger: change (created, edited, resumed), callback, repair, drift, refresh (the status
# refresh found it blocked or unfinished), deployment (its Deployment moved meanwhile).
RECONCILES = Counter(
    names.OPERATOR_RECONCILES, "Partition reconciles", ["kind", "result", "trigger"]
)
RECONCILE_DURATION = Histogram(
    names.OPERATOR_RECONCILE_DURATION,
    "Seconds per reconcile",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ERRORS = Counter(names.OPERATOR_ERRORS, "Reconcile errors", ["kind", "stage"])
PARTITIONS = Gauge(
    names.OPERATOR_PARTITIONS, "Partitions by phase", ["partition_namespace", "phase"]
)
API_REQUESTS = Counter(
    names.OPERATOR_API_REQUESTS, "Kubernetes API requests by the operator's client", ["verb"]
)
BROKER_CALL_QUEUED = Histogram(
    names.OPERATOR_BROKER_CALL_QUEUED,
    "Seconds a broker call waited for a thread of its broker's lane",
    ["call"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 15, 30, 60, 300),
)
BROKER_CALL_DURATION = Histogram(
    names.OPERATOR_BROKER_CALL_DURATION,
    "Seconds a broker call ran (declarations, claims, queue stats, pause state)",
    ["call"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 15, 30, 60),
)
