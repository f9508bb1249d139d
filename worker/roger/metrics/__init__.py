"""Prometheus metrics of the worker and their HTTP endpoint (/metrics, /healthz, /readyz)."""
