"""The fate table: what happens to a job after anything happens to it (one answer each)."""

from __future__ import annotations

import itertools
import typing

import pytest

from roger.core import fate
from roger.core.hooks import CONSUMER_TIMEOUT, TIMEOUT, WORKER_CRASH

pytestmark = pytest.mark.unit
LEVELS = (1, 3, 5)
ERR = ("ValueError", "boom")


def facts(retryable: bool = True, retry_count: int = 0) -> fate.JobFacts:
    return fate.JobFacts(retryable, retry_count, LEVELS)


def test_a_raised_retryable_job_walks_the_levels_with_on_error_then_is_buried() -> None:
    assert fate.decide(fate.Raised(ERR), facts(retry_count=0)) == fate.Retry(1, ERR)
    assert fate.decide(fate.Raised(ERR), facts(retry_count=2)) == fate.Retry(5, ERR)
    assert fate.decide(fate.Raised(ERR), facts(retry_count=3)) == fate.Bury(
        fate.RETRIES_EXHAUSTED, ERR, "on_buried"
    )


def test_a_job_without_retries_gets_on_error_and_is_kept_as_not_retryable() -> None:
    """Roger's callback page: on_buried only ends a retry sequence."""
    got = fate.decide(fate.Raised(ERR), facts(retryable=False))
    assert got == fate.Bury(fate.NOT_RETRYABLE, ERR, "on_error")
    no_levels = fate.JobFacts(True, 0, ())
    assert fate.decide(fate.Raised(ERR), no_levels) == fate.Bury(
        fate.RETRIES_EXHAUSTED, ERR, "on_buried"
    )


@pytest.mark.parametrize("retryable", [True, False])
@pytest.mark.parametrize("retry_count", [0, 1, 2, 3])
def test_the_failure_hook_told_to_the_job_process_is_the_one_decide_gives(
    retryable: bool, retry_count: int
) -> None:
    f = facts(retryable, retry_count)
    decided = fate.decide(fate.Raised(ERR), f)
    assert isinstance(decided, fate.Retry | fate.Bury)
    assert fate.failure_hook(f) == decided.hook


def test_timeouts_and_crashes_of_a_known_culprit_are_failures() -> None:
    timed_out = fate.decide(fate.TimedOut(2.5), facts())
    assert timed_out == fate.Retry(1, (TIMEOUT, "exceeded max_execution_time of 2.5s"))
    crashed = fate.decide(fate.ProcessDied(alone=True, exit_code=-9), facts(retry_count=3))
    assert crashed == fate.Bury(
        fate.RETRIES_EXHAUSTED, (WORKER_CRASH, "job process exited (code -9)"), "on_buried"
    )
    not_retryable = fate.decide(fate.TimedOut(1), facts(retryable=False))
    assert isinstance(not_retryable, fate.Bury) and not_retryable.hook == "on_error"


def test_what_is_not_the_jobs_fault_charges_nothing() -> None:
    for happened in (fate.Bystander(), fate.Paused(), fate.ShuttingDown(), fate.MoveRefused()):
        assert isinstance(fate.decide(happened, facts(retry_count=3)), fate.Requeue)
    assert fate.decide(fate.ProcessDied(alone=False), facts()) == fate.Quarantine()
    assert fate.decide(fate.BeforeRunHung(), facts()) == fate.Rerun(skip_before=True)
    assert fate.decide(fate.ConnectionLost(), facts()) == fate.Abandon()
    assert fate.decide(fate.NotDue(60.0), facts(retry_count=2)) == fate.Delay(60.0)


def test_success_cancel_and_refusal() -> None:
    assert fate.decide(fate.Succeeded(), facts()) == fate.Ack()
    assert fate.decide(fate.Cancelled(), facts()) == fate.CancelJob()
    assert fate.decide(fate.Refused("unknown_job"), facts()) == fate.Park("unknown_job")


def test_a_job_delivered_too_often_without_an_outcome_is_buried() -> None:
    assert not fate.too_many_deliveries(fate.MAX_DELIVERIES - 1)
    assert fate.too_many_deliveries(fate.MAX_DELIVERIES)
    got = fate.decide(fate.DeliveredTooOften(12), facts(retryable=False))
    assert isinstance(got, fate.Bury) and got.reason == fate.DELIVERY_LIMIT
    assert got.hook == "on_buried" and fate.MAX_DELIVERIES < 20  # RabbitMQ 4's default


@pytest.mark.parametrize("retryable", [True, False])
@pytest.mark.parametrize("retry_count", range(len(LEVELS) + 2))
def test_a_channel_closed_by_the_consumer_timeout_stops_or_drops_and_never_acks(
    retryable: bool, retry_count: int
) -> None:
    """The broker has every delivery of that channel again: a running job is stopped (it
    would otherwise run twice at once), a waiting one dropped; nothing is charged, no hook
    runs, nothing is published or acknowledged."""
    f = facts(retryable, retry_count)
    running = fate.decide(fate.AckTimedOut(running=True), f)
    waiting = fate.decide(fate.AckTimedOut(running=False), f)
    assert running == fate.Stop(fate.ACK_TIMEOUT_WHY)
    assert waiting == fate.Drop(fate.ACK_TIMEOUT_WHY)
    assert not hasattr(running, "hook") and not hasattr(waiting, "hook")


@pytest.mark.parametrize("retryable", [True, False])
@pytest.mark.parametrize("retry_count", range(len(LEVELS) + 2))
def test_the_redelivery_of_a_job_that_overran_the_consumer_timeout_is_a_failure(
    retryable: bool, retry_count: int
) -> None:
    """It cannot finish within the broker's limit: charged like a timeout, so it ends in
    ``.buried`` after its retries instead of timing out forever."""
    f = facts(retryable, retry_count)
    error = (CONSUMER_TIMEOUT, "held its delivery past the broker's consumer_timeout of 60s")
    assert fate.decide(fate.Overran(60.0), f) == fate.on_failure(f, error)


def _every_happened() -> list[fate.Happened]:
    samples: dict[type, list[fate.Happened]] = {
        fate.Succeeded: [fate.Succeeded()],
        fate.Raised: [fate.Raised(ERR, "Traceback")],
        fate.TimedOut: [fate.TimedOut(1.0)],
        fate.ProcessDied: [fate.ProcessDied(True, 1), fate.ProcessDied(False, None)],
        fate.Bystander: [fate.Bystander()],
        fate.BeforeRunHung: [fate.BeforeRunHung()],
        fate.Cancelled: [fate.Cancelled()],
        fate.Refused: [fate.Refused("not_json")],
        fate.Paused: [fate.Paused()],
        fate.ShuttingDown: [fate.ShuttingDown()],
        fate.MoveRefused: [fate.MoveRefused()],
        fate.ConnectionLost: [fate.ConnectionLost()],
        fate.DeliveredTooOften: [fate.DeliveredTooOften(fate.MAX_DELIVERIES)],
        fate.AckTimedOut: [fate.AckTimedOut(running=True), fate.AckTimedOut(running=False)],
        fate.Overran: [fate.Overran(1800.0)],
        fate.NotDue: [fate.NotDue(3600.0)],
    }
    assert set(samples) == set(typing.get_args(fate.Happened)), "a new Happened needs a sample"
    return [h for hs in samples.values() for h in hs]


def test_the_table_is_total_and_every_fate_has_at_most_one_hook() -> None:
    """Exhaustive: every kind of event, for every kind of job, has exactly one fate."""
    for happened, retryable, count in itertools.product(
        _every_happened(), [True, False], range(len(LEVELS) + 2)
    ):
        decided = fate.decide(happened, facts(retryable, count))
        assert isinstance(decided, typing.get_args(fate.Fate))
        hook = getattr(decided, "hook", None)
        assert hook in (None, "after_run", "on_error", "on_buried", "on_cancel")
        if hook == "on_buried":  # a retryable job that failed its whole sequence, or
            # a job delivered too often without an outcome (it never ran to the end)
            assert (retryable and count >= len(LEVELS)) or isinstance(
                happened, fate.DeliveredTooOften
            )


def test_a_retry_too_large_to_publish_is_buried_as_delivered_with_its_error() -> None:
    got = fate.retry_too_large(fate.Retry(3, ERR))
    assert got == fate.Bury(fate.RETRY_TOO_LARGE, ERR, "on_error")
    assert fate.RETRY_TOO_LARGE in typing.get_args(fate.BuriedReason)
