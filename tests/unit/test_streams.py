"""The streams of `make test`'s first phase (roger_devtools/test_streams.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from roger_devtools.test_streams import (
    STREAM_ENV,
    STREAMS,
    left_out,
    stream_command,
    stream_env,
)

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_every_test_module_runs_in_exactly_one_stream() -> None:
    """A new tier directory must be given a stream, not be left out of `make test`; a
    module moved to another stream is left out of its directory's."""
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("*/test_*.py"))
    runs: dict[str, list[str]] = {m: [] for m in modules}
    for name, paths in STREAMS.items():
        ignored = set(left_out(name))
        for module in modules:
            named = any(module == p or module.startswith(f"{p}/") for p in paths)
            if named and module not in ignored:
                runs[module].append(name)
    assert {m: s for m, s in runs.items() if len(s) != 1} == {}
    assert runs["tests/e2e/test_operator_delete.py"] == ["clock"]
    assert runs["tests/e2e/test_operator_hung_broker.py"] == ["broker"]
    assert runs["tests/e2e/test_operator_flows.py"] == ["kube"]


def test_each_stream_has_its_own_tag_cache_and_name() -> None:
    kube = stream_env("kube", {"ROGER_TEST_TAG": "ann", "PATH": "/bin"})
    broker = stream_env("broker", {"PATH": "/bin"})
    assert (kube["ROGER_TEST_TAG"], broker["ROGER_TEST_TAG"]) == ("annk", "tb")
    assert (kube[STREAM_ENV], broker[STREAM_ENV], kube["PATH"]) == ("kube", "broker", "/bin")
    command = stream_command("broker", ["-m", "not exclusive"])
    assert command[:3] == [sys.executable, "-m", "pytest"]
    assert command[3:6] == [
        "tests/integration",
        "tests/unit",
        "tests/e2e/test_operator_hung_broker.py",
    ]
    assert command[-4:] == ["-o", "cache_dir=.pytest_cache/broker", "-m", "not exclusive"]
    kube = stream_command("kube", [])
    assert "--ignore=tests/e2e/test_operator_hung_broker.py" in kube
    assert "--ignore=tests/e2e/test_schedule_ticks.py" in kube
    ignored = [arg for arg in command if arg.startswith("--ignore")]
    assert ignored == ["--ignore=tests/integration/test_queue_key_holder_lost.py"]  # clock's
    tags = [stream_env(name, {})["ROGER_TEST_TAG"] for name in STREAMS]
    assert len(set(tags)) == len(tags), tags  # no stream acts on another's objects
