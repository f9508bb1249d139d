"""The worker's side of its job processes: dispatch, deadlines, outcomes, deaths.

A mixin of ``Worker`` (kept apart to keep each module small); it runs on the worker's
event loop like the rest. A child reports ``o`` (outcome) as soon as its job returns and
``d`` (done) after the hooks; a child that dies or is killed for a deadline is replaced,
and the hooks it owed run, without state, in another child.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections import deque
from functools import partial
from typing import Any

from roger.core import frames
from roger.core.config import WorkerConfig
from roger.core.hooks import TIMEOUT, WORKER_CRASH, HookName
from roger.core.settle import Retry, on_failure
from roger.worker.outbox import Outbox
from roger.worker.pool import ChildProc
from roger.worker.tasks import HookTask, QueueState, Task
from roger.worker.telemetry import Telemetry

log = logging.getLogger("roger.worker")
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"
BACKSTOP = 5.0  # seconds after the child's own watchdog should have reported


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


class JobProcesses:
    config: WorkerConfig
    partition: str
    levels: tuple[int, ...]
    queues: dict[str, QueueState]
    telemetry: Telemetry
    outbox: Outbox
    features: Any
    ioloop: Any
    spec: str
    keys: itertools.count[int]
    finished: bool

    # Provided by Worker.
    def _emit(
        self,
        task: Task,
        hook: HookName,
        error: tuple[str, str] | None = None,
        duration: float | None = None,
    ) -> None:
        raise NotImplementedError

    def _settle(self, q: QueueState, tag: int, gen: int) -> None:
        raise NotImplementedError

    def _cancel_timer(self, task: Task) -> None:
        raise NotImplementedError

    def _park(
        self, q: QueueState, tag: int, gen: int, props: Any, body: bytes, reason: str, detail: str
    ) -> None:
        raise NotImplementedError

    def _maybe_finish(self) -> None:
        raise NotImplementedError

    def _consume(self, q: QueueState) -> None:
        raise NotImplementedError

    def _fatal(self, why: str) -> None:
        raise NotImplementedError

    def _requeue(self, task: Task) -> None:
        raise NotImplementedError

    # -- children ------------------------------------------------------------------
    def _spawn(self, q: QueueState, slots: int) -> None:
        child = ChildProc(q.name, slots, self.spec, self.ioloop, self._frames, self._child_exit)
        q.children.append(child)

    def _frames(self, child: ChildProc, batch: list[dict[str, Any]]) -> None:
        q = self.queues[child.queue]
        for f in batch:
            kind = f.get("t")
            if kind == "od":
                self._outcome(child, f, ok=True)
                self._done(child, f)
            elif kind == "o":
                self._outcome(child, f)
            elif kind == "d":
                self._done(child, f)
            elif kind == "ready":
                child.ready = True
                if not q.warm and all(c.ready for c in q.children):
                    q.warm = True
                    if q.want:
                        q.want = False
                        self._consume(q)
            elif kind == "late":
                self._late(child, f)
            elif kind == "fatal":
                self._fatal(f"a job process could not start: {f.get('error')}")
                return
        self._pump_soon(q)

    def _pump_soon(self, q: QueueState) -> None:
        """Dispatch at the end of this loop turn, so every delivery and outcome read in
        one turn goes out in one write per job process."""
        if not q.pump_scheduled:
            q.pump_scheduled = True
            self.ioloop.call_later(0, partial(self._pump, q))

    def _pump(self, q: QueueState) -> None:
        """Hand waiting work to free slots: suspects to the quarantine, the rest to the
        regular job processes."""
        q.pump_scheduled = False
        if q.suspect_pending:
            self._pump_suspects(q)
        if q.hook_backlog or q.pending:
            regular = [c for c in q.children if c.free > 0 and not c.quarantine]
            self._fill(regular, q.hook_backlog, q.pending)

    def _pump_suspects(self, q: QueueState) -> None:
        """One suspect at a time in the quarantine process, started on demand."""
        if q.quarantine is None or not q.quarantine.alive:
            child = ChildProc(q.name, 1, self.spec, self.ioloop, self._frames, self._child_exit)
            child.quarantine = True
            q.quarantine = child
            q.children.append(child)
            return  # its "ready" frame pumps again
        if q.quarantine.free:
            self._fill([q.quarantine], deque(), q.suspect_pending)

    def _fill(self, children: list[ChildProc], hooks: deque[HookTask], jobs: deque[Task]) -> None:
        """Fill the free slots of ``children`` from ``hooks``, then ``jobs``, spreading the
        work over the processes, with one write each. What a process that died never read
        goes back where it came from."""
        touched: list[ChildProc] = []
        while children and (hooks or jobs):
            still_open = []
            for child in children:
                if hooks:
                    hook_task = hooks.popleft()
                    child.tasks[hook_task.key] = hook_task
                    child.queue_frame(hook_task.frame)
                elif jobs:
                    self._dispatch(child, jobs.popleft())
                else:
                    break
                if child not in touched:
                    touched.append(child)
                if child.free > 0:
                    still_open.append(child)
            children = still_open
        for child in touched:
            sent = [t for t in child.tasks.values() if isinstance(t, Task) and not t.started]
            if child.flush():
                for task in sent:
                    self._started(child, task)
            else:  # it died before reading them: they never started
                for task in child.tasks.values():
                    if isinstance(task, HookTask):
                        hooks.appendleft(task)
                    elif not task.started:
                        jobs.appendleft(task)
                child.tasks = {
                    k: t for k, t in child.tasks.items() if isinstance(t, Task) and t.started
                }

    def _dispatch(self, child: ChildProc, task: Task) -> None:
        frame = b'{"t":"run","k":%d,"b":%d,"s":%d,"job":%b}' % (
            task.key,
            task.bury,
            task.skip_before,
            task.body,
        )
        child.tasks[task.key] = task
        child.queue_frame(frames.encode_raw(frame))

    def _started(self, child: ChildProc, task: Task) -> None:
        """The job process has the job: it runs from now."""
        task.started, task.started_at = time.monotonic(), time.time()
        self.telemetry.running(task.queue.name, 1)
        if not task.skip_before:
            self._emit(task, "before_run")
        met = task.max_execution_time()
        if met:
            delay = met + self.config.callback_timeout + BACKSTOP
            task.timer = self.ioloop.call_later(delay, partial(self._backstop, child, task))

    def _backstop(self, child: ChildProc, task: Task) -> None:
        if child.tasks.get(task.key) is task and not task.settled:
            log.warning("job %s did not stop at its deadline: killing %d", task.msg.id, child.pid)
            child.kill("timeout", task.key)

    def _late(self, child: ChildProc, f: dict[str, Any]) -> None:
        task = child.tasks.get(f.get("k"))  # type: ignore[arg-type]
        if task is None:
            return
        phase, callback = str(f.get("phase")), str(f.get("cb"))
        if phase == "job":
            if task.settled:
                return
            child.kill("timeout", task.key)
            return
        log.warning(
            "callback %s.%s hung past %ss: killing job process %d",
            callback,
            phase,
            self.config.callback_timeout,
            child.pid,
        )
        self.telemetry.callback_failed(callback, phase, "timeout")
        child.kill("hook", task.key)

    def _child_exit(self, child: ChildProc) -> None:
        q = self.queues[child.queue]
        if child in q.children:
            q.children.remove(child)
        tasks, child.tasks = child.tasks, {}
        cause = child.cause
        if self.finished or cause == "shutdown":
            return
        crashed = cause in (None, "crash")
        if crashed:
            log.warning(
                "job process %d exited (code %s); starting another", child.pid, child.exit_code()
            )
        unsettled = [t for t in tasks.values() if isinstance(t, Task) and not t.settled]
        # Several jobs and no way to tell which one killed it: none is charged; each of
        # them runs alone once (quarantine), where a crash names its culprit.
        unknown_culprit = crashed and not child.quarantine and len(unsettled) > 1
        for key, task in tasks.items():
            if unknown_culprit and task in unsettled:
                assert isinstance(task, Task)
                q.suspect(task.msg.id)
                self._bystander(task)
            elif crashed or key == child.cause_key:
                self._lost_task(child, task, "crash" if crashed else str(cause))
            else:
                self._bystander(task)
            if isinstance(task, Task) and child.quarantine:
                q.suspects.pop(task.msg.id, None)
        if child.quarantine:
            self._pump_soon(q)
            self._maybe_finish()
            return
        self._spawn(q, child.slots)
        self._pump_soon(q)
        self._maybe_finish()

    def _lost_task(self, child: ChildProc, task: Task | HookTask, cause: str) -> None:
        """The task its process died of (or with, when we cannot tell which one it was)."""
        q = task.queue
        if isinstance(task, HookTask):
            if cause == "crash":  # a hang was counted (with its callback) when reported late
                self.telemetry.callback_failed("unknown", task.hook, "crash")
            return
        if task.settled:
            if cause == "crash":
                self.telemetry.callback_failed("unknown", "unknown", "crash")
            return
        self.telemetry.running(q.name, -1)
        if cause == "hook":  # before_run hung: run the job again without it
            self._cancel_timer(task)
            task.skip_before = True
            task.started = 0.0
            q.pending.appendleft(task)
        elif cause == "cancel":
            self.features.killed(task)
        else:
            error = (
                (TIMEOUT, f"exceeded max_execution_time of {task.max_execution_time():g}s")
                if cause == "timeout"
                else (WORKER_CRASH, f"job process exited (code {child.exit_code()})")
            )
            duration = time.monotonic() - task.started
            self._failed(task, error, None, duration, hooks_elsewhere=True)

    def _bystander(self, task: Task | HookTask) -> None:
        """A task of a process killed for another job (or that died of an unknown one):
        not charged, it runs again (a job from the start, on another slot; hooks too)."""
        q = task.queue
        if isinstance(task, HookTask):
            q.hook_backlog.appendleft(task)
            return
        if task.settled:  # only its after_run / on_error / on_buried were cut short
            self.telemetry.callback_failed("unknown", "unknown", "interrupted")
            return
        self.telemetry.running(q.name, -1)
        self._cancel_timer(task)
        log.info("job %s interrupted (its job process was killed or died): requeued", task.msg.id)
        self.features.finished(task, leaving=False)
        self._requeue(task)

    # -- outcomes ------------------------------------------------------------------
    def _outcome(self, child: ChildProc, f: dict[str, Any], ok: bool = False) -> None:
        task = child.tasks.get(f.get("k"))  # type: ignore[arg-type]
        if not isinstance(task, Task) or task.settled:
            return
        if "invalid" in f:
            task.settled = True
            self.telemetry.running(task.queue.name, -1)
            self.features.finished(task, leaving=True)
            self._park(
                task.queue,
                task.tag,
                task.gen,
                task.props,
                task.body,
                str(f["invalid"]),
                "refused by the job process",
            )
            return
        duration = float(f.get("d", 0.0))
        if ok or f.get("ok"):
            task.settled = True
            self._cancel_timer(task)
            self.telemetry.running(task.queue.name, -1)
            self._emit(task, "after_run", duration=duration)
            self.telemetry.outcome(task.queue.name, task.msg.name, "succeeded", duration)
            self.features.finished(task, leaving=True)
            self._settle(task.queue, task.tag, task.gen)
        else:
            err = f.get("err") or ["Exception", ""]
            self.telemetry.running(task.queue.name, -1)
            self._failed(task, (str(err[0]), str(err[1])), f.get("st"), duration)

    def _done(self, child: ChildProc, f: dict[str, Any]) -> None:
        task = child.tasks.pop(f.get("k"), None)  # type: ignore[arg-type]
        if task is None:
            return
        q = self.queues[child.queue]
        if child.quarantine and isinstance(task, Task):
            q.suspects.pop(task.msg.id, None)  # it ran alone and did not crash
            if not q.suspect_pending and not child.tasks and child in q.children:
                q.children.remove(child)  # no more suspects: let it go
                q.quarantine = None
                child.close()
        for callback, hook, reason in f.get("f") or ():
            self.telemetry.callback_failed(str(callback), str(hook), str(reason))
        self._maybe_finish()

    def _failed(
        self,
        task: Task,
        error: tuple[str, str],
        stack: str | None,
        duration: float,
        hooks_elsewhere: bool = False,
    ) -> None:
        task.settled = True
        self._cancel_timer(task)
        q, msg = task.queue, task.msg
        decision = on_failure(task.job.retryable, msg.retry_count, self.levels)
        hook: HookName = "on_error" if isinstance(decision, Retry) else "on_buried"
        outcome = "retried" if isinstance(decision, Retry) else "buried"
        self.outbox.failed(task, decision if isinstance(decision, Retry) else None, error, stack)
        self.features.finished(task, leaving=outcome == "buried")
        self._emit(task, hook, error=error, duration=duration)
        self.telemetry.outcome(q.name, msg.name, outcome, duration)
        if hooks_elsewhere and self.config.callbacks:
            hook_key = next(self.keys)  # the child answers with this key
            frame = frames.encode(
                {
                    "t": "hooks",
                    "k": hook_key,
                    "hook": hook,
                    "err": list(error),
                    "st": stack,
                    "at": task.started_at,
                    "job": json.loads(task.body),
                }
            )
            q.hook_backlog.append(HookTask(hook_key, q, hook, frame))
