"""A job process seen from the worker: writes to it never block the worker's loop."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from pika.adapters.select_connection import IOLoop

from roger.core import frames
from roger.worker.procs import ChildProc
from tests.integration.support import ROOT

pytestmark = pytest.mark.unit
SPEC = json.dumps(
    {
        "partition": "p",
        "jobs": ["tests.jobs.basic"],
        "callbacks": [],
        "callback_timeout": 30,
        "sys_path": [str(ROOT), *__import__("sys").path],
    }
)


def test_a_write_to_a_stopped_job_process_does_not_block_and_arrives_later() -> None:
    loop = IOLoop()
    got: list[frames.ToParent] = []
    child = ChildProc("default", 1, SPEC, loop, lambda _c, batch: got.extend(batch), print)

    def run_until(cond: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:  # type: ignore[operator]
            loop.call_later(0.02, loop.stop)
            loop.start()
        assert cond(), "timed out"  # type: ignore[operator]

    try:
        run_until(lambda: any(isinstance(f, frames.Ready) for f in got), 30)
        os.kill(child.pid, signal.SIGSTOP)  # wedged: it reads nothing
        big = json.dumps({"pad": "x" * 100_000}).encode()
        data = b"".join(
            frames.encode_run(
                k,
                "on_error",
                False,
                b'{"id":"j%d","name":"tests.jobs.basic:noop",'
                b'"args":%b,"queue":"default"}' % (k, big),
            )
            for k in range(1, 21)
        )  # about 2 MB: far more than a pipe holds
        t0 = time.monotonic()
        assert child.send(data)
        assert time.monotonic() - t0 < 0.5
        assert child.backlog and child.backlog_since > 0
        os.kill(child.pid, signal.SIGCONT)
        run_until(lambda: sum(isinstance(f, frames.OkDone) for f in got) == 20, 60)
        assert not child.backlog and child.backlog_since == 0.0
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.close()
        child.proc.wait(10)
