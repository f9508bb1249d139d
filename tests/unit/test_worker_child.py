"""A job process on its own, driven over its pipes like the worker does (no broker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from roger.core import frames
from roger_devtools.polling import eventually
from roger_devtools.processes import alive
from tests.integration.support import ROOT

pytestmark = pytest.mark.unit
HOOKS = ["before_run", "after_run", "on_error", "on_cancel", "on_buried"]


class Pipe:
    def __init__(self, callbacks: list[str], callback_timeout: float = 30, slots: int = 1) -> None:
        to_r, self.to_w = os.pipe()
        self.from_r, from_w = os.pipe()
        spec = {
            "partition": "p",
            "jobs": ["tests.jobs.basic"],
            "callbacks": [{"path": c, "hooks": HOOKS, "config": {}} for c in callbacks],
            "callback_timeout": callback_timeout,
            "sys_path": [str(ROOT), *sys.path],
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roger.worker.child",
                "--rfd",
                str(to_r),
                "--wfd",
                str(from_w),
                "--parent",
                str(os.getpid()),
                "--slots",
                str(slots),
                "--spec",
                json.dumps(spec),
            ],
            pass_fds=(to_r, from_w),
            cwd=ROOT,
        )
        os.close(to_r)
        os.close(from_w)
        self.reader = frames.parent_reader()
        self.buffer: list[frames.ToParent] = []

    def recv(self, timeout: float = 10) -> frames.ToParent:
        deadline = time.monotonic() + timeout
        while not self.buffer:
            assert time.monotonic() < deadline, "no frame from the job process"
            data = os.read(self.from_r, 65536)
            assert data, f"job process exited: {self.proc.poll()}"
            self.buffer += self.reader.feed(data)
        return self.buffer.pop(0)

    def run(self, key: int, name: str, args: Any = None) -> None:
        job = json.dumps({"id": f"j{key}", "name": name, "args": args, "queue": "default"})
        os.write(self.to_w, frames.encode_run(key, "on_error", False, job.encode()))

    def close(self) -> None:
        os.close(self.to_w)  # an idle child exits; a busy one (stuck job) is killed
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.from_r)


def _key(frame: frames.ToParent) -> int:
    assert isinstance(frame, frames.OkDone | frames.Outcome | frames.Done | frames.Late)
    return frame.key


@pytest.fixture
def pipe(request: pytest.FixtureRequest) -> Iterator[Pipe]:
    p = Pipe(getattr(request, "param", []))
    assert isinstance(p.recv(), frames.Ready)
    yield p
    p.close()


def test_a_success_with_quick_hooks_is_one_ok_done_frame(pipe: Pipe) -> None:
    pipe.run(1, "tests.jobs.basic:noop")
    frame = pipe.recv()
    assert isinstance(frame, frames.OkDone) and frame.key == 1
    assert 0 <= frame.duration < 1 and abs(frame.started_at - time.time()) < 5


@pytest.mark.parametrize("pipe", [["tests.jobs.callbacks:SlowAfterRun"]], indirect=True)
def test_the_outcome_leaves_before_slow_hooks_finish(pipe: Pipe) -> None:
    """The outcome leaves as soon as the job returns (the worker stops its deadline and
    keeps the outcome should the hooks be cut short); ``Done`` follows the hooks, and only
    then does the worker settle the job (tests/unit/test_runtime_hooks.py)."""
    pipe.run(1, "tests.jobs.basic:noop")
    t0 = time.monotonic()
    outcome = pipe.recv()
    assert isinstance(outcome, frames.Outcome) and outcome.ok
    assert time.monotonic() - t0 < 0.5
    assert pipe.recv() == frames.Done(1)
    assert time.monotonic() - t0 >= 0.9


def test_failure_outcome_carries_kind_message_and_stack(pipe: Pipe) -> None:
    pipe.run(2, "tests.jobs.basic:flaky", {"n": 7})
    outcome = pipe.recv()
    assert isinstance(outcome, frames.Outcome) and not outcome.ok
    assert outcome.error == ("ValueError", "boom 7")
    assert outcome.stack is not None and "Traceback" in outcome.stack
    assert isinstance(pipe.recv(), frames.Done)


def test_the_child_refuses_jobs_outside_its_modules(pipe: Pipe) -> None:
    pipe.run(3, "os:system", "true")
    assert pipe.recv() == frames.Outcome(3, invalid="job_not_allowed")
    pipe.run(4, "tests.jobs.basic:nope")
    assert pipe.recv() == frames.Done(3)
    assert pipe.recv() == frames.Outcome(4, invalid="unknown_job")


@pytest.mark.parametrize("pipe", [["tests.jobs.callbacks:Raises"]], indirect=True)
def test_callback_failures_are_reported_in_done(pipe: Pipe) -> None:
    pipe.run(5, "tests.jobs.basic:noop")
    outcome = pipe.recv()
    assert isinstance(outcome, frames.Outcome) and outcome.ok
    done = pipe.recv()
    assert isinstance(done, frames.Done)
    assert done.failures == (
        ("tests.jobs.callbacks:Raises", "before_run", "exception"),
        ("tests.jobs.callbacks:Raises", "after_run", "exception"),
    )


def test_a_job_past_its_deadline_is_reported_late(pipe: Pipe) -> None:
    t0 = time.monotonic()
    pipe.run(6, "tests.jobs.basic:stuck", {})
    late = pipe.recv(timeout=5)
    assert late == frames.Late(6, "job", "")
    assert 0.9 < time.monotonic() - t0 < 3


def test_the_child_dies_with_its_worker() -> None:
    code = (
        "import subprocess, sys, json, os, time\n"
        f"sys.path[:0] = [{str(ROOT)!r}]\n"
        "from tests.unit.test_worker_child import Pipe\n"
        "p = Pipe([])\n"
        "print(p.proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    time.sleep(0.5)
    parent.kill()
    parent.wait()
    eventually(lambda: not alive(pid), 10, message="the job process to die with its worker")


@pytest.fixture
def slotted(request: pytest.FixtureRequest) -> Iterator[Pipe]:
    p = Pipe([], slots=request.param)
    assert p.recv() == frames.Ready(p.proc.pid, request.param)
    yield p
    p.close()


@pytest.mark.parametrize("slotted", [3], indirect=True)
def test_a_process_runs_as_many_jobs_at_once_as_it_has_slots(slotted: Pipe) -> None:
    t0 = time.monotonic()
    for key in (1, 2, 3):
        slotted.run(key, "tests.jobs.basic:slow", {"sleep": 1})
    done = {_key(slotted.recv(timeout=5)) for _ in range(3)}
    assert done == {1, 2, 3}
    assert time.monotonic() - t0 < 1.8  # together, not one after the other (3 s)


@pytest.mark.parametrize("slotted", [2], indirect=True)
def test_a_stuck_job_does_not_hold_up_a_short_one_behind_it(slotted: Pipe) -> None:
    """Both frames arrive in one write; the second must not wait for the first."""
    os.write(
        slotted.to_w,
        b"".join(
            frames.encode_run(
                k,
                "on_error",
                False,
                b'{"id":"j%d","name":"%s","args":{},"queue":"default"}' % (k, name),
            )
            for k, name in ((1, b"tests.jobs.basic:stuck"), (2, b"tests.jobs.basic:noop"))
        ),
    )
    t0 = time.monotonic()
    assert _key(slotted.recv(timeout=3)) == 2
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("slotted", [8], indirect=True)
def test_a_burst_of_short_jobs_all_come_back(slotted: Pipe) -> None:
    for round_ in range(50):
        for key in range(8):
            slotted.run(round_ * 8 + key, "tests.jobs.basic:noop")
        got = sorted(_key(slotted.recv()) for _ in range(8))
        assert got == [round_ * 8 + key for key in range(8)]
