"""The worker runtime: an event loop in the parent, jobs in child processes.

Kept import-light: ``roger.worker.child`` starts in every job process.
"""
