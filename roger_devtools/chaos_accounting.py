"""Is a chaos run's accounting correct? Pure decisions over what the run recorded.

The chaos run (``roger_devtools.chaos``) gathers evidence: the jobs it enqueued and what it
expected of each, every run a job process recorded (``start`` / ``end`` / ``raised``), every
ending (``after_run``, ``on_cancel`` from the recorder; ``.buried`` and ``.invalid`` messages
from the broker) and every fault it injected. ``judge`` turns that into a ``Report``; the
report's ``failures`` say why a run must exit non-zero. No I/O here, so the rules are unit
tested on hand-made evidence (tests/unit/test_chaos_accounting.py).

Exactly once, precisely: every job the broker confirmed ends in exactly one of succeeded,
buried, cancelled, parked (a job the client saw fail to enqueue may instead be absent).
A job runs more often than its kind asks for (one run; two for fail-then-succeed;
1 + retry levels for always-fail) or ends twice only when a fault explains it: an earlier
run of it overlapped a fault that hit its job process, its worker, or every worker's
broker connection (a node stop or kill, a connection drop) before its outcome was settled
(its end plus ``grace`` seconds for the confirm and the ack).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

OUTCOMES = ("succeeded", "buried", "cancelled", "parked")
# Faults that can hit any worker: its connection may be on the node, or the queue leader.
BROKER_WIDE = frozenset({"node_stop", "node_kill", "connection_drop"})
# Faults aimed at one process (``Fault.pid``): a job process or a worker.
JOB_PROCESS = frozenset({"job_kill", "cancel_kill"})
WORKER = frozenset({"worker_kill", "worker_term"})
# A burial the job did not ask for: the worker charged it with a crash it suffered.
CRASH_BURIALS = frozenset({"worker_crash", "delivery_limit", "timeout"})
CRASH_LOOP_EXITS = 2  # workers exiting by themselves this often in one run: a crash loop


@dataclass(frozen=True)
class PlannedJob:
    """A job the run sent, and what it must become if nothing interferes."""

    tag: str
    kind: str
    expected: str | None  # an outcome of OUTCOMES; None: refused at enqueue, must never run
    max_runs: int  # job-process runs its kind needs at most
    in_doubt: bool = False  # the client saw an error: it may never have been enqueued
    sent_at: float = 0.0


@dataclass(frozen=True)
class Run:
    """One run of a job in a job process: started, and finished (``done``) or not."""

    tag: str
    pid: int
    ppid: int  # the worker that ran it
    start: float
    done: float | None = None


@dataclass(frozen=True)
class Ending:
    """One place a job ended: a hook's record or a message in ``.buried`` / ``.invalid``."""

    tag: str
    outcome: str
    t: float | None = None
    detail: str = ""  # for a burial: the error kind (``worker_crash``, ``RuntimeError``...)
    pid: int = 0  # the process that ran the hook, and its worker (0: read from the broker)
    ppid: int = 0


@dataclass(frozen=True)
class Fault:
    """An injected fault, from when it began until the run saw things recover."""

    kind: str
    start: float
    end: float
    pid: int | None = None
    target: str = ""


@dataclass(frozen=True)
class Evidence:
    plan: dict[str, PlannedJob]
    runs: list[Run]
    endings: list[Ending]
    faults: list[Fault]
    unexpected_exits: int = 0
    stuck: dict[str, int] = field(default_factory=dict)  # queue -> messages left at the end
    violations: list[str] = field(default_factory=list)  # what the runner saw break live
    # retry queues stranded by rabbitmq-server#16652 and given the runbook remedy while the
    # run settled: their jobs count as not lost only if they then end exactly once (judged
    # like every other job); a stranding the remedy did not clear leaves them ``stuck``
    stranded_recovered: list[str] = field(default_factory=list)
    grace: float = 5.0


@dataclass(frozen=True)
class JobVerdict:
    tag: str
    status: str  # ok | absent | lost | duplicate | wrong_outcome | conflict | ran_refused
    outcome: str | None
    extra: int = 0  # runs or endings beyond what the kind asks for
    explained_by: tuple[str, ...] = ()  # fault kinds that hit an earlier run of it


@dataclass
class Report:
    faults: Counter[str]
    expected: Counter[str]
    observed: Counter[str]
    jobs: list[JobVerdict]
    unexpected_exits: int
    stuck: dict[str, int]
    violations: list[str]
    gaps: tuple[float, float, float]  # p50, p99, max seconds between completions
    stranded_recovered: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(v.status == status for v in self.jobs)

    @property
    def duplicates(self) -> list[JobVerdict]:
        return [v for v in self.jobs if v.extra > 0]

    @property
    def unexplained(self) -> list[JobVerdict]:
        return [v for v in self.duplicates if not v.explained_by]

    def failures(self) -> list[str]:
        out = []
        for status, what in (
            ("lost", "lost"),
            ("wrong_outcome", "ended differently than asked, no crash to explain it"),
            ("conflict", "ended in two different places"),
            ("ran_refused", "ran although its enqueue was refused"),
        ):
            if n := self.count(status):
                tags = ", ".join(v.tag for v in self.jobs if v.status == status)[:300]
                out.append(f"{n} job(s) {what}: {tags}")
        if self.unexplained:
            tags = ", ".join(v.tag for v in self.unexplained)[:300]
            out.append(f"{len(self.unexplained)} unexplained duplicate run(s): {tags}")
        if self.unexpected_exits >= CRASH_LOOP_EXITS:
            out.append(f"crash loop: workers exited by themselves {self.unexpected_exits} times")
        if self.stuck:
            out.append(f"messages left in queues: {self.stuck}")
        return out + self.violations


def _hits(fault: Fault, run: Run) -> bool:
    if fault.kind in BROKER_WIDE:
        return True
    if fault.kind in JOB_PROCESS:
        return fault.pid == run.pid
    if fault.kind in WORKER:
        return fault.pid == run.ppid
    return False


def exposures(runs: list[Run], faults: Iterable[Fault], grace: float) -> list[set[str]]:
    """For each run of one job (sorted by start), the kinds of faults that hit it before
    its outcome was settled: its end plus ``grace``, or the next run's start if it never
    finished (it was interrupted; the next run is the broker's redelivery)."""
    faults = list(faults)
    out = []
    for i, run in enumerate(runs):
        nxt = runs[i + 1].start if i + 1 < len(runs) else math.inf
        settled = run.done + grace if run.done is not None else nxt
        out.append(
            {f.kind for f in faults if f.start <= settled and f.end >= run.start and _hits(f, run)}
        )
    return out


def ending_exposures(endings: list[Ending], faults: list[Fault], grace: float) -> list[set[str]]:
    """For each hook ending, the kinds of faults that hit the process that ran the hook
    within ``grace`` seconds after it wrote its record."""
    out: list[set[str]] = []
    for e in endings:
        if e.t is None or not e.pid:
            out.append(set())
            continue
        as_run = Run(e.tag, e.pid, e.ppid, e.t, e.t)
        out.append(
            {f.kind for f in faults if f.start <= e.t + grace and f.end >= e.t and _hits(f, as_run)}
        )
    return out


def judge_job(
    job: PlannedJob, runs: list[Run], endings: list[Ending], faults: list[Fault], grace: float
) -> JobVerdict:
    """The verdict on one job from its runs and endings (see the module docstring)."""
    runs = sorted(runs, key=lambda r: r.start)
    endings = sorted(endings, key=lambda e: math.inf if e.t is None else e.t)
    hit = exposures(runs, faults, grace)
    # The last run causes no rerun; a run's own outcome landing twice is caused by an
    # earlier run whose settlement a fault cut, or by a hook whose process was killed
    # before it told its worker the hook was done (the worker runs it again).
    cut = hit[:-1] + ending_exposures(endings[:-1], faults, grace)
    causes = sorted(set().union(*cut))
    exposed = sum(bool(h) for h in cut)
    extra = max(len(runs) - job.max_runs, len(endings) - 1, 0)
    explained = tuple(causes) if extra <= exposed else ()
    if job.expected is None:
        status = "ran_refused" if runs or endings else "ok"
        return JobVerdict(job.tag, status, None)
    if not endings:
        status = "absent" if job.in_doubt and not runs else "lost"
        return JobVerdict(job.tag, status, None, extra, explained)
    first = endings[0]
    if len({e.outcome for e in endings}) > 1 and not explained:
        return JobVerdict(job.tag, "conflict", first.outcome, extra, explained)
    if first.outcome != job.expected:
        crash = first.outcome == "buried" and first.detail in CRASH_BURIALS and any(hit)
        if not crash:
            return JobVerdict(job.tag, "wrong_outcome", first.outcome, extra, explained)
    status = "duplicate" if extra else "ok"
    return JobVerdict(job.tag, status, first.outcome, extra, explained)


def completion_gaps(
    endings: Iterable[Ending], pending: Iterable[tuple[float, float]]
) -> tuple[float, float, float]:
    """p50, p99 and max of the gaps between consecutive completions while some job was
    waiting for its outcome all through the gap (``pending``: sent, first ended): how
    long the system went without finishing work it had (recovery after a fault)."""
    times = sorted(e.t for e in endings if e.t is not None)
    spans = sorted(pending)
    gaps, i, reach = [], 0, -math.inf  # reach: the latest end of a job sent so far
    for a, b in itertools.pairwise(times):
        while i < len(spans) and spans[i][0] <= a:
            reach = max(reach, spans[i][1])
            i += 1
        if reach >= b:
            gaps.append(b - a)
    gaps.sort()
    if not gaps:
        return (0.0, 0.0, 0.0)

    def pct(p: float) -> float:
        return gaps[min(len(gaps) - 1, int(p * len(gaps)))]

    return (pct(0.5), pct(0.99), gaps[-1])


def judge(ev: Evidence) -> Report:
    runs: dict[str, list[Run]] = {}
    for r in ev.runs:
        runs.setdefault(r.tag, []).append(r)
    endings: dict[str, list[Ending]] = {}
    for e in ev.endings:
        endings.setdefault(e.tag, []).append(e)
    verdicts = [
        judge_job(job, runs.get(tag, []), endings.get(tag, []), ev.faults, ev.grace)
        for tag, job in sorted(ev.plan.items())
    ]
    strangers = sorted(set(endings) - set(ev.plan))  # ended, but never sent by this run
    violations = list(ev.violations)
    if strangers:
        violations.append(f"endings of jobs this run never sent: {strangers[:10]}")
    present = [v for v in verdicts if v.status != "absent"]
    return Report(
        faults=Counter(f.kind for f in ev.faults),
        expected=Counter(
            ev.plan[v.tag].expected or "refused at enqueue (never runs)" for v in present
        ),
        observed=Counter(
            v.outcome or "refused at enqueue (never runs)"
            for v in present
            if v.outcome or v.status == "ok"  # a lost job has no outcome: counted as lost
        ),
        jobs=verdicts,
        unexpected_exits=ev.unexpected_exits,
        stuck=dict(ev.stuck),
        stranded_recovered=list(ev.stranded_recovered),
        violations=violations,
        gaps=completion_gaps(ev.endings, _pending(ev.plan, endings)),
    )


def _pending(
    plan: dict[str, PlannedJob], endings: dict[str, list[Ending]]
) -> list[tuple[float, float]]:
    """(sent, first ended) of each job that ended, but not those held back on purpose
    (a paused queue's) or refused."""
    out = []
    for tag, job in plan.items():
        times = [e.t for e in endings.get(tag, []) if e.t is not None]
        if times and job.expected and job.kind != "held":
            out.append((job.sent_at, min(times)))
    return out


FAULT_NAMES = {
    "worker_kill": "worker SIGKILL",
    "worker_term": "worker SIGTERM (rollout)",
    "job_kill": "job process SIGKILL",
    "cancel_kill": "job process killed by a cancel",
    "node_stop": "broker node stop + start",
    "node_kill": "broker node SIGKILL + start",
    "connection_drop": "close_all_connections",
    "queue_pause": "queue pause + resume",
}


def format_table(report: Report, title: str) -> str:
    """The run's table, as docs/reliability.md keeps it (GitHub markdown)."""
    lines = [f"### {title}", "", "| fault | injected |", "|---|---:|"]
    for kind, name in FAULT_NAMES.items():
        lines.append(f"| {name} | {report.faults.get(kind, 0)} |")
    lines += ["", "| outcome | expected | observed |", "|---|---:|---:|"]
    for outcome in sorted(set(report.expected) | set(report.observed), key=_outcome_order):
        lines.append(
            f"| {outcome} | {report.expected.get(outcome, 0)} | {report.observed.get(outcome, 0)} |"
        )
    lines.append(f"| lost | 0 | {report.count('lost')} |")
    absent = report.count("absent")
    causes = Counter(c for v in report.duplicates for c in v.explained_by)
    by = ", ".join(f"{FAULT_NAMES.get(k, k)} {n}" for k, n in causes.most_common()) or "-"
    p50, p99, top = report.gaps
    lines += [
        "",
        "| check | result |",
        "|---|---|",
        f"| jobs sent (client error and never seen: {absent}) | {len(report.jobs)} |",
        f"| ran or ended more than once, explained by a fault | "
        f"{len(report.duplicates) - len(report.unexplained)} (faults that hit them: {by}) |",
        f"| ran or ended more than once, unexplained | {len(report.unexplained)} |",
        f"| workers that exited by themselves | {report.unexpected_exits} |",
        f"| retry queues stranded (rabbitmq-server#16652), recovered by the runbook remedy | "
        f"{len(report.stranded_recovered)} |",
        f"| gap between completions p50 / p99 / max | {p50:.2f} s / {p99:.2f} s / {top:.1f} s |",
        f"| verdict | {'PASS' if not report.failures() else 'FAIL'} |",
    ]
    lines += [f"\nstranded: {s}" for s in report.stranded_recovered]
    lines += [f"\nFAIL: {f}" for f in report.failures()]
    return "\n".join(lines)


def _outcome_order(name: str) -> int:
    return OUTCOMES.index(name) if name in OUTCOMES else len(OUTCOMES)
