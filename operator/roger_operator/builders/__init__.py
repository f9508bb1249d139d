"""Pure builders: a Partition (with its resolved Callbacks) -> child manifests and status.

Nothing here performs I/O or imports kopf/kubernetes/pika (an import-linter contract
enforces it), so every rule is unit-testable.
"""
