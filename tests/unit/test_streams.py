"""The two streams of `make test`'s first phase (roger_devtools/test_streams.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from roger_devtools.test_streams import STREAM_ENV, STREAMS, stream_command, stream_env

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_every_tier_directory_is_in_exactly_one_stream() -> None:
    """A new tier directory must be given a stream, not be left out of `make test`."""
    tiers = {f"tests/{p.parent.name}" for p in (ROOT / "tests").glob("*/test_*.py")}
    listed = [d for dirs in STREAMS.values() for d in dirs]
    assert sorted(listed) == sorted(tiers)


def test_each_stream_has_its_own_tag_cache_and_name() -> None:
    kube = stream_env("kube", {"ROGER_TEST_TAG": "ann", "PATH": "/bin"})
    broker = stream_env("broker", {"PATH": "/bin"})
    assert (kube["ROGER_TEST_TAG"], broker["ROGER_TEST_TAG"]) == ("annk", "tb")
    assert (kube[STREAM_ENV], broker[STREAM_ENV], kube["PATH"]) == ("kube", "broker", "/bin")
    command = stream_command("broker", ["-m", "not exclusive"])
    assert command[:3] == [sys.executable, "-m", "pytest"]
    assert command[3:] == [
        "tests/integration",
        "tests/unit",
        "-o",
        "cache_dir=.pytest_cache/broker",
        "-m",
        "not exclusive",
    ]
