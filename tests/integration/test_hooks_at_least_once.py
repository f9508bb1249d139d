"""Hooks are at-least-once, like jobs: a worker SIGKILLed while a job's hook runs leaves
the job unsettled, and the next worker runs the hook again to its end. Before, the job
was settled first: the hook's record could be lost with the worker (the chaos run's
``cancel`` job that ended nowhere). Exact orders: tests/unit/test_runtime_hooks.py."""

from __future__ import annotations

from pathlib import Path

import pytest

import roger
from roger_devtools.polling import eventually
from roger_devtools.processes import alive
from roger_devtools.workers import Workers
from tests.integration.support import Broker, read_lines
from tests.jobs import basic

pytestmark = pytest.mark.integration

HELD = ["tests.jobs.callbacks:HeldHooks"]


def _lines(path: Path, hook: str, what: str) -> list[list[str]]:
    return [r for r in read_lines(path) if r[:2] == [hook, what]]


@pytest.mark.parametrize("hook", ["after_run", "on_cancel"])
def test_a_worker_killed_while_a_hook_runs_leaves_the_job_for_the_next_one(
    workers: Workers,
    client: roger.Client,
    broker: Broker,
    unique_name: str,
    tmp_path: Path,
    hook: str,
) -> None:
    out, hooks, hold = tmp_path / "out", tmp_path / "hooks", tmp_path / "hold"
    hold.touch()
    a = workers.start(queues=["default=2"], callbacks=HELD, tag="A")
    args = {"out": str(out), "hooks": str(hooks), "hold": str(hold)}
    if hook == "after_run":
        client.enqueue(unique_name, basic.ok, {**args, "n": 1})
    else:
        job_id = client.enqueue(unique_name, basic.slow, {**args, "sleep": 60})
        eventually(lambda: read_lines(out), 15, message="the job started")
        client.cancel(unique_name, job_id)
    [begin] = eventually(lambda: _lines(hooks, hook, "begin"), 20, message=f"{hook} began")
    a.kill9()
    eventually(lambda: not alive(int(begin[2])), 15, message="the hook's process died with A")
    back = lambda: broker.count(f"{unique_name}-default") == 1  # noqa: E731
    eventually(back, 15, message="unsettled while its hook ran: back in its queue")
    assert _lines(hooks, hook, "end") == []
    hold.unlink()
    workers.start(queues=["default=2"], callbacks=HELD, tag="B")
    eventually(lambda: _lines(hooks, hook, "end"), 30, message=f"{hook} ran to its end on B")
    eventually(lambda: broker.count(f"{unique_name}-default") == 0, 15, message="settled")
    assert len(_lines(hooks, hook, "end")) == 1
    if hook == "on_cancel":  # cancelled, so never run again on B
        assert [r[0] for r in read_lines(out)] == ["start"]
