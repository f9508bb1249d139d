"""The chaos run's verdict (roger_devtools.chaos_accounting) on hand-made evidence, and its
seeded fault schedule."""

from __future__ import annotations

import itertools
import time

import pytest

from roger_devtools.chaos import FAULT_KINDS, fault_schedule
from roger_devtools.chaos_accounting import (
    Ending,
    Evidence,
    Fault,
    JobVerdict,
    PlannedJob,
    Report,
    Run,
    completion_gaps,
    format_table,
    judge,
)
from roger_devtools.chaos_jobs import logged_cancel_kills

pytestmark = pytest.mark.unit

WORKER, OTHER_WORKER, PROC = 100, 200, 101


def ok_job(kind: str = "ok", max_runs: int = 1, in_doubt: bool = False) -> PlannedJob:
    return PlannedJob("j", kind, "succeeded", max_runs, in_doubt)


def run(start: float, done: float | None = None, ppid: int = WORKER, pid: int = PROC) -> Run:
    return Run("j", pid, ppid, start, done)


def verdict(
    job: PlannedJob, runs: list[Run], endings: list[Ending], faults: tuple[Fault, ...] = ()
) -> tuple[Report, JobVerdict]:
    report = judge(Evidence({job.tag: job}, runs, endings, list(faults)))
    return report, report.jobs[0]


def test_a_job_that_ran_once_and_ended_once_passes() -> None:
    report, v = verdict(ok_job(), [run(1, 2)], [Ending("j", "succeeded", 2.1)])
    assert v.status == "ok" and v.extra == 0
    assert report.failures() == []
    assert report.expected == report.observed


def test_a_confirmed_job_with_no_ending_is_lost() -> None:
    report, v = verdict(ok_job(), [], [])
    assert v.status == "lost"
    assert any("lost" in f for f in report.failures())
    assert sum(report.observed.values()) == 0  # counted in no outcome's row


def test_a_job_the_client_saw_fail_may_be_absent_but_not_started_and_lost() -> None:
    report, v = verdict(ok_job(in_doubt=True), [], [])
    assert v.status == "absent" and report.failures() == []
    _, v = verdict(ok_job(in_doubt=True), [run(1)], [])
    assert v.status == "lost"


def test_a_rerun_after_its_worker_was_killed_is_explained() -> None:
    kill = Fault("worker_kill", 1.5, 1.5, WORKER)
    report, v = verdict(ok_job(), [run(1), run(3, 4)], [Ending("j", "succeeded", 4)], (kill,))
    assert v.status == "duplicate" and v.extra == 1 and v.explained_by == ("worker_kill",)
    assert report.failures() == []


def test_a_rerun_with_no_fault_is_an_unexplained_duplicate() -> None:
    report, v = verdict(
        ok_job(), [run(1, 2), run(3, 4)], [Ending("j", "succeeded", 2), Ending("j", "succeeded", 4)]
    )
    assert v.extra == 1 and v.explained_by == ()
    assert any("unexplained duplicate" in f for f in report.failures())


@pytest.mark.parametrize(
    "fault",
    [
        Fault("worker_kill", 1.5, 1.5, OTHER_WORKER),  # another worker
        Fault("job_kill", 1.5, 1.5, PROC + 1),  # another job process
        Fault("node_kill", 20, 25),  # long after the first run settled (done 2 + grace 5)
        Fault("node_kill", 0, 0.5),  # before the first run started
        Fault("queue_pause", 1, 5),  # a pause never interrupts a running job
    ],
)
def test_a_fault_that_did_not_hit_the_earlier_run_explains_nothing(fault: Fault) -> None:
    endings = [Ending("j", "succeeded", 2), Ending("j", "succeeded", 40)]
    report, v = verdict(ok_job(), [run(1, 2), run(30, 40)], endings, (fault,))
    assert v.extra == 1 and v.explained_by == ()
    assert report.failures()


def test_a_broker_fault_before_the_ack_explains_a_second_success() -> None:
    endings = [Ending("j", "succeeded", 2), Ending("j", "succeeded", 12)]
    drop = Fault("connection_drop", 3, 5)  # inside done + grace: the ack may have been lost
    report, v = verdict(ok_job(), [run(1, 2), run(10, 12)], endings, (drop,))
    assert v.explained_by == ("connection_drop",) and report.failures() == []


def test_only_an_earlier_run_can_explain_a_rerun() -> None:
    kill = Fault("job_kill", 3.5, 3.5, PROC + 1)  # hits the last run, after which none ran
    endings = [Ending("j", "succeeded", 2), Ending("j", "succeeded", 4)]
    _, v = verdict(ok_job(), [run(1, 2), run(3, 4, pid=PROC + 1)], endings, (kill,))
    assert v.explained_by == ()


def test_more_reruns_than_hit_runs_are_unexplained() -> None:
    kill = Fault("worker_kill", 1.5, 1.5, WORKER)
    runs = [run(1), run(3, 4, ppid=OTHER_WORKER), run(5, 6, ppid=OTHER_WORKER)]
    _, v = verdict(ok_job(), runs, [Ending("j", "succeeded", 6)], (kill,))
    assert v.extra == 2 and v.explained_by == ()


def test_the_runs_a_kind_asks_for_are_no_duplicates() -> None:
    flaky = ok_job(kind="flaky", max_runs=2)
    report, v = verdict(flaky, [run(1, 2), run(5, 6)], [Ending("j", "succeeded", 6)])
    assert v.status == "ok" and report.failures() == []


def test_two_different_endings_without_a_fault_are_a_conflict() -> None:
    endings = [Ending("j", "succeeded", 2), Ending("j", "buried", 5, "RuntimeError")]
    report, v = verdict(ok_job(), [run(1, 2), run(3, 4)], endings)
    assert v.status == "conflict"
    assert any("two different places" in f for f in report.failures())


def test_a_burial_the_job_did_not_ask_for_needs_a_crash_that_hit_it() -> None:
    buried = [Ending("j", "buried", 9, "RuntimeError")]
    report, v = verdict(ok_job(), [run(1, 2)], buried)
    assert v.status == "wrong_outcome" and report.failures()
    crashed = [Ending("j", "buried", 9, "worker_crash")]
    kill = Fault("job_kill", 1.5, 1.5, PROC)
    report, v = verdict(ok_job(), [run(1), run(3), run(5)], crashed, (kill,))
    assert v.status != "wrong_outcome"


def test_a_job_refused_at_enqueue_must_never_run() -> None:
    refused = PlannedJob("j", "dup", None, 0)
    report, v = verdict(refused, [], [])
    assert v.status == "ok" and report.failures() == []
    report, v = verdict(refused, [run(1, 2)], [Ending("j", "succeeded", 2)])
    assert v.status == "ran_refused" and report.failures()


def test_workers_exiting_by_themselves_twice_are_a_crash_loop() -> None:
    job = ok_job()
    runs, endings = [run(1, 2)], [Ending("j", "succeeded", 2)]
    assert judge(Evidence({"j": job}, runs, endings, [], unexpected_exits=1)).failures() == []
    failures = judge(Evidence({"j": job}, runs, endings, [], unexpected_exits=2)).failures()
    assert any("crash loop" in f for f in failures)


def test_jobs_left_in_queues_endings_of_strangers_and_live_violations_fail_the_run() -> None:
    job = ok_job()
    runs, endings = [run(1, 2)], [Ending("j", "succeeded", 2), Ending("zz", "parked")]
    report = judge(
        Evidence({"j": job}, runs, endings, [], stuck={"p-default": 1}, violations=["held ran"])
    )
    text = " ".join(report.failures())
    assert "p-default" in text and "never sent" in text and "held ran" in text


def test_gaps_count_only_while_some_job_waited_for_its_outcome() -> None:
    endings = [Ending("a", "succeeded", 1), Ending("b", "succeeded", 2), Ending("c", "x", 50)]
    # b waited from 0 to 2; c was sent at 45: the idle stretch 2..45 is no recovery gap
    assert completion_gaps(endings, [(0, 1), (0, 2), (45, 50)]) == (1.0, 1.0, 1.0)
    # c sent at 1.5 and done at 50: nothing ended for 48 s while it waited
    assert completion_gaps(endings, [(0, 1), (0, 2), (1.5, 50)])[2] == 48.0


def test_the_table_names_every_fault_kind_and_the_verdict() -> None:
    report = judge(Evidence({"j": ok_job()}, [], [], [Fault("node_kill", 0, 1)]))
    table = format_table(report, "t")
    assert "broker node SIGKILL + start | 1 |" in table
    assert "| lost | 0 | 1 |" in table and "| verdict | FAIL |" in table


def test_a_stranded_retry_queue_is_reported_and_its_jobs_are_still_judged() -> None:
    """A remedied stranding is shown; a job it held that never ends is still lost."""
    held = "p-default.retry.1: 9 job(s) held, remedy answered ok"
    report = judge(Evidence({"j": ok_job()}, [], [], [], stranded_recovered=[held]))
    table = format_table(report, "t")
    assert "recovered by the runbook remedy | 1 |" in table and held in table
    assert "| lost | 0 | 1 |" in table and "| verdict | FAIL |" in table


def test_the_fault_schedule_follows_the_seed_and_hits_every_kind_and_node() -> None:
    one = fault_schedule(7, 200, 5)
    assert one == fault_schedule(7, 200, 5) and one != fault_schedule(8, 200, 5)
    assert {p.kind for p in one} == set(FAULT_KINDS)
    targets = [p.target for p in one if p.kind in ("node_stop", "node_kill")]
    assert targets[:6] == ["leader", "1", "leader", "2", "leader", "3"]
    assert all(0 < b.at - a.at <= 7.5 for a, b in itertools.pairwise(one))


def test_a_hook_rerun_because_its_process_was_killed_for_a_cancel_is_explained() -> None:
    """Seen in a full run: on_cancel of a killed job ran in another job process, which the
    worker then killed to stop a second cancelled job before the hook reported back."""
    cancel = PlannedJob("j", "cancel", "cancelled", 1)
    first = Ending("j", "cancelled", 10.0, pid=PROC + 5, ppid=WORKER)
    again = Ending("j", "cancelled", 11.0, pid=PROC + 6, ppid=WORKER)
    _, v = verdict(cancel, [run(9)], [first, again])
    assert v.extra == 1 and v.explained_by == ()
    kill = Fault("cancel_kill", 9.5, 10.6, PROC + 5)
    report, v = verdict(cancel, [run(9)], [first, again], (kill,))
    assert v.explained_by == ("cancel_kill",) and report.failures() == []


def test_a_bystander_of_a_cancel_kill_before_the_cancelled_job_wrote_a_line_is_explained() -> None:
    """Seen in a short run: a cancel came right after its job was handed to a job process;
    the process was killed before the job recorded its start, so only the worker's log
    tells of the kill, and the job beside it ran again."""
    log = [
        "2026-12-03 06:53:45,100 INFO roger.worker: partition state caught up: 6 cancelled ids",
        "2026-12-03 06:53:45,487 INFO roger.worker: killing job process 101 for job ab12 (cancel)",
        "2026-12-03 06:53:46,000 INFO roger.worker: killing job process 102 for job cd34 (hook)",
    ]
    [kill] = logged_cancel_kills(log)
    assert (kill.kind, kill.pid) == ("cancel_kill", PROC)
    when = time.mktime((2026, 12, 3, 6, 53, 45, 0, 0, -1)) + 0.487
    assert kill.start == kill.end == pytest.approx(when)
    runs = [run(when - 0.2), run(when + 0.2, when + 0.5, pid=PROC + 1)]
    ending = [Ending("j", "succeeded", when + 0.5)]
    _, v = verdict(ok_job(), runs, ending)
    assert v.status == "duplicate" and v.explained_by == ()
    report, v = verdict(ok_job(), runs, ending, (kill,))
    assert v.explained_by == ("cancel_kill",) and report.failures() == []
