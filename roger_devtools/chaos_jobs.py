"""The chaos run's jobs: what it sends (``JobMix``, ``Producer``) and what it reads back
(``collect_evidence``) for ``roger_devtools.chaos_accounting`` to judge.

Jobs are told apart by a ``tag`` in their args (the client may fail to say which id a job
got when a node dies under it); the recorder's events and the parked and buried messages
all carry it.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pika

import roger
from roger_devtools.chaos_accounting import Ending, Fault, PlannedJob, Run
from roger_devtools.chaos_cluster import ChaosCluster
from roger_devtools.polling import eventually
from roger_devtools.recording import Recorder

T = TypeVar("T")
# kind -> share of the jobs; "dup" repeats the queue key of the "keyed" job before it.
WEIGHTS = {
    "ok": 38,
    "flaky": 12,
    "fail": 8,
    "cancel": 8,
    "invalid": 7,
    "keyed": 15,
    "dup": 4,
    "mail": 8,
}
CANCEL_SLEEP = 20  # a cancelled job that were not cancelled would end, late, as succeeded
PARKED_NAMES = ("pjobs:missing", "os:system")  # unknown; not a job module: both parked


@dataclass(frozen=True)
class Spec:
    tag: str
    kind: str
    job: str
    args: dict[str, Any]
    queue: str = "default"


class JobMix:
    """The seeded sequence of jobs of a run."""

    def __init__(self, seed: int, retry_levels: int) -> None:
        self.rng = random.Random(seed * 7919 + 1)
        self.levels = retry_levels
        self.count = 0
        self.last_key = "k-none"

    def max_runs(self, kind: str) -> int:
        return {"flaky": 2, "fail": 1 + self.levels, "invalid": 0}.get(kind, 1)

    def next(self) -> Spec:
        kind = self.rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        tag = f"{kind}-{self.count}"
        self.count += 1
        s = round(self.rng.uniform(0.02, 0.4), 3)
        if kind == "cancel":
            return Spec(tag, kind, "pjobs:sleepy", {"tag": tag, "s": CANCEL_SLEEP})
        if kind == "invalid":
            name = PARKED_NAMES[self.count % 2]
            return Spec(tag, kind, name, {"tag": tag})
        args: dict[str, Any] = {"tag": tag, "kind": kind if kind in ("flaky", "fail") else "ok"}
        args["s"] = s
        if kind == "keyed":
            self.last_key = f"k-{tag}"
            args |= {"qk": self.last_key, "xk": f"x{self.rng.randrange(4)}"}
        if kind == "dup":
            args["qk"] = self.last_key
        return Spec(tag, kind, "pjobs:chaos", args, "mail" if kind == "mail" else "default")


class Producer:
    """Sends the run's jobs in batches from a thread, cancels the ``cancel`` ones, and
    keeps the plan: what each sent job must become."""

    def __init__(self, url_list: str, partition: str, workdir: Path, mix: JobMix) -> None:
        if str(workdir) not in sys.path:
            sys.path.insert(0, str(workdir))  # the client computes keys from pjobs
        self.url_list, self.partition, self.mix = url_list, partition, mix
        self.client = roger.Client(url_list)
        self.control = roger.Client(url_list)
        self.plan: dict[str, PlannedJob] = {}
        self.errors = 0
        self.thread: threading.Thread | None = None

    def client_call(self, call: Callable[[roger.Client], T], timeout: float = 120) -> T:
        """A control call (pause, resume, cancel), asked again while nodes come and go."""
        return eventually(lambda: (call(self.control), True), timeout, 1, "control call")[0]

    def _plan(self, spec: Spec, status: str) -> None:
        expected = {"cancel": "cancelled", "invalid": "parked", "fail": "buried"}
        self.plan[spec.tag] = PlannedJob(
            spec.tag,
            spec.kind,
            None if status == "duplicate" else expected.get(spec.kind, "succeeded"),
            self.mix.max_runs(spec.kind),
            in_doubt=status == "error",
            sent_at=time.time(),
        )

    def cancel(self, job_id: str) -> None:
        self.client_call(lambda c: c.cancel(self.partition, job_id))

    def hold(self, count: int) -> None:
        """``count`` jobs into the queue ``held``, paused first and never resumed until the
        end of the run."""
        self.client_call(lambda c: c.pause(self.partition, "held"))
        for i in range(count):
            spec = Spec(f"held-{i}", "held", "pjobs:chaos", {"tag": f"held-{i}", "kind": "ok"})
            self.client.enqueue(self.partition, spec.job, spec.args, queue="held")
            self._plan(spec, "enqueued")

    def _publish_invalid(self, specs: list[Spec]) -> None:
        body = [
            json.dumps({"id": s.tag, "name": s.job, "args": s.args, "queue": "default"})
            for s in specs
        ]
        status = "enqueued"
        try:
            urls = self.url_list.split(",")
            conn = pika.BlockingConnection([pika.URLParameters(u) for u in urls])
            ch = conn.channel()
            ch.confirm_delivery()
            for b in body:
                props = pika.BasicProperties(delivery_mode=2)
                ch.basic_publish("", f"{self.partition}-default", b.encode(), props)
            conn.close()
        except Exception:  # a node went away mid-publish: these may or may not be queued
            status = "error"
        for s in specs:
            self._plan(s, status)

    def send_batch(self, size: int) -> None:
        specs = [self.mix.next() for _ in range(size)]
        self._publish_invalid([s for s in specs if s.kind == "invalid"])
        jobs = [s for s in specs if s.kind != "invalid"]
        try:
            results = self.client.enqueue_many(
                self.partition, [(s.job, s.args, s.queue) for s in jobs]
            )
            statuses = [(r.status, r.job_id) for r in results]
        except Exception:  # the whole batch in doubt
            statuses = [("error", "")] * len(jobs)
        for s, (status, job_id) in zip(jobs, statuses, strict=True):
            self.errors += status == "error"
            self._plan(s, status)
            if s.kind == "cancel" and job_id and status != "duplicate":
                self.cancel(job_id)

    def start(self, total: int, over: float) -> None:
        batch = 20
        pause = over / max(1, total // batch)

        def produce() -> None:
            sent = 0
            while sent < total:
                began = time.time()
                self.send_batch(min(batch, total - sent))
                sent += batch
                time.sleep(max(0.0, pause - (time.time() - began)))

        self.thread = threading.Thread(target=produce, name="chaos-producer", daemon=True)
        self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def settle(
        self, cluster: ChaosCluster, timeout: float, watch: Callable[[float], None] | None = None
    ) -> dict[str, int]:
        """Until no job is left in a main, retry or waiting queue (ready or unacked), three
        polls in a row; returns what is left if that never happens. ``watch`` runs on every
        poll that finds jobs left (the stranded-retry-queue remedy)."""
        left: dict[str, int] = {}
        calm = 0

        def settled() -> bool:
            nonlocal calm, left
            left = {
                q["name"]: int(q["messages"])
                for q in cluster.partition_queues(self.partition)
                if q["name"].startswith(f"{self.partition}-")
                and not q["name"].endswith((".buried", ".invalid"))
                and int(q.get("messages") or 0) > 0
            }
            calm = 0 if left else calm + 1
            if left and watch is not None:
                watch(time.time())
            return calm >= 3

        try:
            eventually(settled, timeout, 2, "every job queue empty")
        except AssertionError:
            return left
        self.client.close()
        self.control.close()
        return {}


@dataclass
class Collected:
    plan: dict[str, PlannedJob]
    runs: list[Run]
    endings: list[Ending]
    cancel_kills: list[Fault]


def _runs(recorder: Recorder) -> list[Run]:
    done: dict[tuple[str, int], list[float]] = {}
    for e in recorder.events():
        if e.get("ev") in ("end", "raised"):
            done.setdefault((str(e["id"]), int(e["pid"])), []).append(float(e["t"]))
    out = []
    for e in recorder.events("start"):
        tag, pid, t = str(e["id"]), int(e["pid"]), float(e["t"])
        finished = [d for d in done.get((tag, pid), []) if d >= t]
        out.append(Run(tag, pid, int(e.get("ppid", 0)), t, min(finished) if finished else None))
    return out


def _tag(body: bytes) -> str:
    try:
        return str(json.loads(body)["args"]["tag"])
    except (ValueError, KeyError, TypeError):
        return f"unreadable:{body[:40]!r}"


# What a worker logs when it kills a job process to stop a cancelled job (worker/pool.py).
_CANCEL_KILL = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*killing job process (\d+) for job \S+ \(cancel\)"
)


def logged_cancel_kills(lines: Iterable[str]) -> list[Fault]:
    """The job processes workers' logs say were killed for a cancel. The ``start`` record of
    the cancelled job is no evidence of these: a cancel that comes right after the job was
    handed to its process kills it before the job wrote a line, and the jobs beside it run
    again (bystanders)."""
    out = []
    for line in lines:
        m = _CANCEL_KILL.match(line)
        if m:
            at = time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
            out.append(Fault("cancel_kill", at, at, int(m[3])))
    return out


def collect_evidence(
    producer: Producer,
    recorder: Recorder,
    cluster: ChaosCluster,
    faults: list[Fault],
    worker_logs: Iterable[Path] = (),
) -> Collected:
    p = producer.partition
    endings = [
        Ending(e["tag"], outcome, e["t"], pid=e["pid"], ppid=e["ppid"])
        for hook, outcome in (("after_run", "succeeded"), ("on_cancel", "cancelled"))
        for e in recorder.events(hook)
    ]
    buried_at: dict[str, list[float]] = {}
    for e in recorder.events("on_buried"):
        buried_at.setdefault(str(e["tag"]), []).append(float(e["t"]))
    for queue in ("default", "mail", "held"):
        for headers, body in cluster.peek(f"{p}-{queue}.buried"):
            tag = _tag(body)
            times = buried_at.get(tag) or [None]  # type: ignore[list-item]
            kind = str(headers.get("x-roger-error-kind", ""))
            endings.append(Ending(tag, "buried", times.pop(0) if times else None, kind))
        for _headers, body in cluster.peek(f"{p}-{queue}.invalid"):
            endings.append(Ending(_tag(body), "parked"))
    runs = _runs(recorder)
    started = {(r.tag): r for r in runs}
    cancel_kills = [
        Fault("cancel_kill", started[e["tag"]].start, float(e["t"]), started[e["tag"]].pid)
        for e in recorder.events("on_cancel")
        if e["tag"] in started
    ]
    for log in worker_logs:
        cancel_kills += logged_cancel_kills(log.read_text(errors="replace").splitlines())
    return Collected(dict(producer.plan), runs, endings, cancel_kills)
