"""The worker's state machine on fakes: exact interleavings the real broker cannot stage.

Each test drives a real ``Worker`` (runtime, ledger, pool, partition features, outbox)
through ``tests/unit/runtime_fakes.Rig`` and checks what reaches the broker: acks, nacks
and publishes, and on which channel.
"""

from __future__ import annotations

import time

import pytest

from roger.core import delay, frames, naming
from tests.unit.runtime_fakes import Rig

pytestmark = pytest.mark.unit


@pytest.fixture
def rig() -> Rig:
    r = Rig()
    r.up()
    return r


def test_a_success_is_acked_on_the_channel_that_delivered_it(rig: Rig) -> None:
    tag = rig.enqueue("a")
    assert [r.job["id"] for r in rig.alive()[0].runs()] == ["a"]
    rig.succeed("a")
    assert rig.channel().acked() == {tag}


def test_nothing_is_ever_acked_on_a_new_channel_for_a_delivery_of_an_old_one(rig: Rig) -> None:
    """Reconnect in the middle of a batch: jobs that end after the drop are not acked
    anywhere (the broker has them again), and tags of the new channel, which start at 1
    again, are acked only for their own deliveries."""
    for job_id in ("a", "b", "c"):
        rig.enqueue(job_id)
    old = rig.channel()
    rig.succeed("a")
    assert old.acked() == {1}
    rig.link.drop()
    rig.succeed("b")  # finished while reconnecting
    rig.fail("c")  # its retry publish must not happen on a dead delivery either
    assert old.acked() == {1} and rig.link.unconfirmed() == 0
    rig.link.up()
    rig.loop.run()
    new = rig.channel()
    assert new is not old
    rig.enqueue("b")  # redelivered: tag 1 on the new channel
    rig.enqueue("c")  # tag 2
    assert new.acks == []
    rig.succeed("c")  # the second run of "c"
    assert new.acked() == {2}


def test_a_retry_is_acked_only_once_its_publish_is_confirmed(rig: Rig) -> None:
    rig.enqueue("a", "tests.jobs.basic:flaky")
    assert rig.alive()[0].runs()[0].failure_hook == "on_error"
    rig.fail("a")
    [publish] = rig.link.unconfirmed_publishes
    assert publish.routing_key == "p-default.retry.1"
    assert rig.channel().acks == []
    rig.link.confirm_all()
    rig.loop.run()
    assert rig.channel().acked() == {1}


def test_a_not_retryable_failure_runs_on_error_and_is_kept_as_not_retryable(rig: Rig) -> None:
    rig.enqueue("a", "tests.jobs.basic:fails_once_not_retryable")
    assert rig.alive()[0].runs()[0].failure_hook == "on_error"
    rig.fail("a")
    [publish] = rig.link.confirm_all()
    assert publish.routing_key == "p-default.buried"
    assert publish.props.headers["x-roger-buried-reason"] == "not_retryable"


def test_a_burial_into_a_full_buried_queue_drops_the_oldest_first_and_says_so(rig: Rig) -> None:
    """Past buried_max_length (100) the broker would drop the oldest without a trace: the
    worker drops it itself, tells its observers (metric, Event), then buries."""
    from types import SimpleNamespace

    from roger.core import buried as bu
    from roger.core import message
    from roger.core.lifecycle import BURIED_DROPPED

    old = message.encode(message.JobMessage("old", "m:f", None, "default", retry_count=1))
    props = SimpleNamespace(headers={bu.ERROR_KIND: "KeyError", bu.ERROR_MESSAGE: "gone"})
    rig.link.buried = {"p-default.buried": [(props, old)] + [(props, b"{}")] * 99}
    seen: list[object] = []
    rig.worker.observers.append(SimpleNamespace(observe=seen.append))
    rig.enqueue("a", "tests.jobs.basic:fails_once_not_retryable")
    rig.fail("a")
    assert len(rig.link.buried["p-default.buried"]) == 99  # the oldest taken first
    [publish] = rig.link.confirm_all()
    assert publish.routing_key == "p-default.buried"
    assert len(rig.link.buried["p-default.buried"]) == 100
    [dropped] = [e for e in seen if getattr(e, "hook", None) == BURIED_DROPPED]
    assert (dropped.job_id, dropped.job_name, dropped.error) == ("old", "m:f", ("KeyError", "gone"))  # type: ignore[attr-defined]


def test_burials_that_fail_together_never_overfill_the_buried_queue(rig: Rig) -> None:
    """Jobs failing at once one short of the bound: the burials waiting while one is in
    flight go together in the next round, counted only once it is confirmed, so that
    round drops as many of the oldest as it adds (without rounds, each found room for one
    and the queue passed its bound)."""
    from types import SimpleNamespace

    props = SimpleNamespace(headers={})
    rig.link.buried = {"p-default.buried": [(props, b"{}")] * 99}
    for job_id in ("a", "b", "c"):
        rig.enqueue(job_id, "tests.jobs.basic:fails_once_not_retryable")
    for job_id in ("a", "b", "c"):
        rig.fail(job_id)
    assert len(rig.link.unconfirmed_publishes) == 1  # b and c wait for a's confirm
    rig.link.confirm_all()
    rig.loop.run()
    assert len(rig.link.buried["p-default.buried"]) == 98  # room for two made at once
    second_round = rig.link.confirm_all()
    assert [p.routing_key for p in second_round] == ["p-default.buried"] * 2
    assert len(rig.link.buried["p-default.buried"]) == 100
    rig.loop.run()
    assert rig.channel().acked() == {1, 2, 3}


def test_a_burial_whose_delivery_died_does_not_hold_up_the_next(rig: Rig) -> None:
    """A connection lost in the middle of a burial: its confirm never comes, and the
    burials of the new connection into the same queue still go."""
    rig.link.buried = {"p-default.buried": []}
    rig.enqueue("a", "tests.jobs.basic:fails_once_not_retryable")
    rig.fail("a")
    rig.link.drop()  # a's publish is forgotten; the broker has "a" again
    rig.link.up()
    rig.loop.run()
    rig.enqueue("b", "tests.jobs.basic:fails_once_not_retryable")
    rig.fail("b")
    [publish] = rig.link.confirm_all()
    assert publish.routing_key == "p-default.buried"
    rig.loop.run()
    assert rig.channel().acked() == {1}


def test_the_last_attempt_of_a_retryable_job_is_told_on_buried(rig: Rig) -> None:
    rig.enqueue("a", "tests.jobs.basic:flaky", retry_count=2)
    assert rig.alive()[0].runs()[0].failure_hook == "on_buried"
    rig.fail("a")
    [publish] = rig.link.confirm_all()
    assert publish.props.headers["x-roger-buried-reason"] == "retries_exhausted"


def test_a_process_dying_with_several_jobs_charges_none_and_quarantines_each() -> None:
    rig = Rig(queues={"default": 3}, job_processes=1)
    rig.up()
    for job_id in ("a", "b", "c"):
        rig.enqueue(job_id)
    [proc] = rig.alive()
    proc.die(code=-11)
    rig.loop.run()
    assert sorted(rig.channel().nacks) == [1, 2, 3]  # back to the queue, no retry level used
    assert rig.link.unconfirmed_publishes == []
    replacement = [p for p in rig.alive() if not p.quarantine]
    assert len(replacement) == 1 and replacement[0] is not proc
    replacement[0].say(frames.Ready(replacement[0].pid, 3))
    rig.enqueue("b")  # redelivered: a suspect, runs alone in the quarantine process
    rig.loop.run()
    quarantine = [p for p in rig.alive() if p.quarantine]
    assert len(quarantine) == 1 and replacement[0].runs() == []
    quarantine[0].say(frames.Ready(quarantine[0].pid, 1))
    rig.loop.run()
    assert [r.job["id"] for r in quarantine[0].runs()] == ["b"]
    quarantine[0].die(code=-11)  # it crashes alone: now it is the culprit
    rig.loop.run()
    [publish] = rig.link.unconfirmed_publishes
    assert publish.routing_key == "p-default.buried"  # `ok` is not retryable
    assert publish.props.headers["x-roger-error-kind"] == "worker_crash"


def test_a_job_past_its_deadline_is_retried_and_its_bystanders_requeued() -> None:
    rig = Rig(queues={"default": 2}, job_processes=1)
    rig.up()
    rig.enqueue("slow", "tests.jobs.basic:flaky", max_execution_time=1)
    rig.enqueue("other")
    [proc] = rig.alive()
    proc.say(frames.Late(proc.key_of("slow"), "job", ""))
    rig.loop.run()
    assert proc.cause == "timeout"
    assert rig.requeued() == ["other"]  # the bystander: a fresh copy, uncharged
    [retry] = [p for p in rig.link.unconfirmed_publishes if p.routing_key != "p-default"]
    assert retry.routing_key == "p-default.retry.1"
    assert retry.props.headers["x-roger-error-kind"] == "timeout"
    assert rig.channel().nacks == [] and rig.channel().acks == []
    rig.link.confirm_all()
    rig.loop.run()
    assert rig.channel().acked() == {1, 2}


def test_pause_requeues_waiting_jobs_and_frees_the_execution_keys_they_hold() -> None:
    """A job that got its execution key but waits for a slot goes back on pause, and its
    key is released: the key never stalls on another replica."""
    rig = Rig(queues={"default": 1}, job_processes=1)
    rig.up()
    rig.enqueue("busy")  # takes the only slot
    rig.enqueue("keyed", execution_key="k")
    assert rig.state.held == {"k": "keyed"}
    rig.partition.set_paused("default", True)
    rig.loop.run()
    assert rig.requeued() == ["keyed"]
    assert rig.state.held == {} and rig.partition.locks == {}
    rig.link.confirm_all()
    rig.loop.run()
    assert rig.channel().acked() == {2}
    rig.succeed("busy")  # running jobs finish and are acked while paused
    assert rig.channel().acked() == {1, 2}


def test_a_lock_granted_after_a_pause_does_not_run_the_job() -> None:
    rig = Rig(queues={"default": 2}, job_processes=1)
    rig.up()
    rig.held_answers = []  # the lock's answer is late
    rig.enqueue("keyed", execution_key="k")
    rig.partition.set_paused("default", True)
    rig.release_answers()  # the pause is folded, then the lock is granted
    assert rig.alive()[0].runs() == []
    assert rig.requeued() == ["keyed"]
    assert rig.state.held == {} and rig.partition.locks == {}


def test_a_busy_execution_key_sends_the_job_to_its_waiting_room() -> None:
    rig = Rig(queues={"default": 2}, job_processes=1)
    rig.up()
    rig.enqueue("first", execution_key="k")
    rig.enqueue("second", execution_key="k")
    assert rig.partition.waiting_count("k") == 1
    assert rig.channel().acked() == {2}  # safe in the waiting room
    rig.succeed("first")
    assert rig.state.held == {}
    assert rig.partition.waiting_count("k") == 0  # moved back to its queue for its turn
    assert len(rig.partition.queue_bodies("default")) == 1


def test_cancel_of_a_running_job_runs_on_cancel_once_and_acks() -> None:
    rig = Rig(queues={"default": 2}, job_processes=1)
    rig.up()
    rig.enqueue("a")
    rig.enqueue("b")
    [proc] = rig.alive()
    rig.partition.cancel("a")
    rig.loop.run()
    assert proc.cause == "cancel"
    assert rig.channel().acked() == {1} and rig.requeued() == ["b"]
    assert rig.state.cancel_handled("a")


def test_shutdown_requeues_waiting_jobs_and_waits_for_running_ones() -> None:
    rig = Rig(queues={"default": 1}, job_processes=1)
    rig.up()
    rig.enqueue("running")
    rig.enqueue("waiting")
    rig.worker.shutdown()
    rig.loop.run()
    assert rig.requeued() == ["waiting"]
    rig.link.confirm_all()
    rig.loop.run()
    assert not rig.link.closed  # the running job may still finish
    rig.succeed("running")
    rig.loop.run()
    assert rig.channel().acked() == {1, 2}
    assert rig.link.closed


def test_garbage_from_a_job_process_counts_as_its_crash() -> None:
    rig = Rig(queues={"default": 1}, job_processes=1)
    rig.up()
    rig.enqueue("a")
    [proc] = rig.alive()
    proc.die(code=70)
    rig.loop.run()
    [publish] = rig.link.unconfirmed_publishes  # alone in its process: the culprit
    assert publish.props.headers["x-roger-error-kind"] == "worker_crash"


def test_a_wedged_job_process_makes_the_worker_unhealthy() -> None:
    """/healthz fails (Kubernetes restarts the pod) when a job process takes nothing from
    its pipe for a minute, or never becomes ready."""
    rig = Rig()
    rig.up()
    rig.loop.run(2)
    assert rig.worker.healthy()
    [proc] = rig.alive()
    proc.backlog_since = -1000.0  # a write has been waiting since long ago
    rig.loop.run(2)
    assert not rig.worker.healthy()
    proc.backlog_since = 0.0
    rig.loop.run(2)
    assert rig.worker.healthy()
    late = Rig()
    late.link.up()
    late.processes[0].started_at = -1000.0  # never said Ready
    late.loop.run(2)
    assert not late.worker.healthy()


def test_a_job_redelivered_too_often_is_buried_with_on_buried_and_never_run() -> None:
    """A job that kills the whole worker each time (it is redelivered, never settled)
    ends in .buried as delivery_limit before RabbitMQ 4 would drop it: no crash loop."""
    rig = Rig()
    rig.up()
    body = b'{"id":"a","name":"tests.jobs.basic:ok","args":{},"queue":"default"}'
    rig.channel().deliver(body, headers={"x-delivery-count": 10})
    rig.loop.run()
    assert rig.alive()[0].runs() == []
    [publish] = rig.link.confirm_all()
    assert publish.routing_key == "p-default.buried"
    assert publish.props.headers["x-roger-buried-reason"] == "delivery_limit"
    rig.loop.run()
    assert rig.channel().acked() == {1}
    rig.channel().deliver(body, headers={"x-delivery-count": 9})  # below the limit: it runs
    rig.loop.run()
    assert [r.job["id"] for r in rig.alive()[0].runs()] == ["a"]


def test_uncharged_requeues_are_fresh_copies_without_a_delivery_count() -> None:
    rig = Rig(queues={"default": 1}, job_processes=1)
    rig.up()
    rig.enqueue("busy")
    body = b'{"id":"w","name":"tests.jobs.basic:ok","args":{},"queue":"default"}'
    rig.channel().deliver(body, headers={"x-delivery-count": 3, "mine": "kept"})
    rig.loop.run()
    rig.partition.set_paused("default", True)
    rig.loop.run()
    [copy] = rig.link.unconfirmed_publishes
    assert copy.body == body and copy.props.headers == {"mine": "kept"}


def test_a_delayed_job_that_arrives_early_goes_round_the_ladder_again_unless_cancelled() -> None:
    rig = Rig(queues={"default": 1}, job_processes=1)
    rig.up()
    due = time.time() + 5 * 86400  # longer than one pass of the ladder
    body = b'{"id":"later","name":"tests.jobs.basic:ok","args":{},"queue":"default"}'
    headers = {**delay.due_header(due), "x-death": [{"queue": "p.delay.19"}], "mine": 1}
    tag = rig.channel().deliver(body, message_id="later", headers=headers)
    rig.loop.run()
    assert not rig.alive()[0].runs(), "an early job is not run"
    [copy] = rig.link.unconfirmed_publishes
    assert copy.exchange == naming.delay_exchange_name("p", delay.LEVELS - 1)
    assert copy.routing_key.endswith(".p-default") and copy.body == body
    assert copy.props.headers == {**delay.due_header(due), "mine": 1}  # x-death dropped
    assert tag not in rig.channel().acked()
    rig.link.confirm_all()
    rig.loop.run()
    assert tag in rig.channel().acked()
    rig.partition.cancel("gone")
    rig.loop.run()
    rig.channel().deliver(body.replace(b"later", b"gone"), message_id="gone", headers=headers)
    rig.loop.run()
    assert len(rig.link.unconfirmed_publishes) == 0 and rig.state.cancel_handled("gone")
