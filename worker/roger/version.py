"""The installed roger-k8s version, from the package metadata (one number, in pyproject)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "roger-k8s"


@cache
def package_version() -> str:
    """The version pip installed; "unknown" when run from a source tree never installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
