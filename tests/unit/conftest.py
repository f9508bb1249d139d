"""Hypothesis profiles for the property tests (tests/unit/test_hostile_*.py).

``ci`` (under CI=true, and the default) is derandomized: the same examples every run, a
few seconds in all. ``dev`` draws new examples each run; ``long`` is for a deliberate hunt
(``HYPOTHESIS_PROFILE=long``). No example database: nothing is written into the tree.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,  # a shared 2-core machine: timing says nothing about correctness
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=100, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=100, **_COMMON)
settings.register_profile("long", max_examples=20_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
