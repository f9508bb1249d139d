"""The chaos run in short (``make chaos`` in full; docs/reliability.md): every fault kind once
on the 3-node cluster while jobs of every outcome run, and every job accounted for."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from roger_devtools import chaos
from tests.brokers import BROKER
from tests.integration import cluster_support
from tests.integration.cluster_support import Cluster

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)  # 2 node restarts: 25-40 s each on a loaded machine
def test_a_short_chaos_run_loses_nothing_and_runs_nothing_twice_without_a_cause(
    rabbitmq_cluster: Cluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))  # the client computes keys from pjobs
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1_000_000))
    argv = ["--jobs", "160", "--faults", "7", "--mean-gap", "4", "--seed", str(seed)]
    argv += ["--held", "3", "--settle-timeout", "120", "--workdir", str(tmp_path)]
    argv += ["--rabbitmq", BROKER.version]
    try:
        code = chaos.main(argv)
    finally:
        cluster_support.script("up", timeout=600)  # a node a failed run left stopped
    out = capsys.readouterr().out
    assert code == 0, f"seed {seed} (CHAOS_SEED={seed} repeats it):\n{out}"
    for kind in ("worker SIGKILL", "job process SIGKILL", "broker node SIGKILL + start"):
        assert f"| {kind} | 1 |" in out, out  # seven faults: every kind once
