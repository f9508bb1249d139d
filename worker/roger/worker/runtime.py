"""The worker's event loop: consume, hand jobs to child processes, settle, acknowledge.

Everything here runs on one thread (pika's ioloop): deliveries, child pipes, timers and
publisher confirms are all callbacks on the same loop, so there are no locks. A message
is acknowledged only once its outcome is settled: success, retry published and confirmed,
burial confirmed, or parked in ``.invalid`` and confirmed.
"""

from __future__ import annotations

import itertools
import json
import logging
import signal
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import pika
from pika.adapters.select_connection import IOLoop

from roger.core import frames, naming, topology
from roger.core.config import WorkerConfig
from roger.core.hooks import TIMEOUT, WORKER_CRASH, HookName
from roger.core.jobs import JobDefinition, JobRegistry
from roger.core.lifecycle import LifecycleEvent, LifecycleObserver
from roger.core.message import InvalidMessage, decode, encode
from roger.core.settle import Retry, on_failure
from roger.worker.link import Link
from roger.worker.partition import PartitionFeatures
from roger.worker.pool import ChildProc
from roger.worker.tasks import HookTask, QueueState, Task, original_properties
from roger.worker.telemetry import NullTelemetry, Telemetry

log = logging.getLogger("roger.worker")
SAMPLE_EVERY = 5.0
BACKSTOP = 5.0  # seconds after the child's own watchdog should have reported


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        amqp_url: str,
        registry: JobRegistry,
        observers: Sequence[LifecycleObserver] = (),
        telemetry: Telemetry | None = None,
        sys_path: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.partition = config.partition
        self.levels = config.retry_levels
        self.registry = registry
        self.telemetry: Telemetry = telemetry or NullTelemetry()
        self.observers: list[LifecycleObserver] = [self.telemetry, *observers]
        self.ioloop = IOLoop()
        self.queues = {n: QueueState.make(self.partition, n, w) for n, w in config.queues.items()}
        decls = [
            d
            for name in config.queues
            for d in topology.declarations(
                self.partition, name, config.retry_levels, config.buried_max_length
            )
        ]
        self.link = Link(amqp_url, self.ioloop, decls, self._connected, self._lost, self._fatal)
        self.features = PartitionFeatures(self)  # cancel, pause, queue and execution keys
        self.spec = json.dumps(
            {
                "partition": self.partition,
                "jobs": list(config.jobs),
                "callbacks": [
                    {"path": c.path, "hooks": list(c.hooks), "config": dict(c.config)}
                    for c in config.callbacks
                ],
                "callback_timeout": config.callback_timeout,
                "sys_path": list(sys_path),
            }
        )
        self.keys = itertools.count(1)
        self.stopping = self.finished = False
        self.exit_code = 0
        self.flush_scheduled = False
        self.last_tick = time.monotonic()
        self.lost_once = False

    # -- lifecycle -----------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        for q in self.queues.values():
            for _ in range(q.max_workers):
                self._spawn(q)
        self.link.connect()
        self.ioloop.call_later(1.0, self._tick)
        self.ioloop.call_later(1.0, self._sample)
        self.ioloop.start()
        for o in self.observers:
            try:
                o.close(2.0)
            except Exception:  # closing must not mask the exit code
                log.exception("observer close failed")
        return self.exit_code

    def healthy(self) -> bool:
        return self.exit_code == 0 and time.monotonic() - self.last_tick < 15

    def ready(self) -> bool:
        return (
            self.link.ready
            and not self.stopping
            and all(
                q.channel is not None
                for q in self.queues.values()
                if q.max_workers and not self.features.is_paused(q.name)
            )
        )

    def _signal(self, signum: int, _frame: Any) -> None:
        self.ioloop.add_callback_threadsafe(self.shutdown)

    def _tick(self) -> None:
        self.last_tick = time.monotonic()
        self.ioloop.call_later(1.0, self._tick)

    def _fatal(self, why: str) -> None:
        log.error("%s", why)
        self.exit_code = 1
        self._finish()

    def shutdown(self) -> None:
        """Stop consuming, let running jobs finish within shutdown_timeout, then exit."""
        if self.stopping:
            self._finish()  # a second signal: do not wait
            return
        self.stopping = True
        log.info("shutting down: waiting up to %ss for running jobs", self.config.shutdown_timeout)
        for q in self.queues.values():
            if q.channel is not None and q.channel.is_open and q.consumer_tag:
                q.channel.basic_cancel(q.consumer_tag)
            while q.pending:
                self._requeue(q.pending.popleft())
        self.ioloop.call_later(self.config.shutdown_timeout, self._finish)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if (
            self.stopping
            and self.link.unconfirmed() == 0
            and not any(
                c.task is not None or q.hook_backlog
                for q in self.queues.values()
                for c in q.children
            )
        ):
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = self.stopping = True
        self._flush()
        for q in self.queues.values():
            for child in list(q.children):
                if child.task is not None:
                    log.warning("job process %d still busy at shutdown: killed", child.pid)
                    child.cause = "shutdown"
                    child.kill()  # its delivery stays unacked: back to the queue on close
                else:
                    child.close()
        self.link.close()

    # -- connection ----------------------------------------------------------------
    def _connected(self) -> None:
        if self.lost_once:
            self.telemetry.reconnected()
        if self.stopping:
            self._finish()
            return
        # consuming starts once the partition state has caught up (_start_consuming)
        self.features.attach(self.link.conn)

    def _start_consuming(self) -> None:
        if self.stopping:
            return
        names = [
            q.rabbit
            for q in self.queues.values()
            if q.max_workers > 0 and not self.features.is_paused(q.name)
        ]
        log.info("connected; consuming %s", ", ".join(names) or "nothing (all paused)")
        for q in self.queues.values():
            if q.max_workers > 0 and not self.features.is_paused(q.name):
                self._consume(q)

    def _consume(self, q: QueueState) -> None:
        """Start (or, after a pause, resume) consuming; the channel is kept across pauses
        so in-flight jobs are acknowledged on the channel that delivered them."""
        if self.stopping or q.consumer_tag is not None:
            return
        if q.channel is not None and q.channel.is_open:
            q.consumer_tag = q.channel.basic_consume(
                q.rabbit, partial(self._on_message, q), auto_ack=False
            )
        elif self.link.ready:
            self.link.consume(
                q.rabbit, q.max_workers, partial(self._on_message, q), partial(self._consuming, q)
            )

    def _stop_consuming(self, q: QueueState) -> None:
        """Pause: take no more jobs from ``q``; running ones finish, prefetched go back."""
        if q.channel is not None and q.channel.is_open and q.consumer_tag:
            q.channel.basic_cancel(q.consumer_tag)
        q.consumer_tag = None
        while q.pending:
            self._requeue(q.pending.popleft())

    def _consuming(self, q: QueueState, channel: Any, consumer_tag: str) -> None:
        q.channel, q.consumer_tag, q.gen = channel, consumer_tag, self.link.generation

    def _lost(self) -> None:
        """Unacked deliveries go back to the broker; running jobs finish unacknowledged."""
        self.lost_once = True
        self.features.detach()
        for q in self.queues.values():
            q.channel, q.consumer_tag = None, None
            q.tracker = type(q.tracker)()
            q.pending.clear()
        if self.stopping:
            self._finish()

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
            self.telemetry.callback_failed("unknown", task.hook, "timeout" if cause else "crash")
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
        if isinstance(decision, Retry):
            target = naming.retry_queue_name(self.partition, q.name, decision.seconds)
            body, outcome = encode(msg.retried()), "retried"
        else:
            target = naming.buried_queue_name(self.partition, q.name)
            body, outcome = task.body, "buried"
        headers = {"x-roger-error-kind": error[0], "x-roger-error-message": error[1][:1000]}
        if stack and outcome == "buried":
            headers["x-roger-stacktrace"] = stack[-4000:]
        props = pika.BasicProperties(
            delivery_mode=2,
            content_type="application/json",
            message_id=msg.id,
            app_id=self.partition,
            type=msg.name,
            headers=headers,
            timestamp=int(msg.queued_at),
        )
        self._publish_then_settle(q, task.tag, task.gen, target, body, props)
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

    def _park(
        self,
        q: QueueState,
        tag: int,
        gen: int,
        props: Any,
        body: bytes,
        reason: str,
        detail: str,
    ) -> None:
        """Never run, never lost, never redelivered in a loop: to ``.invalid``, then ack."""
        log.warning(
            "parked message %s from %s in .invalid: %s (%s)",
            getattr(props, "message_id", None),
            q.rabbit,
            reason,
            detail,
        )
        self.telemetry.parked(q.name, reason)
        headers = dict(getattr(props, "headers", None) or {})
        headers.update(
            {
                "x-roger-invalid-reason": reason,
                "x-roger-invalid-detail": detail[:1000],
                "x-roger-original-queue": q.rabbit,
                "x-roger-original-properties": json.dumps(original_properties(props)),
                "x-roger-parked-at": int(time.time()),
            }
        )
        parked = pika.BasicProperties(
            delivery_mode=2,
            headers=headers,
            content_type=getattr(props, "content_type", None),
            content_encoding=getattr(props, "content_encoding", None),
            message_id=getattr(props, "message_id", None),
            correlation_id=getattr(props, "correlation_id", None),
            timestamp=getattr(props, "timestamp", None),
            type=getattr(props, "type", None),
            app_id=getattr(props, "app_id", None),
        )
        target = naming.invalid_queue_name(self.partition, q.name)
        self._publish_then_settle(q, tag, gen, target, body, parked)

    def _publish_then_settle(
        self, q: QueueState, tag: int, gen: int, target: str, body: bytes, props: Any
    ) -> None:
        if gen != q.gen or gen != self.link.generation:
            return  # the delivery died with its connection: the broker has it again

        def confirmed(ok: bool) -> None:
            if ok:
                self._settle(q, tag, gen)
            else:  # the broker refused it: try again rather than lose or loop
                log.warning("publish to %s refused; retrying in 1s", target)
                self.ioloop.call_later(
                    1.0, lambda: self._publish_then_settle(q, tag, gen, target, body, props)
                )

        self.link.publish(target, body, props, confirmed)

    def _settle(self, q: QueueState, tag: int, gen: int) -> None:
        if gen != q.gen:
            return
        q.tracker.settled(tag)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.ioloop.call_later(0, self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        for q in self.queues.values():
            if q.channel is not None and q.channel.is_open:
                for tag, multiple in q.tracker.flush():
                    q.channel.basic_ack(tag, multiple)
        self._maybe_finish()

    def _requeue(self, task: Task) -> None:
        q = task.queue
        if task.gen == q.gen and q.channel is not None and q.channel.is_open:
            q.channel.basic_nack(task.tag, requeue=True)
            q.tracker.forget(task.tag)

    def _cancel_timer(self, task: Task) -> None:
        if task.timer is not None:
            self.ioloop.remove_timeout(task.timer)
            task.timer = None

    def _emit(
        self,
        task: Task,
        hook: HookName,
        error: tuple[str, str] | None = None,
        duration: float | None = None,
    ) -> None:
        event = LifecycleEvent(
            hook=hook,
            partition=self.partition,
            queue=task.queue.name,
            job_id=task.msg.id,
            job_name=task.msg.name,
            retry_count=task.msg.retry_count,
            at=time.time(),
            error=error,
            duration=duration,
        )
        for o in self.observers:
            try:
                o.observe(event)
            except Exception:  # an observer never stops the loop
                log.exception("lifecycle observer %r failed", o)

    # -- deliveries ----------------------------------------------------------------
    def _on_message(
        self, q: QueueState, channel: Any, method: Any, props: Any, body: bytes
    ) -> None:
        tag = method.delivery_tag
        q.tracker.delivered(tag)
        if self.stopping:
            channel.basic_nack(tag, requeue=True)
            q.tracker.forget(tag)
            return
        try:
            msg = decode(body)
        except InvalidMessage as exc:
            self._park(q, tag, q.gen, props, body, exc.reason, exc.detail)
            return
        found = self.registry.lookup(msg.name)
        if not isinstance(found, JobDefinition):
            self.features.parked(msg, q.gen)
            self._park(q, tag, q.gen, props, body, found, f"job {msg.name!r}")
            return
        bury = not isinstance(on_failure(found.retryable, msg.retry_count, self.levels), Retry)
        task = Task(next(self.keys), q, tag, q.gen, msg, body, props, found, bury)
        if not self.features.intercept(task):  # cancelled, paused or keyed: handled there
            self._accept(task)

    def _accept(self, task: Task) -> None:
        q = task.queue
        if q.idle:
            self._pump_one(q, task)
        else:
            q.pending.append(task)

    def _pump_one(self, q: QueueState, task: Task) -> None:
        q.pending.append(task)
        self._pump(q)

    # -- sampling ------------------------------------------------------------------
    def _sample(self) -> None:
        self.ioloop.call_later(SAMPLE_EVERY, self._sample)
        for q in self.queues.values():
            kinds = {
                q.rabbit: "ready",
                naming.buried_queue_name(self.partition, q.name): "buried",
                naming.invalid_queue_name(self.partition, q.name): "invalid",
            }
            for s in self.levels:
                kinds[naming.retry_queue_name(self.partition, q.name, s)] = "retrying"
            counts = {"ready": 0, "consumers": 0, "retrying": 0, "buried": 0, "invalid": 0}
            left = [len(kinds)]

            def got(
                name: str,
                messages: int,
                consumers: int,
                q: QueueState = q,
                kinds: dict[str, str] = kinds,
                counts: dict[str, int] = counts,
                left: list[int] = left,
            ) -> None:
                counts[kinds[name]] += messages
                if kinds[name] == "ready":
                    counts["consumers"] = consumers
                left[0] -= 1
                if left[0] == 0:
                    self.telemetry.queue_sample(q.name, counts)

            self.link.sample(list(kinds), got)
