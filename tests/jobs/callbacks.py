"""Callbacks that record every hook they receive (and some that misbehave)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import roger


class Recorder(roger.Callback):
    """Appends one JSON line per hook to the file named by ``ROGER_TEST_HOOKS``."""

    def _write(self, **fields: Any) -> None:
        path = os.environ.get("ROGER_TEST_HOOKS") or self.config.get("path")
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(fields, default=str) + "\n")

    def before_run(self, partition: str, job: roger.Job) -> Any:
        self._write(hook="before_run", id=job.id, retry=job.retry_count, partition=partition)
        return {"token": job.id}

    def after_run(self, partition: str, job: roger.Job, result: Any, state: Any) -> None:
        self._write(hook="after_run", id=job.id, result=result, state=state)

    def on_error(self, partition: str, job: roger.Job, error: Any, stack: Any, state: Any) -> None:
        self._write(
            hook="on_error",
            id=job.id,
            error=list(error),
            state=state,
            retry=job.retry_count,
            has_stack=bool(stack),
        )

    def on_buried(self, partition: str, job: roger.Job, error: Any, stack: Any, state: Any) -> None:
        self._write(
            hook="on_buried", id=job.id, error=list(error), state=state, retry=job.retry_count
        )

    def on_cancel(self, partition: str, job: roger.Job) -> None:
        self._write(hook="on_cancel", id=job.id)


class Raises:
    """Raises in every hook: the outcome must not change."""

    def before_run(self, partition: str, job: Any) -> Any:
        raise RuntimeError("before_run broke")

    def after_run(self, partition: str, job: Any, result: Any, state: Any) -> None:
        raise RuntimeError("after_run broke")


class HangsAfter:
    """Hangs in after_run when the job's args ask for it."""

    def after_run(self, partition: str, job: Any, result: Any, state: Any) -> None:
        if isinstance(job.args, dict) and job.args.get("hang"):
            time.sleep(3600)


class SlowAfterRun:
    """after_run takes a second: the outcome frame must not wait for it."""

    def after_run(self, partition: str, job: Any, result: Any, state: Any) -> None:
        time.sleep(1)


class AllHooks:
    """No-op implementation of all five hooks (the benchmark's callback)."""

    def before_run(self, partition: str, job: Any) -> Any:
        return 1

    def after_run(self, partition: str, job: Any, result: Any, state: Any) -> None:
        pass

    def on_error(self, partition: str, job: Any, error: Any, stack: Any, state: Any) -> None:
        pass

    def on_cancel(self, partition: str, job: Any) -> None:
        pass

    def on_buried(self, partition: str, job: Any, error: Any, stack: Any, state: Any) -> None:
        pass


class HeldHooks:
    """after_run and on_cancel write ``<hook> begin <pid>`` to the job's ``hooks`` file,
    wait while its ``hold`` file exists (a minute at most), then write ``<hook> end <pid>``:
    a test kills the worker while a hook runs."""

    def _held(self, hook: str, job: Any) -> None:
        args = job.args if isinstance(job.args, dict) else {}
        out, hold = args.get("hooks"), args.get("hold")
        if not out:
            return
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(f"{hook} begin {os.getpid()}\n")
        deadline = time.monotonic() + 60
        while hold and os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(f"{hook} end {os.getpid()}\n")

    def after_run(self, partition: str, job: Any, result: Any, state: Any) -> None:
        self._held("after_run", job)

    def on_cancel(self, partition: str, job: Any) -> None:
        self._held("on_cancel", job)
