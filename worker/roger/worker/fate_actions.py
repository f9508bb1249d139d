"""Doing what a job's fate is: the one place a decided fate is acted on.

``roger.core.fate.decide`` says what happens to a job after anything happened to it (pure,
unit-tested in one file); ``FateActions.carry_out`` does it with the worker's collaborators:
acknowledge through the ``Ledger``, publish a retry, burial, park, requeue or delay through
the ``Outbox`` (acknowledged once confirmed), free the ``PartitionFeatures``' keys (a
leaving job's queue key before it is settled), report
lifecycle events and outcomes, run the failure hooks, kill a stopped job's process. It keeps
no state of its own: every collaborator belongs to the ``Worker`` (runtime.py), which hands
each finished or dropped job here.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Protocol

from roger.core import fate
from roger.core.hooks import HookName
from roger.core.message import retry_body
from roger.worker.ledger import Ledger
from roger.worker.outbox import Outbox
from roger.worker.partition import PartitionFeatures
from roger.worker.pool import JobPool
from roger.worker.tasks import RunHooks, Task
from roger.worker.telemetry import Telemetry

log = logging.getLogger("roger.worker")


class Emit(Protocol):
    def __call__(
        self,
        task: Task,
        hook: HookName,
        error: tuple[str, str] | None = None,
        duration: float | None = None,
    ) -> None:
        """Report a lifecycle event of ``task`` to every observer."""


class FateActions:
    def __init__(
        self,
        *,
        ledger: Ledger,
        outbox: Outbox,
        features: PartitionFeatures,
        pool: JobPool,
        ioloop: Any,
        telemetry: Telemetry,
        emit: Emit,
        run_hooks: RunHooks,
    ) -> None:
        self.ledger, self.outbox, self.features, self.pool = ledger, outbox, features, pool
        self.ioloop, self.telemetry = ioloop, telemetry
        self.emit, self.run_hooks = emit, run_hooks

    def carry_out(
        self,
        task: Task,
        happened: fate.Happened,
        duration: float | None,
        hooks_ran: bool = True,
    ) -> None:
        """Do what ``fate.decide`` says (``duration``: None when the job was not running;
        ``hooks_ran``: False when the hooks run beside a job that returned were cut short).

        A hook that runs apart from the job runs before the job is settled: a worker dying
        in between leaves the job to be delivered again, never settled without its hook.
        """
        decided = fate.decide(happened, task.facts)
        q, msg = task.queue, task.msg
        task.settled = not isinstance(decided, fate.Rerun | fate.Stop)
        match decided:
            case fate.Ack():
                self.emit(task, "after_run", duration=duration)
                self.telemetry.outcome(q.name, msg.name, decided.outcome, duration)
                settle = partial(self.ledger.settle, task.epoch, task.tag)
                finish = partial(self.features.finished, task, True, settle)
                if hooks_ran:
                    finish()
                else:
                    self.run_hooks(task, "after_run", None, finish)
            case fate.Retry() | fate.Bury():
                stack = happened.stack if isinstance(happened, fate.Raised) else None
                body = retry_body(msg) if isinstance(decided, fate.Retry) else None
                if isinstance(decided, fate.Retry) and body is None:
                    log.warning("job %s: its retry would be too large; buried", msg.id)
                    decided = fate.retry_too_large(decided)
                finish = partial(
                    self.features.finished,
                    task,
                    isinstance(decided, fate.Bury),
                    partial(self.outbox.failed, task, decided, stack, body),
                )
                self.emit(task, decided.hook, error=decided.error, duration=duration)
                self.telemetry.outcome(q.name, msg.name, decided.outcome, duration)
                if isinstance(happened, fate.Raised) and hooks_ran:  # ran beside the job
                    finish()
                else:
                    self.run_hooks(task, decided.hook, decided.error, finish, stack)
            case fate.Park(reason=reason):
                detail = "refused by the job process"
                park = partial(
                    self.outbox.park, q, task.epoch, task.tag, task.props, task.body, reason, detail
                )
                self.features.finished(task, leaving=True, then=park)
            case fate.CancelJob():
                self.features.cancelled(task)
            case fate.Requeue(why=why):
                log.info("job %s back to its queue: %s", msg.id, why)
                self.features.finished(task, leaving=False)
                self.outbox.requeue(task)
            case fate.Quarantine():
                q.suspect(msg.id)
                self.features.finished(task, leaving=False)
                self.ledger.requeue(task.epoch, task.tag)
            case fate.Rerun():
                self.pool.rerun(task)
            case fate.Drop(why=why):
                log.info("job %s dropped here: %s", msg.id, why)
                self.features.finished(task, leaving=False)
            case fate.Stop(why=why):
                log.info("job %s stopped: %s", msg.id, why)
                self.features.finished(task, leaving=False)
                # Killed once its epoch is dead, so that the jobs beside it are not
                # requeued (the broker has them too); reported ConnectionLost: Abandon.
                self.ioloop.call_later(0, partial(self.pool.kill, msg.id, "ack_timeout"))
            case fate.Delay(seconds=seconds):
                log.info("job %s not due for %.1fs: into the delay queues again", msg.id, seconds)
                self.features.finished(task, leaving=False)
                self.outbox.delay(task, seconds)
            case fate.Abandon():
                pass
