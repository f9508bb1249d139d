"""A job process: runs one job at a time with its hooks, told what to do over a pipe.

Started by the worker with ``python -m roger.worker.child``. It runs ``before_run``, the
job and ``after_run`` / ``on_error`` / ``on_buried`` itself, so callback state never
crosses processes. It reports the job's outcome as soon as the job returns (the parent
settles the message at once), then ``done`` once the hooks have run. A watchdog thread
reports a job or hook that overruns its deadline; the parent then kills this process.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from roger.core import frames
from roger.core.hooks import HookName, implemented_hooks
from roger.core.jobs import JobDefinition, JobRegistry
from roger.core.message import Job

PR_SET_PDEATHSIG = 1
WATCH_INTERVAL = 0.05

Hook = tuple[str, Callable[..., Any]]  # (callback name, bound method)


def _die_with_parent(parent: int) -> None:
    """The kernel kills us when the worker dies, even by ``kill -9``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


class Child:
    def __init__(self, rfd: int, wfd: int, spec: dict[str, Any]) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.partition: str = spec["partition"]
        self.callback_timeout: float = float(spec["callback_timeout"])
        self.lock = threading.Lock()
        # (key, phase, callback, deadline): read by the watchdog, set by the main thread.
        self.watch: tuple[int, str, str, float] | None = None
        self.registry = JobRegistry(importlib.import_module(m) for m in spec["jobs"])
        self.failures: list[list[str]] = []
        # The outcome frame, held back while the hooks run so that outcome and done
        # usually leave in one write; the watchdog sends it if the hooks take long.
        self.deferred: bytes | None = None
        self.hooks: dict[str, list[Hook]] = {}
        for cb in spec["callbacks"]:
            module, _, cls_name = cb["path"].partition(":")
            obj = getattr(importlib.import_module(module), cls_name)(**cb["config"])
            for hook in implemented_hooks(obj):
                if hook in cb["hooks"]:
                    self.hooks.setdefault(hook, []).append((cb["path"], getattr(obj, hook)))

    def flush_outcome(self) -> None:
        """Send a held-back outcome now (hooks are taking long, or one is late)."""
        with self.lock:
            data, self.deferred = self.deferred, None
            if data is not None:
                self._write(data)

    def finish(self, tail: bytes) -> None:
        """Send the outcome (if still held back) and ``done`` in one write."""
        with self.lock:
            data, self.deferred = self.deferred, None
            self._write(data + tail if data is not None else tail)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view) :]

    def send(self, obj: dict[str, Any]) -> None:
        data = frames.encode(obj)
        with self.lock:
            self._write(data)

    def watchdog(self) -> None:
        reported = None
        while True:
            time.sleep(WATCH_INTERVAL)
            if self.deferred is not None:
                try:
                    self.flush_outcome()
                except OSError:
                    os._exit(0)
            w = self.watch
            if w is not None and w is not reported and time.monotonic() > w[3]:
                reported = w
                try:
                    self.send({"t": "late", "k": w[0], "phase": w[1], "cb": w[2]})
                except OSError:
                    os._exit(0)

    def call_hooks(
        self, key: int, hook: HookName, args: tuple[Any, ...], states: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Run one hook on every callback; a failure is reported, never raised.

        ``states`` None means ``before_run`` (no state argument); it returns the states.
        """
        out: dict[str, Any] = {}
        for name, fn in self.hooks.get(hook, ()):
            self.watch = (key, hook, name, time.monotonic() + self.callback_timeout)
            try:
                if states is None:
                    out[name] = fn(self.partition, *args)
                else:
                    fn(self.partition, *args, states.get(name))
            except BaseException as exc:  # a callback never changes the outcome
                self.failures.append([name, hook, "exception"])
                print(
                    f"roger: callback {name}.{hook} raised {type(exc).__name__}: {exc}",
                    file=sys.stderr,
                    flush=True,
                )
        self.watch = None
        return out

    def _done(self, key: int) -> dict[str, Any]:
        return {"t": "d", "k": key, "f": self.failures} if self.failures else {"t": "d", "k": key}

    def _done_frame(self, key: int) -> bytes:
        if self.failures:
            return frames.encode(self._done(key))
        return frames.encode_raw(b'{"t":"d","k":%d}' % key)  # the hot path: no json.dumps

    def run(self, frame: dict[str, Any]) -> None:
        key, data = frame["k"], frame["job"]
        self.failures = []
        found = self.registry.lookup(data["name"])
        if not isinstance(found, JobDefinition):
            self.send({"t": "o", "k": key, "invalid": found})
            self.send(self._done(key))
            return
        started = time.time()
        job = Job.from_fields(data, started)
        states = (
            self.call_hooks(key, "before_run", (job,), None)
            if "before_run" in self.hooks and not frame.get("s")
            else {}
        )
        met = data.get("max_execution_time") or found.max_execution_time
        t0 = time.monotonic()
        self.watch = (key, "job", "", t0 + met) if met else None
        try:
            result = found.func(data["args"])
        except BaseException as exc:  # every failure is an outcome
            self.watch = None
            error = [type(exc).__name__, str(exc)[:2000]]
            stack = traceback.format_exc()[-8000:]
            outcome = {"t": "o", "k": key, "ok": False, "err": error, "st": stack}
            self.deferred = frames.encode({**outcome, "d": time.monotonic() - t0, "at": started})
            hook: HookName = "on_buried" if frame.get("b") else "on_error"
            self.call_hooks(key, hook, (job, tuple(error), stack), states)
        else:
            self.watch = None
            self.deferred = frames.encode_raw(
                b'{"t":"o","k":%d,"ok":true,"d":%.6f,"at":%.6f}'
                % (key, time.monotonic() - t0, started)
            )
            if "after_run" in self.hooks:
                self.call_hooks(key, "after_run", (job, result), states)
        self.finish(self._done_frame(key))

    def hooks_only(self, frame: dict[str, Any]) -> None:
        """on_error / on_buried for a job whose process died (timeout, crash): no state."""
        key = frame["k"]
        self.failures = []
        job = Job.from_fields(frame["job"], frame.get("at"))
        if frame["hook"] == "on_cancel":  # on_cancel(partition, job): no error, no state
            self.call_hooks(key, "on_cancel", (job,), None)
        else:
            err = tuple(frame["err"])
            self.call_hooks(key, frame["hook"], (job, err, frame.get("st")), {})
        self.send(self._done(key))

    def serve(self) -> None:
        threading.Thread(target=self.watchdog, name="roger-watchdog", daemon=True).start()
        self.send({"t": "ready", "pid": os.getpid()})
        reader = frames.FrameReader()
        while True:
            data = os.read(self.rfd, 1 << 16)
            if not data:
                return  # the worker closed our pipe: it is gone or shutting down
            for frame in reader.feed(data):
                if frame["t"] == "run":
                    self.run(frame)
                elif frame["t"] == "hooks":
                    self.hooks_only(frame)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="roger.worker.child")
    parser.add_argument("--rfd", type=int, required=True)
    parser.add_argument("--wfd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--spec", required=True)
    opts = parser.parse_args(argv)
    _die_with_parent(opts.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker to handle
    spec = json.loads(opts.spec)
    sys.path[:] = spec["sys_path"]
    try:
        child = Child(opts.rfd, opts.wfd, spec)
    except BaseException as exc:  # reported to the worker, which exits
        msg = f"{type(exc).__name__}: {exc}"
        os.write(opts.wfd, frames.encode({"t": "fatal", "error": msg}))
        sys.exit(3)
    try:
        child.serve()
    except BrokenPipeError:  # the worker is gone or shut down: nothing left to report to
        os._exit(0)


if __name__ == "__main__":
    main()
