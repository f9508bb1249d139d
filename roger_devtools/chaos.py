"""The fault-injection accounting run (``make chaos``) on the 3-node cluster.

Workers of one partition (``roger_devtools.workers``, given all three node addresses) run
jobs of every outcome from ``pjobs`` (``roger_devtools.recording``) while a seeded schedule
kills workers and job processes, rolls workers with SIGTERM, stops or kills broker nodes
(the queue leader among them) and starts them again, closes every connection from the
broker side and pauses a queue. A queue ``held`` stays paused all along: after every node
fault its jobs must all still be there, none started. Then everything is counted
(``roger_devtools.chaos_accounting`` decides), every queue key of a job that ended must be
free, and the table printed.

    python -m roger_devtools.chaos --jobs 3000 --duration 420 --seed 1

The 3.10 cluster of hack/rabbitmq-cluster.sh (ports 5681-5683), or with ``--rabbitmq 4.0``
(``make chaos RABBITMQ=4.0``) the 4.0 one (5691-5693); it kills a node by the pid in its
state directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from roger.core import state as st
from roger_devtools.chaos_accounting import Evidence, Fault, Report, format_table, judge
from roger_devtools.chaos_cluster import PREFIXES, ChaosCluster, cluster_version
from roger_devtools.chaos_jobs import JobMix, Producer, collect_evidence
from roger_devtools.chaos_stranded import StrandedWatch
from roger_devtools.polling import eventually
from roger_devtools.processes import alive
from roger_devtools.recording import recording_workers
from roger_devtools.workers import WorkerProc, Workers

QUEUES = ("default=4", "mail=2", "held=1")
NODE_FAULT_SECONDS = 25  # a node stop or kill and its start again, as measured here
FAULT_KINDS = (
    "worker_kill",
    "worker_term",
    "job_kill",
    "node_stop",
    "node_kill",
    "connection_drop",
    "queue_pause",
)


@dataclass(frozen=True)
class Planned:
    """One fault of the schedule: what, when (seconds into the run) and where."""

    at: float
    kind: str
    target: str = ""  # node faults: "leader" (of the partition's default queue) or "1".."3"


def fault_schedule(
    seed: int, duration: float, mean_gap: float, count: int | None = None
) -> list[Planned]:
    """The faults of a run, from its seed alone: every kind in turn in a shuffled order,
    gaps drawn around ``mean_gap``; node faults alternate between the queue leader and
    each node in turn, so every node and the leader are hit. ``at`` counts the gaps only:
    the run waits each gap after the fault before it has recovered. ``count``: that many
    faults, whatever ``duration`` says (7 hits every kind once)."""
    rng = random.Random(seed)
    out: list[Planned] = []
    t, node_faults = mean_gap, 0
    kinds: list[str] = []
    while (t < duration) if count is None else len(out) < count:
        if not kinds:
            kinds = list(FAULT_KINDS)
            rng.shuffle(kinds)
        kind = kinds.pop()
        target = ""
        if kind in ("node_stop", "node_kill"):
            target = "leader" if node_faults % 2 == 0 else str(node_faults // 2 % 3 + 1)
            node_faults += 1
        out.append(Planned(round(t, 2), kind, target))
        t += rng.uniform(0.5 * mean_gap, 1.5 * mean_gap)
    return out


def expected_length(schedule: list[Planned]) -> float:
    """How long the fault phase will take: its gaps plus the node faults' own time (the
    producer spreads the jobs over it)."""
    nodes = sum(p.kind in ("node_stop", "node_kill") for p in schedule)
    return (schedule[-1].at if schedule else 0.0) + NODE_FAULT_SECONDS * nodes


class Fleet:
    """The workers, kept at ``size`` like a Deployment: a worker the run killed is replaced;
    one that exited by itself is replaced too, and counted."""

    def __init__(self, workers: Workers, size: int, levels: str) -> None:
        self.workers, self.size, self.levels = workers, size, levels
        self.live: list[WorkerProc] = []
        self.unexpected_exits = 0

    def _start(self) -> WorkerProc:
        extra = ["--buried-max-length", "1000000"]
        w = self.workers.start(QUEUES, ready=False, retry_levels=self.levels, extra=extra)
        self.live.append(w)
        return w

    def fill(self) -> None:
        for w in [w for w in self.live if w.proc.poll() is not None]:
            self.live.remove(w)
            self.unexpected_exits += 1
            print(f"chaos: worker {w.proc.pid} exited by itself ({w.proc.returncode})")
        started = [self._start() for _ in range(self.size - len(self.live))]
        for w in started:
            w.wait_caught_up(timeout=120).wait_ready(timeout=120)

    def take(self, rng: random.Random) -> WorkerProc:
        w = rng.choice(self.live)
        self.live.remove(w)
        return w

    def job_processes(self) -> list[int]:
        parents = {w.proc.pid for w in self.live}
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) in parents:
                    out.append(int(entry.name))
        return out


class Chaos:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.cluster = ChaosCluster(args.rabbitmq)
        self.partition = f"chaos-{args.seed}-{int(time.time())}"
        self.workdir = workdir
        workers, self.recorder = recording_workers(workdir, self.cluster.url_list, self.partition)
        self.fleet = Fleet(workers, args.workers, args.retry_levels)
        self.faults: list[Fault] = []
        self.violations: list[str] = []
        self.transients: list[str] = []
        self.mix = JobMix(args.seed, len(args.retry_levels.split(",")))

    # -- faults ---------------------------------------------------------------------------
    def inject(self, p: Planned) -> None:
        t = time.time()
        pid: int | None = None
        if p.kind == "worker_kill":
            w = self.fleet.take(self.rng)
            pid = w.proc.pid
            w.kill9()
        elif p.kind == "worker_term":
            w = self.fleet.take(self.rng)
            pid = w.proc.pid
            w.signal(signal.SIGTERM)
            self.fleet.fill()  # the new replica first, as a rolling update does
            w.wait(60)
        elif p.kind == "job_kill":
            children = self.fleet.job_processes()
            if not children:
                return
            pid = self.rng.choice(children)
            os.kill(pid, signal.SIGKILL)
        elif p.kind in ("node_stop", "node_kill"):
            queue = f"{self.partition}-default"
            node = self.cluster.leader_of(queue) if p.target == "leader" else int(p.target)
            self.cluster.stop_node(node, hard=p.kind == "node_kill")
            time.sleep(self.rng.uniform(1, 6))
            self.cluster.start_node(node)
            self.check_held(f"after {p.kind} of node {node}")
            p = Planned(p.at, p.kind, f"node {node}")
        elif p.kind == "connection_drop":
            self.cluster.close_all_connections()
            time.sleep(2)
        elif p.kind == "queue_pause":
            self.producer.client_call(lambda c: c.pause(self.partition, "mail"))
            time.sleep(self.rng.uniform(2, 6))
            self.producer.client_call(lambda c: c.resume(self.partition, "mail"))
        self.fleet.fill()
        self.faults.append(Fault(p.kind, t, time.time(), pid, p.target))
        print(f"chaos: {time.time() - self.t0:6.1f}s {p.kind} {p.target or pid or ''}", flush=True)

    def check_held(self, when: str) -> None:
        """The paused queue ``held`` keeps all its jobs, and none of them ever starts. The
        first count read after a restart is kept apart: a transient miscount is reported,
        but only a count that stays wrong for a minute is a loss."""
        queue = f"{self.partition}-held"
        want: int = self.args.held
        first: list[int] = []

        def count() -> bool:
            n = self.cluster.ready(queue)
            first.append(n)
            return n == want

        try:
            eventually(count, 60, 1, f"{want} in {queue}")
        except AssertionError as exc:
            self.violations.append(f"paused queue {when}: {exc}")
        if first and first[0] != want:
            self.transients.append(f"{when}: first read {first[0]}, then {first[-1]}")
        started = [e for e in self.recorder.events("start") if str(e.get("id")).startswith("held-")]
        if started:
            self.violations.append(f"{len(started)} job(s) of the paused queue ran {when}")
        self.held_checks += 1

    def check_keys_free(self) -> None:
        """Every job with a queue key has ended: no key may stay held (one would refuse
        that key's jobs for days). A key whose job's publish failed frees itself after
        ``QUEUE_KEY_PENDING_HOLD``, so the check waits that long before it reports."""
        keys = [f"k-{tag}" for tag, job in self.producer.plan.items() if job.kind == "keyed"]
        held: list[str] = []

        def all_free() -> bool:
            holders = self.producer.client_call(
                lambda c: [(k, c.queue_key_holder(self.partition, k)) for k in keys]
            )
            held[:] = [f"{k} by {job_id}" for k, job_id in holders if job_id is not None]
            return not held

        try:
            eventually(all_free, st.QUEUE_KEY_PENDING_HOLD + 30, 2, "every queue key free")
        except AssertionError:
            self.violations.append(f"queue keys still held after their jobs ended: {held[:5]}")

    # -- the run --------------------------------------------------------------------------
    def run(self) -> Report:
        self.cluster.up()
        self.t0 = time.time()
        self.held_checks = 0
        self.producer = Producer(self.cluster.url_list, self.partition, self.workdir, self.mix)
        self.producer.hold(self.args.held)
        self.fleet.fill()
        a = self.args
        schedule = fault_schedule(a.seed, a.duration, a.mean_gap, a.faults)
        self.producer.start(self.args.jobs, expected_length(schedule))
        previous = 0.0
        for p in schedule:
            time.sleep(p.at - previous)
            previous = p.at
            self.inject(p)
        self.producer.join()
        self.restart_cycles()
        self.cluster.up()
        self.fleet.fill()
        self.check_held("at the end")
        self.producer.client_call(lambda c: c.resume(self.partition, "mail"))
        self.producer.client_call(lambda c: c.resume(self.partition, "held"))
        stranded = StrandedWatch(
            lambda: [
                q
                for q in self.cluster.message_counts()
                if str(q["name"]).startswith(f"{self.partition}-")
            ],
            self.cluster.restart_leader_member,
        )
        stuck = self.producer.settle(self.cluster, self.args.settle_timeout, stranded)
        self.fleet.workers.stop_all()
        self.check_keys_free()
        logs = sorted(self.workdir.glob("worker-*.log"))
        ev = collect_evidence(self.producer, self.recorder, self.cluster, self.faults, logs)
        evidence = Evidence(
            plan=ev.plan,
            runs=ev.runs,
            endings=ev.endings,
            faults=[*self.faults, *ev.cancel_kills],
            unexpected_exits=self.fleet.unexpected_exits,
            stuck=stuck,
            violations=self.violations,
            stranded_recovered=stranded.recovered,
        )
        # kept for a post-mortem: everything the verdict was decided on
        (self.workdir / "evidence.json").write_text(json.dumps(dataclasses.asdict(evidence)))
        report = judge(evidence)
        self.cluster.delete_partition(self.partition)
        return report

    def restart_cycles(self) -> None:
        """Restart the paused queue's leader node (stop, then SIGKILL, in turn) and then the
        whole cluster, checking the paused queue after each."""
        for cycle in range(self.args.restart_cycles):
            node = self.cluster.leader_of(f"{self.partition}-held")
            self.cluster.stop_node(node, hard=cycle % 2 == 1)
            self.cluster.start_node(node)
            self.check_held(f"after restart cycle {cycle + 1} (node {node}, the held leader)")
            print(f"chaos: restart cycle {cycle + 1}: node {node} ok", flush=True)
        for cycle in range(self.args.full_restarts):
            self.cluster.restart_all()
            self.check_held(f"after whole-cluster restart {cycle + 1}")
            print(f"chaos: whole-cluster restart {cycle + 1} ok", flush=True)

    def stop(self) -> None:
        self.fleet.workers.stop_all()
        for pid in self.fleet.job_processes():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def parse(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=int(env("CHAOS_JOBS", "3000")))
    p.add_argument("--duration", type=float, default=float(env("CHAOS_DURATION", "240")))
    p.add_argument("--seed", type=int, default=int(env("CHAOS_SEED", "1")))
    p.add_argument("--workers", type=int, default=int(env("CHAOS_WORKERS", "3")))
    p.add_argument("--mean-gap", type=float, default=float(env("CHAOS_MEAN_GAP", "8")))
    p.add_argument("--faults", type=int, help="this many faults instead of --duration's")
    p.add_argument("--held", type=int, default=5, help="jobs kept in the paused queue")
    p.add_argument(
        "--restart-cycles",
        type=int,
        default=int(env("CHAOS_RESTART_CYCLES", "0")),
        help="then restart the paused queue's leader node this many times",
    )
    p.add_argument(
        "--full-restarts",
        type=int,
        default=int(env("CHAOS_FULL_RESTARTS", "0")),
        help="then stop all three nodes and start them again this many times",
    )
    p.add_argument("--retry-levels", default="1,2")
    p.add_argument(
        "--rabbitmq",
        choices=sorted(PREFIXES),
        default=cluster_version(),
        help="the cluster's RabbitMQ version (default: ROGER_CLUSTER_RABBITMQ, else 3.10)",
    )
    p.add_argument("--settle-timeout", type=float, default=180)
    p.add_argument("--workdir", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="roger-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(args, workdir)
    started = time.time()
    try:
        report = chaos.run()
    finally:
        chaos.stop()
    took = time.time() - started
    version = chaos.cluster.version()
    title = (
        f"seed {args.seed}: {args.jobs} jobs, {args.workers} workers, faults for "
        f"{args.duration:.0f} s, whole run {took:.0f} s, RabbitMQ {version}, 3 nodes; "
        f"paused-queue checks after node faults: {chaos.held_checks}"
    )
    print(format_table(report, title))
    for line in chaos.transients:
        print(f"chaos: paused queue miscounted for a moment {line}")
    (workdir / "report.json").write_text(json.dumps({"failures": report.failures()}, indent=1))
    print(f"chaos: evidence in {workdir}")
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
