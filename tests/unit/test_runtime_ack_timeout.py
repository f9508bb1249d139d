"""The broker's consumer timeout closes one consumer channel: the worker on fakes.

What must hold (issue 12): the long job never runs twice at once (the broker has its
delivery again, so it is stopped here), the worker's other queues go on untouched (no
reconnect, their jobs acked on their own channels), and the job that overran is charged a
failed attempt when its redelivery comes back instead of timing out forever.
"""

from __future__ import annotations

import json

import pytest

from roger.core import ack_timeout, frames
from tests.unit.runtime_fakes import Rig

pytestmark = pytest.mark.unit


def _timed_out_rig() -> Rig:
    rig = Rig(queues={"default": 3, "mail": 1}, job_processes=1)
    rig.up()
    rig.enqueue("long", "tests.jobs.basic:flaky")  # retryable: its overrun is retried
    [task] = rig.worker.running()
    task.started -= 100.0  # it has run 100 s when the others start
    rig.enqueue("short")
    rig.enqueue("keyed", execution_key="k")
    rig.enqueue("m", queue="mail")
    assert rig.state.held == {"k": "keyed"}
    return rig


def test_a_consumer_timeout_stops_that_channels_jobs_and_leaves_other_queues_alone() -> None:
    rig = _timed_out_rig()
    old_default, mail = rig.channel("default"), rig.channel("mail")
    [default_proc] = [p for p in rig.alive() if p.queue == "default"]
    [mail_proc] = [p for p in rig.alive() if p.queue == "mail"]
    generation = rig.link.generation

    rig.link.time_out("p-default", 100.0)
    rig.loop.run()

    # Its jobs are stopped: the process that ran them is killed, nothing is acked or
    # published for them (the broker has them again), their execution keys are freed.
    assert not default_proc.alive and default_proc.cause == "ack_timeout"
    assert old_default.acks == [] and old_default.nacks == []
    assert rig.link.unconfirmed_publishes == []
    assert rig.state.held == {} and rig.partition.locks == {}
    # No reconnect: the mail queue's job runs on and is acked on its own channel.
    assert rig.link.generation == generation and not rig.link.closed
    assert mail_proc.alive and rig.channel("mail") is mail
    rig.succeed("m")
    assert mail.acked() == {1}
    # The default queue is consumed again on a new channel.
    assert rig.channel("default") is not old_default


def test_the_overdue_jobs_redelivery_is_a_failed_attempt_and_the_others_run_again() -> None:
    rig = _timed_out_rig()
    rig.link.time_out("p-default", 100.0)
    rig.loop.run()
    for proc in rig.alive():  # the job process started in place of the killed one
        if not proc.ready:
            proc.say(frames.Ready(proc.pid, proc.slots))
    new = rig.channel("default")
    rig.enqueue("long", "tests.jobs.basic:flaky")  # redelivered: tag 1 of the new channel
    rig.enqueue("short")  # tag 2
    runs = [r.job["id"] for p in rig.alive() if p.queue == "default" for r in p.runs()]
    assert runs == ["short"]  # "long" never runs again here
    [retry] = rig.link.unconfirmed_publishes
    assert retry.routing_key == "p-default.retry.1"
    assert retry.props.headers["x-roger-error-kind"] == "consumer_timeout"
    assert json.loads(retry.body)["retry_count"] == 1
    rig.link.confirm_all()
    rig.loop.run()
    assert new.acked() == {1}
    rig.succeed("short")
    assert new.acked() == {1, 2}


def test_a_late_outcome_of_a_stopped_job_is_never_acked_anywhere() -> None:
    """The job's success frame arrives before the kill is reaped: nothing to ack."""
    rig = Rig(queues={"default": 2}, job_processes=2)
    rig.up()
    rig.enqueue("a")
    old = rig.channel()
    proc = rig.process_of("a")
    key = proc.key_of("a")
    killed: list[str] = []
    proc.kill = lambda cause, key=None: killed.append(cause)  # type: ignore[method-assign]
    rig.link.time_out("p-default", None)
    rig.loop.run()
    assert killed == ["ack_timeout"]
    proc.say(frames.OkDone(key, 0.01, 1.0))  # it finished before the kill landed
    rig.loop.run()
    assert old.acks == [] and rig.channel().acks == []


def test_a_timeout_on_a_channel_already_replaced_changes_nothing() -> None:
    rig = Rig(queues={"default": 2}, job_processes=1)
    rig.up()
    rig.enqueue("a")
    stale = rig.channel()
    rig.link.drop()
    rig.link.up()
    rig.loop.run()
    current = rig.channel()
    assert rig.worker.link.on_ack_timeout is not None
    rig.worker.link.on_ack_timeout("p-default", stale, 60.0)
    rig.loop.run()
    assert rig.channel() is current and rig.worker.consumer_timeout.overran == {}


@pytest.mark.parametrize(
    ("ages", "timeout", "expected"),
    [
        ([], 60.0, []),
        ([10.0, 70.0, 5.0], 60.0, [1]),
        ([55.0, 70.0, 5.0], 60.0, [0, 1]),  # 55 >= 0.9 * 60
        ([10.0, 20.0], 60.0, [1]),  # none reached it (started after delivery): the oldest
        ([10.0, 20.0], None, [1]),
    ],
)
def test_overdue_deliveries(ages: list[float], timeout: float | None, expected: list[int]) -> None:
    assert ack_timeout.overdue(ages, timeout) == expected


def test_the_close_is_recognised_only_for_the_consumer_timeout() -> None:
    text = (
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout "
        "value used: 3000 ms. This timeout value can be configured, see consumers doc guide"
    )
    assert ack_timeout.is_ack_timeout(406, text)
    assert ack_timeout.timeout_in_reply(text) == 3.0
    assert not ack_timeout.is_ack_timeout(406, "PRECONDITION_FAILED - unknown delivery tag 7")
    assert not ack_timeout.is_ack_timeout(404, text)
    assert ack_timeout.timeout_in_reply("timed out") is None


def test_queues_whose_jobs_may_outlast_the_broker_timeout_are_named() -> None:
    risky = ack_timeout.at_risk(
        {"fast": [10.0, 60.0], "long": [3600.0, 5.0], "open": [None], "idle": []},
        callback_timeout=30.0,
        broker_timeout=1800.0,
    )
    assert set(risky) == {"long", "open"}
    assert "3720s" in risky["long"]  # 3600 + 2 * 30 + 60
    assert ack_timeout.needed([3600.0], 30.0) == 3720.0
    assert ack_timeout.needed([1.0, None], 30.0) is None
