"""One job process seen from the worker: spawn it, talk to it, kill it; and what every job
process is told (``job_process_spec``) and how many a queue gets by default
(``available_cpus``).

Children are started with ``subprocess`` (never ``fork`` from a process that has
threads) and both pipe ends are registered in the worker's event loop, so the parent stays
single-threaded. Writes never block the loop: what the pipe does not take at once waits in
a buffer and leaves when the pipe turns writable. A child that dies shows up as EOF.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from roger.core import frames
from roger.core.config import WorkerConfig

log = logging.getLogger("roger.worker")
READ = 0x0001  # pika.adapters.select_connection.READ
WRITE = 0x0004  # pika.adapters.select_connection.WRITE
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"

if TYPE_CHECKING:
    from roger.worker.tasks import HookTask, Task


def available_cpus() -> int:
    """CPUs this worker may use: its affinity mask, capped by a cgroup v2 CPU limit (a
    pod's ``resources.limits.cpu``), at least 1."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open(CGROUP_CPU_MAX) as f:
            quota, _, period = f.read().partition(" ")
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def job_process_spec(config: WorkerConfig, sys_path: Sequence[str]) -> str:
    """What a job process needs to know (its ``--spec``): jobs, callbacks, timeouts."""
    return json.dumps(
        {
            "partition": config.partition,
            "jobs": list(config.jobs),
            "callbacks": [
                {"path": c.path, "hooks": list(c.hooks), "config": dict(c.config)}
                for c in config.callbacks
            ],
            "callback_timeout": config.callback_timeout,
            "sys_path": list(sys_path),
        }
    )


class ChildProc:
    """One job process: its pipes, its readiness and the tasks its slots are running."""

    def __init__(
        self,
        queue: str,
        slots: int,
        spec_json: str,
        ioloop: Any,
        on_frames: Callable[[ChildProc, list[frames.ToParent]], None],
        on_exit: Callable[[ChildProc], None],
    ) -> None:
        self.queue = queue
        self.ioloop = ioloop
        self.on_frames, self.on_exit = on_frames, on_exit
        to_child_r, self.wfd = os.pipe()
        self.rfd, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "roger.worker.child",
                    "--rfd",
                    str(to_child_r),
                    "--wfd",
                    str(from_child_w),
                    "--parent",
                    str(os.getpid()),
                    "--slots",
                    str(slots),
                    "--spec",
                    spec_json,
                ],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.pid = self.proc.pid
        self.slots = slots
        self.reader = frames.parent_reader()
        self.ready = False
        self.alive = True
        # Why we killed it ("timeout", "hook", "cancel", "shutdown", "crash"); None: it died.
        self.cause: str | None = None
        self.cause_key: int | None = None  # the task it was killed for (others are bystanders)
        self.tasks: dict[int, Task | HookTask] = {}  # key -> what a slot runs
        self.unsent: list[bytes] = []  # frames queued by the current loop turn
        self.quarantine = False  # runs suspects one at a time, never regular jobs
        self.backlog = b""  # written, not yet taken by the pipe
        self.backlog_since = 0.0  # monotonic time the backlog started (0: none)
        self.started_at = time.monotonic()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        ioloop.add_handler(self.rfd, self._readable, READ)

    @property
    def free(self) -> int:
        return self.slots - len(self.tasks) if self.alive and self.ready else 0

    def queue_frame(self, data: bytes) -> None:
        """Send with the next ``flush`` (one write per loop turn, not per job)."""
        self.unsent.append(data)

    def flush(self) -> bool:
        """Write the queued frames; False if the child is gone."""
        data, self.unsent = b"".join(self.unsent), []
        return self.send(data) if data else True

    def send(self, data: bytes) -> bool:
        """Write whole frames without blocking; False if the child is gone (its EOF
        handler cleans up). What the pipe cannot take now leaves when it is writable."""
        if not self.alive:
            return False
        if self.backlog:
            self.backlog += data
            return True
        try:
            sent = os.write(self.wfd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        if sent < len(data):
            self.backlog, self.backlog_since = data[sent:], time.monotonic()
            self.ioloop.add_handler(self.wfd, self._writable, WRITE)
        return True

    def _writable(self, fd: int, events: int) -> None:
        try:
            sent = os.write(fd, self.backlog)
        except BlockingIOError:
            return
        except OSError:
            self.backlog = b""
            self.ioloop.remove_handler(fd)
            return  # the read side sees EOF and reaps it
        self.backlog = self.backlog[sent:]
        if not self.backlog:
            self.backlog_since = 0.0
            self.ioloop.remove_handler(fd)

    def _readable(self, fd: int, events: int) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._gone()
            return
        try:
            batch = self.reader.feed(data)
        except frames.FrameError as exc:
            log.error("job process %d wrote garbage (%s); killing it", self.pid, exc)
            self.kill("crash")  # every task in it is treated as crashed
            return
        self.on_frames(self, batch)

    def kill(self, cause: str, key: int | None = None) -> None:
        """SIGKILL: the only way to stop a job stuck in a blocking call.

        ``key`` names the task it is killed for; the other tasks of its slots are
        bystanders, put back by the exit handler.
        """
        if self.alive:
            self.cause, self.cause_key = cause, key
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._gone()

    def close(self) -> None:
        """Ask an idle child to exit: it stops when its pipe closes."""
        if self.alive:
            self._release()

    def _release(self) -> None:
        self.alive = False
        self.ioloop.remove_handler(self.rfd)
        if self.backlog:
            self.backlog = b""
            self.ioloop.remove_handler(self.wfd)
        os.close(self.wfd)
        os.close(self.rfd)

    def _gone(self) -> None:
        if not self.alive:
            return
        self._release()
        try:
            self.proc.wait(timeout=1)  # it is exiting: its pipe closed
        except subprocess.TimeoutExpired:
            self._reap(0)
        self.on_exit(self)

    def _reap(self, tries: int) -> None:
        if self.proc.poll() is None and tries < 100:
            self.ioloop.call_later(0.05, lambda: self._reap(tries + 1))

    def exit_code(self) -> int | None:
        return self.proc.poll()
