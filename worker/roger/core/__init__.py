"""Pure building blocks of Roger: names, messages, configuration, hooks.

Nothing in this package performs I/O (an import-linter contract enforces it), so every
rule here is unit-testable and shared by the worker, the client and the operator.
"""
