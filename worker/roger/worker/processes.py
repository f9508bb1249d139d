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
import time
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
BACKSTOP = 5.0  # seconds after the child's own watchdog should have reported


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

    # -- children ------------------------------------------------------------------
    def _spawn(self, q: QueueState) -> None:
        child = ChildProc(q.name, self.spec, self.ioloop, self._frames, self._child_exit)
        q.children.append(child)

    def _frames(self, child: ChildProc, batch: list[dict[str, Any]]) -> None:
        q = self.queues[child.queue]
        for f in batch:
            kind = f.get("t")
            if kind == "o":
                self._outcome(child, f)
            elif kind == "d":
                self._done(q, child, f)
            elif kind == "ready":
                child.ready = True
                q.idle.append(child)
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
        self._pump(q)

    def _pump(self, q: QueueState) -> None:
        while q.idle and (q.hook_backlog or q.pending):
            child = q.idle.popleft()
            if not child.alive or child.task is not None:
                continue
            if q.hook_backlog:
                hook_task = q.hook_backlog.popleft()
                child.task = hook_task
                child.send(hook_task.frame)
            else:
                self._dispatch(child, q.pending.popleft())

    def _dispatch(self, child: ChildProc, task: Task) -> None:
        task.started, task.started_at = time.monotonic(), time.time()
        frame = b'{"t":"run","k":%d,"b":%d,"s":%d,"job":%b}' % (
            task.key,
            task.bury,
            task.skip_before,
            task.body,
        )
        child.task = task
        if not child.send(frames.encode_raw(frame)):
            child.task = None
            task.queue.pending.appendleft(task)
            return
        self.telemetry.running(task.queue.name, 1)
        if not task.skip_before:
            self._emit(task, "before_run")
        met = task.max_execution_time()
        if met:
            delay = met + self.config.callback_timeout + BACKSTOP
            task.timer = self.ioloop.call_later(delay, partial(self._backstop, child, task))

    def _backstop(self, child: ChildProc, task: Task) -> None:
        if child.task is task and not task.settled:
            log.warning("job %s did not stop at its deadline: killing %d", task.msg.id, child.pid)
            child.cause = "timeout"
            child.kill()

    def _late(self, child: ChildProc, f: dict[str, Any]) -> None:
        task = child.task
        if task is None or task.key != f.get("k"):
            return
        phase, callback = str(f.get("phase")), str(f.get("cb"))
        if phase == "job":
            child.cause = "timeout"
        else:
            log.warning(
                "callback %s.%s hung past %ss: killing job process %d",
                callback,
                phase,
                self.config.callback_timeout,
                child.pid,
            )
            self.telemetry.callback_failed(callback, phase, "timeout")
            child.cause = "hook"
        child.kill()

    def _child_exit(self, child: ChildProc) -> None:
        q = self.queues[child.queue]
        if child in q.children:
            q.children.remove(child)
        task, child.task = child.task, None
        cause = child.cause
        if self.finished or cause == "shutdown":
            return
        if isinstance(task, HookTask):
            if cause is None:  # a hang was counted (with its callback) when reported late
                self.telemetry.callback_failed("unknown", task.hook, "crash")
        elif isinstance(task, Task) and task.settled and cause is None:
            self.telemetry.callback_failed("unknown", "unknown", "crash")
        elif isinstance(task, Task) and not task.settled:
            self.telemetry.running(q.name, -1)
            if cause == "hook":  # before_run hung: run the job again without it
                task.skip_before = True
                q.pending.appendleft(task)
            elif cause == "cancel":
                self.features.killed(task)
            elif cause == "timeout":
                met = task.max_execution_time()
                self._failed(
                    task,
                    (TIMEOUT, f"exceeded max_execution_time of {met:g}s"),
                    None,
                    time.monotonic() - task.started,
                    hooks_elsewhere=True,
                )
            else:
                code = child.exit_code()
                self._failed(
                    task,
                    (WORKER_CRASH, f"job process exited (code {code})"),
                    None,
                    time.monotonic() - task.started,
                    hooks_elsewhere=True,
                )
        if cause is None:
            log.warning(
                "job process %d exited (code %s); starting another", child.pid, child.exit_code()
            )
        self._spawn(q)
        self._maybe_finish()

    # -- outcomes ------------------------------------------------------------------
    def _outcome(self, child: ChildProc, f: dict[str, Any]) -> None:
        task = child.task
        if not isinstance(task, Task) or task.key != f.get("k") or task.settled:
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
        if f.get("ok"):
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

    def _done(self, q: QueueState, child: ChildProc, f: dict[str, Any]) -> None:
        task = child.task
        if task is None or task.key != f.get("k"):
            return
        for callback, hook, reason in f.get("f") or ():
            self.telemetry.callback_failed(str(callback), str(hook), str(reason))
        child.task = None
        if child.alive:
            q.idle.append(child)
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
