"""Hooks are at-least-once, like jobs: a job is settled (acked, its retry or burial
published, its cancel recorded done) only after its hooks ran, so that a worker dying in
between leaves the job to be delivered again, never settled with a hook that never ran.

The chaos run found the gap this closes: a cancelled job was acked and its ``on_cancel``
queued for a free job process; the worker was SIGKILLed before it ran, and the job had no
ending anywhere. Driven on ``tests/unit/runtime_fakes.Rig``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from roger.core import frames
from roger.core.config import CallbackSpec
from roger.worker.pool import HOOK_ATTEMPTS
from tests.unit.runtime_fakes import FakeJobProcess, Rig

pytestmark = pytest.mark.unit

AUDIT = (CallbackSpec("tests.jobs.callbacks:Audit"),)


def _rig(slots: int = 2) -> Rig:
    rig = Rig(queues={"default": slots}, job_processes=1, callbacks=AUDIT)
    rig.up()
    return rig


def _hook_process(rig: Rig, hook: str) -> tuple[FakeJobProcess, int]:
    """The live job process running ``hook`` now, and the hook's task key there."""
    for proc in rig.alive():
        for key, work in proc.tasks.items():
            if getattr(work, "hook", None) == hook:
                return proc, key
    raise AssertionError(f"no job process runs {hook}")


def test_a_cancelled_job_is_acked_and_recorded_done_only_after_on_cancel_ran() -> None:
    rig = _rig()
    rig.enqueue("a")
    [proc] = rig.alive()
    rig.partition.cancel("a")
    rig.loop.run()
    assert proc.cause == "cancel"
    rig.ready()  # the replacement process
    runner, key = _hook_process(rig, "on_cancel")
    [run] = runner.hook_runs()
    assert run.job["id"] == "a"
    assert rig.channel().acks == []  # a worker dying now: delivered again, hook again
    assert not rig.state.cancel_handled("a")
    runner.say(frames.Done(key))
    rig.loop.run()
    assert rig.channel().acked() == {1}
    assert rig.state.cancel_handled("a")


def test_a_success_is_acked_only_after_its_after_run_is_done() -> None:
    rig = _rig()
    rig.enqueue("a")
    [proc] = rig.alive()
    key = proc.key_of("a")
    proc.say(frames.Outcome(key, 0.01, 1.0))  # returned; after_run runs on
    rig.loop.run()
    assert rig.channel().acks == []
    proc.say(frames.Done(key))
    rig.loop.run()
    assert rig.channel().acked() == {1}


def test_a_failure_is_published_only_after_its_on_error_is_done() -> None:
    rig = _rig()
    rig.enqueue("a", "tests.jobs.basic:flaky")
    [proc] = rig.alive()
    key = proc.key_of("a")
    proc.say(frames.Outcome(key, 0.01, 1.0, ("ValueError", "boom"), "Traceback"))
    rig.loop.run()
    assert rig.link.unconfirmed_publishes == []
    proc.say(frames.Done(key))
    rig.loop.run()
    [retry] = rig.link.confirm_all()
    assert retry.routing_key == "p-default.retry.1"
    rig.loop.run()
    assert rig.channel().acked() == {1}


def test_after_run_cut_short_by_its_process_dying_runs_again_elsewhere_before_the_ack() -> None:
    rig = _rig()
    rig.enqueue("a")
    [proc] = rig.alive()
    proc.say(frames.Outcome(proc.key_of("a"), 0.01, 1.0))
    rig.loop.run()
    proc.die(code=-9)  # killed from outside while after_run ran
    rig.loop.run()
    assert rig.channel().acks == [] and rig.link.unconfirmed_publishes == []  # no retry
    rig.ready()
    runner, key = _hook_process(rig, "after_run")
    assert [r.job["id"] for r in runner.hook_runs()] == ["a"]
    runner.say(frames.Done(key))
    rig.loop.run()
    assert rig.channel().acked() == {1}  # succeeded, once


def test_a_hook_that_hangs_is_given_up_and_its_job_settled_with_its_outcome() -> None:
    rig = _rig()
    rig.enqueue("a")
    [proc] = rig.alive()
    key = proc.key_of("a")
    proc.say(frames.Outcome(key, 0.01, 1.0), frames.Late(key, "after_run", "Audit"))
    rig.loop.run()
    assert proc.cause == "hook"
    rig.ready()
    assert all(p.hook_runs() == [] for p in rig.alive())  # not run again
    assert rig.channel().acked() == {1}


def test_a_cancel_after_the_job_returned_leaves_its_hooks_and_outcome_alone() -> None:
    rig = _rig()
    rig.enqueue("a")
    [proc] = rig.alive()
    key = proc.key_of("a")
    proc.say(frames.Outcome(key, 0.01, 1.0))
    rig.loop.run()
    rig.partition.cancel("a")
    rig.loop.run()
    assert proc.alive  # after_run goes on
    proc.say(frames.Done(key))
    rig.loop.run()
    assert rig.channel().acked() == {1}
    assert not rig.state.cancel_handled("a")  # it succeeded: no on_cancel


def test_a_hook_whose_process_keeps_crashing_is_given_up_after_its_attempts() -> None:
    """Run again after a crash (the crash may not be its own), but not forever: a hook
    that kills its process each time must not hold its job, or the worker, for ever."""
    rig = _rig()
    rig.enqueue("a")
    rig.partition.cancel("a")
    rig.loop.run()
    for attempt in range(1, HOOK_ATTEMPTS + 1):
        rig.ready()
        runner, _ = _hook_process(rig, "on_cancel")
        assert rig.channel().acks == [], attempt
        runner.die(code=-11)
        rig.loop.run()
    assert rig.channel().acked() == {1}
    assert rig.state.cancel_handled("a")


def test_a_hook_is_run_again_when_its_process_is_killed_for_another_job() -> None:
    rig = _rig(slots=2)
    rig.enqueue("a")
    rig.enqueue("b")
    rig.partition.cancel("a")  # kills the process of a and b: b is requeued
    rig.loop.run()
    rig.ready()
    rig.enqueue("c")
    runner, _ = _hook_process(rig, "on_cancel")
    assert runner is rig.process_of("c")
    rig.partition.cancel("c")  # kills the process running a's on_cancel too
    rig.loop.run()
    rig.ready()
    assert {r.job["id"] for p in rig.alive() for r in p.hook_runs()} == {"a", "c"}
    assert 1 not in rig.channel().acked()


def test_a_job_whose_connection_died_while_its_hooks_ran_is_neither_acked_nor_counted() -> None:
    """The broker has it again and it runs again: that run is the one acked and counted
    (one outcome, one after_run Event), not this one too."""
    rig = _rig()
    seen: list[Any] = []
    rig.worker.observers.append(SimpleNamespace(observe=seen.append))
    rig.enqueue("a")
    [proc] = rig.alive()
    key = proc.key_of("a")
    proc.say(frames.Outcome(key, 0.01, 1.0))
    rig.loop.run()
    old = rig.channel()
    rig.link.drop()
    proc.say(frames.Done(key))
    rig.loop.run()
    assert old.acks == [] and rig.link.unconfirmed_publishes == []
    assert [e.hook for e in seen if e.job_id == "a"] == ["before_run"]


def test_hooks_cut_short_on_a_dead_delivery_are_left_to_its_next_run() -> None:
    rig = _rig()
    rig.enqueue("a")
    [proc] = rig.alive()
    proc.say(frames.Outcome(proc.key_of("a"), 0.01, 1.0))
    rig.loop.run()
    old = rig.channel()
    rig.link.drop()
    proc.die(code=-9)
    rig.loop.run()
    rig.ready()
    assert all(p.hook_runs() == [] for p in rig.alive())
    assert old.acks == [] and rig.link.unconfirmed_publishes == []
