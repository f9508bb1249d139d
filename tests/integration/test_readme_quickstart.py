"""The README's quick start works for someone who has only read it.

The test takes the section as written: every Python block whose first line is ``# <file>``
becomes that file in an empty directory, and the shell block runs there line by line, with
the project's ``roger`` and ``python`` first on PATH. Two things differ from a reader's
terminal, both named here: the broker URL is the test broker's (3.10 or 4.0), and the
partition ``tenant-a`` gets a name of this test's own so that runs never share queues.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from roger_devtools.polling import GiveUp, eventually
from roger_devtools.processes import stop
from tests.integration.support import ROOT, Broker

pytestmark = pytest.mark.integration

README_PARTITION = "tenant-a"


def quick_start() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Quick start\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_quick_start_runs_as_written(
    tmp_path: Path, amqp_url: str, unique_name: str, broker: Broker
) -> None:
    section = quick_start()
    files = [block for block in code_blocks(section, "python") if block.startswith("# ")]
    assert [f.splitlines()[0] for f in files] == ["# invoices.py", "# enqueue.py"]
    for block in files:
        (tmp_path / block.splitlines()[0][2:]).write_text(
            block.replace(README_PARTITION, unique_name)
        )
    [script] = code_blocks(section, "sh")
    lines = [line for line in script.splitlines() if line.strip()]
    assert lines[0].startswith("export ROGER_AMQP_URL="), "the reader is told where the broker is"
    [worker_at] = [i for i, line in enumerate(lines) if line.endswith("&")]
    worker_line = lines[worker_at]
    assert worker_at == 1, "the worker starts right after the export, before any enqueue"
    assert shlex.split(worker_line)[:2] == ["roger", "worker"]

    env = dict(os.environ, ROGER_AMQP_URL=amqp_url)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env.pop("PYTHONPATH", None)  # nothing from this repository but the installed package

    def sh(line: str) -> str:
        line = line.replace(README_PARTITION, unique_name)
        done = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{line!r} failed:\n{done.stdout}{done.stderr}"
        return done.stdout

    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [
                "bash",
                "-c",
                "exec " + worker_line.rstrip("& ").replace(README_PARTITION, unique_name),
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        outputs = [sh(line) for line in lines[worker_at + 1 :]]
        job_ids = [out.strip() for out in outputs[:2]]
        assert all(re.fullmatch(r"[0-9a-f]{32}", job_id) for job_id in job_ids), outputs
        assert "default" in outputs[2], "roger info lists the queue"

        def both_ran() -> bool:
            if worker.poll() is not None:
                raise GiveUp(f"the worker exited:\n{log.read_text()}")
            printed = log.read_text()
            return "sending invoice 42" in printed and "sending invoice 43" in printed

        eventually(both_ran, 30, message="both jobs to run")
    finally:
        assert stop(worker) == 0, log.read_text()  # `kill %1`: a clean shutdown
