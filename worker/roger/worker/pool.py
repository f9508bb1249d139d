"""The job-process pool: which process runs which job, deadlines, and deaths.

The pool hands jobs to free slots of a queue's job processes, watches their deadlines,
and turns whatever a job process says or suffers into one ``Happened`` per job (from
``roger.core.fate``), reported to its ``PoolHost``. It never decides a job's fate: the
host does (``roger.core.fate.decide``) and answers with ``rerun`` or ``run_hooks`` where
the fate needs the pool again.

A job process that dies on its own with several jobs cannot name its culprit: each of
them runs once alone in the queue's one-slot quarantine process, where a crash does.

One class past 400 lines on purpose: every change to the work a job process holds (handed
out, reported, done, cut short by a death) is made here, nowhere else.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Protocol

from roger.core import fate, frames
from roger.core.hooks import HookName
from roger.worker.procs import ChildProc
from roger.worker.tasks import HookTask, QueueState, Task
from roger.worker.telemetry import Telemetry

log = logging.getLogger("roger.worker")
# While pika decodes a burst of deliveries, hand them on in groups this big (not one write
# per job, not only at the end of the burst): bench/RESULTS.md has the A/B (8 vs 32).
DISPATCH_GROUP = 32
BACKSTOP = 5.0  # seconds after the child's own watchdog should have reported
# A job process that takes none of what is written to it for this long, or is not ready this
# long after it started, is wedged: /healthz fails so that Kubernetes restarts the pod.
WEDGED_PIPE = 60.0
WEDGED_START = 300.0
HOOK_ATTEMPTS = 3  # runs of a hook whose job process crashes under it, then given up


class PoolHost(Protocol):
    """What the pool tells the worker."""

    def job_started(self, task: Task) -> None:
        """The job process has the job: it runs from now."""

    def job_ended(
        self, task: Task, happened: fate.Happened, duration: float, hooks_ran: bool
    ) -> None:
        """The job's attempt is over (or cannot go on) because of ``happened``;
        ``hooks_ran``: False when the hooks its job process runs beside it (after_run, or
        on_error / on_buried of a ``Raised``) were cut short and must run elsewhere."""

    def queue_warm(self, q: QueueState) -> None:
        """Every first job process of ``q`` is ready to run jobs."""

    def fatal(self, why: str) -> None:
        """A job process could not start: the worker cannot run."""

    def settled_work(self) -> None:
        """Some work left the pool (the worker may be able to finish a shutdown)."""


class JobPool:
    def __init__(
        self,
        spec: str,
        ioloop: Any,
        telemetry: Telemetry,
        callback_timeout: float,
        host: PoolHost,
        spawn: Callable[..., ChildProc] = ChildProc,
    ) -> None:
        self.spec, self.ioloop, self.telemetry = spec, ioloop, telemetry
        self.callback_timeout = callback_timeout
        self.host, self.spawn = host, spawn
        self.queues: dict[str, QueueState] = {}
        self.keys = itertools.count(1)
        self.stopped = False

    # -- processes -----------------------------------------------------------------
    def start(self, q: QueueState, slots_per_process: list[int]) -> None:
        self.queues[q.name] = q
        for slots in slots_per_process:
            self._spawn(q, slots)

    def _spawn(self, q: QueueState, slots: int, quarantine: bool = False) -> ChildProc:
        child = self.spawn(q.name, slots, self.spec, self.ioloop, self._frames, self._child_exit)
        child.quarantine = quarantine
        q.children.append(child)
        return child

    def stop(self) -> None:
        """Shutdown: kill busy processes (their deliveries go back on close), close idle."""
        self.stopped = True
        for q in self.queues.values():
            for child in list(q.children):
                if child.tasks:
                    log.warning("job process %d still busy at shutdown: killed", child.pid)
                    child.kill("shutdown")
                else:
                    child.close()

    def wedged(self, now: float) -> str:
        """Why a job process is wedged ('' when none is); ``now`` is time.monotonic()."""
        for q in self.queues.values():
            for c in q.children:
                if not c.alive:
                    continue
                if c.backlog_since and now - c.backlog_since > WEDGED_PIPE:
                    return f"job process {c.pid} has read nothing for {WEDGED_PIPE:.0f}s"
                if not c.ready and now - c.started_at > WEDGED_START:
                    return f"job process {c.pid} not ready {WEDGED_START:.0f}s after it started"
        return ""

    def busy(self) -> bool:
        return any(q.hook_backlog or any(c.tasks for c in q.children) for q in self.queues.values())

    def running(self) -> Iterator[tuple[ChildProc, Task]]:
        for q in self.queues.values():
            for child in q.children:
                for task in child.tasks.values():
                    if isinstance(task, Task) and not task.settled:
                        yield child, task

    # -- work in -------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        q = task.queue
        if task.msg.id in q.suspects:
            q.suspect_pending.append(task)
        else:
            q.pending.append(task)
            if len(q.pending) >= DISPATCH_GROUP:
                self.pump(q)  # pika may be decoding many more: let the job processes start
                return
        if not q.pump_scheduled:  # once per delivery: no call when a pump is due anyway
            self.pump_soon(q)

    def rerun(self, task: Task) -> None:
        """Run again first, without ``before_run`` (its hook hung)."""
        task.skip_before, task.started, task.settled = True, 0.0, False
        task.queue.pending.appendleft(task)
        self.pump_soon(task.queue)

    def run_hooks(
        self,
        task: Task,
        hook: HookName,
        error: fate.Error | None,
        then: Callable[[], None],
        stack: str | None = None,
    ) -> None:
        """Run ``hook`` without state in some job process (the job's own one is gone or
        was cut short), then ``then()``: the job is settled after its hook, not before."""
        key = next(self.keys)  # the worker's task keys come from this counter too
        job = json.loads(task.body)  # a JSON object: the worker's decoder said so
        frame = frames.RunHooks(key, hook, error, stack, task.started_at or None, job)
        q = task.queue
        q.hook_backlog.append(HookTask(key, q, hook, frames.encode(frame), then))
        self.pump_soon(q)

    def take_waiting(self, q: QueueState, job_id: str | None = None) -> list[Task]:
        """Remove jobs not handed to a job process yet (all, or those of ``job_id``)."""
        out: list[Task] = []
        for waiting in (q.pending, q.suspect_pending):
            keep = deque(t for t in waiting if job_id is not None and t.msg.id != job_id)
            out += [t for t in waiting if job_id is None or t.msg.id == job_id]
            waiting.clear()
            waiting.extend(keep)
        return out

    def kill(self, job_id: str, cause: str) -> bool:
        """Kill the process running ``job_id`` (its other jobs are bystanders); not once the
        job has returned: its outcome stands, and its hooks finish."""
        found = False
        for child, task in list(self.running()):
            if task.msg.id == job_id and task.reported is None:
                log.info("killing job process %d for job %s (%s)", child.pid, job_id, cause)
                child.kill(cause, task.key)
                found = True
        return found

    # -- dispatch ------------------------------------------------------------------
    def pump_soon(self, q: QueueState) -> None:
        """Dispatch at the end of this loop turn, so every delivery and outcome read in
        one turn goes out in one write per job process."""
        if not q.pump_scheduled:
            q.pump_scheduled = True
            self.ioloop.call_later(0, partial(self.pump, q))

    def pump(self, q: QueueState) -> None:
        """Hand waiting work to free slots: suspects to the quarantine, the rest to the
        regular job processes."""
        q.pump_scheduled = False
        if self.stopped:
            return
        if q.suspect_pending:
            self._pump_suspects(q)
        if q.hook_backlog or q.pending:
            regular = [c for c in q.children if c.free > 0 and not c.quarantine]
            self._fill(regular, q.hook_backlog, q.pending)

    def _pump_suspects(self, q: QueueState) -> None:
        """One suspect at a time in the quarantine process, started on demand."""
        if q.quarantine is None or not q.quarantine.alive:
            q.quarantine = self._spawn(q, 1, quarantine=True)
            return  # its Ready frame pumps again
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
                    task = jobs.popleft()
                    child.tasks[task.key] = task
                    child.queue_frame(
                        frames.encode_run(task.key, task.failure_hook, task.skip_before, task.body)
                    )
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
                for work in child.tasks.values():
                    if isinstance(work, HookTask):
                        hooks.appendleft(work)
                    elif not work.started:
                        jobs.appendleft(work)
                child.tasks = {
                    k: t for k, t in child.tasks.items() if isinstance(t, Task) and t.started
                }

    def _started(self, child: ChildProc, task: Task) -> None:
        task.started, task.started_at = time.monotonic(), time.time()
        self.host.job_started(task)
        limit = task.max_execution_time()
        if limit:
            delay = limit + self.callback_timeout + BACKSTOP
            task.timer = self.ioloop.call_later(delay, partial(self._backstop, child, task))

    def _backstop(self, child: ChildProc, task: Task) -> None:
        if child.tasks.get(task.key) is task and not task.settled:
            log.warning("job %s did not stop at its deadline: killing %d", task.msg.id, child.pid)
            child.kill("timeout", task.key)

    def _end(
        self,
        task: Task,
        happened: fate.Happened,
        duration: float | None = None,
        hooks_ran: bool = True,
    ) -> None:
        if task.timer is not None:
            self.ioloop.remove_timeout(task.timer)
            task.timer = None
        if duration is None:
            duration = time.monotonic() - task.started if task.started else 0.0
        self.host.job_ended(task, happened, duration, hooks_ran)

    # -- what job processes say ------------------------------------------------------
    def _frames(self, child: ChildProc, batch: list[frames.ToParent]) -> None:
        q = self.queues[child.queue]
        for f in batch:
            if isinstance(f, frames.OkDone):  # the hot path: once per job
                self._done(child, f.key, (), fate.SUCCEEDED, f.duration)
            elif isinstance(f, frames.Outcome):
                self._outcome(child, f)
            elif isinstance(f, frames.Done):
                self._done(child, f.key, f.failures)
            elif isinstance(f, frames.Ready):
                child.ready = True
                if not q.warm and all(c.ready for c in q.children):
                    q.warm = True
                    self.host.queue_warm(q)
            elif isinstance(f, frames.Late):
                self._late(child, f)
            else:
                self.host.fatal(f"a job process could not start: {f.error}")
                return
        self.pump_soon(q)

    def _outcome(self, child: ChildProc, f: frames.Outcome) -> None:
        """The job returned; its hooks run on (``Task.reported``) until ``Done``."""
        task = child.tasks.get(f.key)
        if not isinstance(task, Task) or task.settled or task.reported is not None:
            return
        happened: fate.Happened
        if f.ok:
            happened = fate.SUCCEEDED
        elif f.invalid is not None:
            happened = fate.Refused(f.invalid)
        else:
            assert f.error is not None
            happened = fate.Raised(f.error, f.stack)
        if task.timer is not None:  # the job's deadline is over: its hooks have their own
            self.ioloop.remove_timeout(task.timer)
            task.timer = None
        task.reported, task.reported_duration = happened, f.duration

    def _done(
        self,
        child: ChildProc,
        key: int,
        failures: tuple[frames.CallbackFailure, ...],
        ok: fate.Happened | None = None,
        duration: float = 0.0,
    ) -> None:
        """The job's hooks ran (``ok``: it succeeded, told in the same frame): its outcome
        is carried out now."""
        task = child.tasks.pop(key, None)
        if task is None:
            return
        q = self.queues[child.queue]
        if isinstance(task, HookTask):
            task.then()
        elif not task.settled:
            if ok is not None:
                task.reported, task.reported_duration = ok, duration
            if task.reported is not None:  # its delivery may have died meanwhile
                happened = task.reported if task.epoch.alive else fate.ConnectionLost()
                self._end(task, happened, task.reported_duration)
        if child.quarantine and isinstance(task, Task):
            q.suspects.pop(task.msg.id, None)  # it ran alone and did not crash
            if not q.suspect_pending and not child.tasks and child in q.children:
                q.children.remove(child)  # no more suspects: let it go
                q.quarantine = None
                child.close()
        for callback, hook, reason in failures:
            self.telemetry.callback_failed(callback, hook, reason)
        self.host.settled_work()

    def _late(self, child: ChildProc, f: frames.Late) -> None:
        task = child.tasks.get(f.key)
        if task is None:
            return
        if f.phase == "job":
            if isinstance(task, Task) and not task.settled and task.reported is None:
                child.kill("timeout", task.key)
            return
        log.warning(
            "callback %s.%s hung past %ss: killing job process %d",
            f.callback,
            f.phase,
            self.callback_timeout,
            child.pid,
        )
        self.telemetry.callback_failed(f.callback, f.phase, "timeout")
        child.kill("hook", task.key)

    # -- deaths --------------------------------------------------------------------
    def _child_exit(self, child: ChildProc) -> None:
        q = self.queues[child.queue]
        if child in q.children:
            q.children.remove(child)
        tasks, child.tasks = child.tasks, {}
        cause = child.cause
        if self.stopped or cause == "shutdown":
            return
        crashed = cause in (None, "crash")
        if crashed:
            log.warning(
                "job process %d exited (code %s); starting another", child.pid, child.exit_code()
            )
        unsettled = [t for t in tasks.values() if isinstance(t, Task) and not t.settled]
        alone = child.quarantine or len(unsettled) == 1
        for key, task in tasks.items():
            if isinstance(task, HookTask):
                self._hooks_lost(task, crashed, mine=key == child.cause_key)
            elif task.settled:  # settled while it ran (its channel closed): nothing to do
                pass
            elif task.reported is not None:  # it returned; its hooks were cut short
                hung = cause == "hook" and key == child.cause_key  # counted when reported
                if not hung:
                    reason = "crash" if crashed else "interrupted"
                    self.telemetry.callback_failed("unknown", "unknown", reason)
                if not task.epoch.alive:  # delivered again: that run's hooks will run
                    self._end(task, fate.ConnectionLost())
                else:
                    self._end(task, task.reported, task.reported_duration, hooks_ran=hung)
            elif crashed:
                self._end(task, fate.ProcessDied(alone=alone, exit_code=child.exit_code()))
            elif key == child.cause_key:
                self._end(task, self._killed_for(task, str(cause)))
            elif not task.epoch.alive:  # its channel is gone: nothing to requeue
                self._end(task, fate.ConnectionLost())
            else:
                self._end(task, fate.Bystander())
            if isinstance(task, Task) and child.quarantine:
                q.suspects.pop(task.msg.id, None)
        if not child.quarantine:
            self._spawn(q, child.slots)
        self.pump_soon(q)
        self.host.settled_work()

    @staticmethod
    def _killed_for(task: Task, cause: str) -> fate.Happened:
        if cause == "timeout":
            return fate.TimedOut(task.max_execution_time() or 0.0)
        if cause == "cancel":
            return fate.Cancelled()
        if cause == "ack_timeout":  # stopped: the broker has its delivery again
            return fate.ConnectionLost()
        return fate.BeforeRunHung()  # "hook": the only hook that runs before the outcome

    def _hooks_lost(self, task: HookTask, crashed: bool, mine: bool) -> None:
        """A hook's process died under it: run it again (killed for another task, or a
        crash, up to ``HOOK_ATTEMPTS`` runs: a hook that kills its process each time must
        not hold its job forever); one that hung was counted when reported late."""
        if crashed:
            self.telemetry.callback_failed("unknown", task.hook, "crash")
        if not crashed and mine:
            task.then()  # it hung: given up, the job is settled
        elif crashed and task.attempts >= HOOK_ATTEMPTS:
            log.error(
                "hook %s crashed its job process %d times: given up", task.hook, HOOK_ATTEMPTS
            )
            task.then()
        else:
            task.attempts += crashed
            task.queue.hook_backlog.appendleft(task)
