"""A job process: runs up to ``--slots`` jobs at once with their hooks, told what to do
over a pipe.

Started by the worker with ``python -m roger.worker.child``. Each slot thread runs
``before_run``, the job and ``after_run`` / ``on_error`` / ``on_buried`` itself, so
callback state never crosses processes. A slot reports the job's outcome as soon as the
job returns (its deadline is over, a cancel no longer kills it, and the outcome stands if
the hooks are cut short), then ``done`` once the hooks have run: the parent settles the
job then, so that hooks are at-least-once like jobs. The watchdog reports a job or hook
that overruns its deadline; the parent then kills this process (the only way to stop a
blocking call) and puts its other jobs back.
"""

from __future__ import annotations

import argparse
import contextlib
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
from roger.worker import callbacks
from roger.worker.slots import Inbox, Results, Slot, Watchdog

PR_SET_PDEATHSIG = 1
WATCH_INTERVAL = 0.05
SLOT_STACK_SIZE = 1 << 20  # jobs get a normal-sized stack; 8 MiB each adds up with many slots

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


def _batch_scheduling() -> None:
    """SCHED_BATCH: same CPU share, but a job process woken by the worker's write does not
    preempt the worker's event loop (which keeps consuming, acking and heartbeating)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def _exit(code: int) -> None:
    """End the whole process now (other slot threads included), output flushed."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _done_frame(key: int, failures: list[frames.CallbackFailure]) -> bytes:
    return frames.encode(frames.Done(key, tuple(failures)))


class Child:
    def __init__(self, rfd: int, wfd: int, spec: dict[str, Any], slots: int) -> None:
        self.partition: str = spec["partition"]
        self.callback_timeout: float = float(spec["callback_timeout"])
        self.results = Results(wfd)
        self.slots = [Slot() for _ in range(max(1, slots))]
        self.inbox = Inbox(rfd, self.results, len(self.slots))
        self.registry = JobRegistry(importlib.import_module(m) for m in spec["jobs"])
        self.hooks: dict[str, list[Hook]] = {}
        for cb in spec["callbacks"]:
            obj = callbacks.instantiate(cb["path"], cb["config"], os.environ)
            for hook in implemented_hooks(obj):
                if hook in cb["hooks"]:
                    self.hooks.setdefault(hook, []).append((cb["path"], getattr(obj, hook)))

    def call_hooks(
        self,
        slot: Slot,
        key: int,
        hook: HookName,
        args: tuple[Any, ...],
        states: dict[str, Any] | None,
        failures: list[frames.CallbackFailure],
    ) -> dict[str, Any]:
        """Run one hook on every callback; a failure is recorded, never raised.

        ``states`` None means ``before_run`` (no state argument); it returns the states.
        """
        out: dict[str, Any] = {}
        for name, fn in self.hooks.get(hook, ()):
            slot.watch = (key, hook, name, time.monotonic() + self.callback_timeout)
            try:
                if states is None:
                    out[name] = fn(self.partition, *args)
                else:
                    fn(self.partition, *args, states.get(name))
            except BaseException as exc:  # a callback never changes the outcome
                failures.append((name, hook, "exception"))
                print(
                    f"roger: callback {name}.{hook} raised {type(exc).__name__}: {exc}",
                    file=sys.stderr,
                    flush=True,
                )
        slot.watch = None
        return out

    def run(self, slot: Slot, frame: frames.Run) -> None:
        key, data = frame.key, frame.job
        failures: list[frames.CallbackFailure] = []
        found = self.registry.lookup(data["name"])
        if not isinstance(found, JobDefinition):
            self.results.add(frames.encode(frames.Outcome(key, invalid=found)))
            self.results.add(_done_frame(key, failures))
            return
        started = time.time()
        job = Job.from_fields(data, started)
        states = (
            self.call_hooks(slot, key, "before_run", (job,), None, failures)
            if "before_run" in self.hooks and not frame.skip_before
            else {}
        )
        met = data.get("max_execution_time") or found.max_execution_time
        t0 = time.monotonic()
        slot.watch = (key, "job", "", t0 + met) if met else None
        try:
            result = found.func(data["args"])
        except BaseException as exc:  # every failure is an outcome
            slot.watch = None
            error = (type(exc).__name__, str(exc)[:2000])
            stack = traceback.format_exc()[-8000:]
            duration = time.monotonic() - t0
            self.results.add(frames.encode(frames.Outcome(key, duration, started, error, stack)))
            hook = frame.failure_hook
            self.call_hooks(slot, key, hook, (job, error, stack), states, failures)
        else:
            slot.watch = None
            duration = time.monotonic() - t0
            token = self.results.add(frames.encode_ok(key, duration, started))
            if "after_run" in self.hooks:
                self.call_hooks(slot, key, "after_run", (job, result), states, failures)
            # The usual case: the outcome has not left yet, so outcome and done go as one.
            if not failures and self.results.replace(
                token, frames.encode_ok_done(key, duration, started)
            ):
                return
        self.results.add(_done_frame(key, failures))

    def hooks_only(self, slot: Slot, frame: frames.RunHooks) -> None:
        """A hook apart from its job: on_cancel; on_error / on_buried of a job whose process
        was killed; any hook whose job process died while running it. No state (None);
        ``after_run`` gets the result None: it died with that process."""
        key = frame.key
        failures: list[frames.CallbackFailure] = []
        job = Job.from_fields(frame.job, frame.started_at)
        if frame.hook == "on_cancel":  # on_cancel(partition, job): no error, no state
            self.call_hooks(slot, key, "on_cancel", (job,), None, failures)
        elif frame.hook == "after_run":
            self.call_hooks(slot, key, "after_run", (job, None), {}, failures)
        else:
            err = frame.error or ("", "")
            self.call_hooks(slot, key, frame.hook, (job, err, frame.stack), {}, failures)
        self.results.add(_done_frame(key, failures))

    def slot_loop(self, slot: Slot) -> None:
        """Take and run frames until the pipe closes; any breakage ends the process, so
        the worker sees it (EOF) instead of waiting for a slot that died quietly."""
        try:
            while (frame := self.inbox.take()) is not None:
                if isinstance(frame, frames.Run):
                    self.run(slot, frame)
                else:
                    self.hooks_only(slot, frame)
        except OSError:  # the worker is gone or shut down: nothing left to report to
            _exit(0)
        except BaseException:
            traceback.print_exc()
            _exit(70)
        _exit(0)  # the worker closed our pipe: it only does that to an idle process

    def serve(self) -> None:
        dog = Watchdog(self.slots, self.results, WATCH_INTERVAL, lambda: _exit(0))
        threading.Thread(target=dog.run, name="roger-watchdog", daemon=True).start()
        threading.stack_size(SLOT_STACK_SIZE)
        for i, slot in enumerate(self.slots):
            name = f"roger-slot-{i}"
            threading.Thread(target=self.slot_loop, args=(slot,), name=name, daemon=True).start()
        self.results.send(frames.Ready(os.getpid(), len(self.slots)))
        try:
            self.inbox.read_forever()
        except OSError:  # the worker is gone: nothing left to report to
            _exit(0)
        except BaseException:
            traceback.print_exc()
            _exit(70)
        # The worker closed our pipe; it does that only when we are idle.


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="roger.worker.child")
    parser.add_argument("--rfd", type=int, required=True)
    parser.add_argument("--wfd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--spec", required=True)
    opts = parser.parse_args(argv)
    _die_with_parent(opts.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker to handle
    spec = json.loads(opts.spec)
    _batch_scheduling()
    sys.path[:] = spec["sys_path"]
    try:
        child = Child(opts.rfd, opts.wfd, spec, opts.slots)
    except BaseException as exc:  # reported to the worker, which exits
        msg = f"{type(exc).__name__}: {exc}"
        os.write(opts.wfd, frames.encode(frames.Fatal(msg)))
        sys.exit(3)
    try:
        child.serve()
    except BrokenPipeError:  # the worker is gone or shut down: nothing left to report to
        os._exit(0)


if __name__ == "__main__":
    main()
