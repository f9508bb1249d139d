"""A partition's worth of recording jobs: every job and hook appends one JSON line.

``recording_workers`` writes the job module ``pjobs`` (jobs ``sleepy``, ``keyed``, ``fast``,
``chaos`` and the callback ``Recorder``) into a directory, and returns workers that run it with
their events going to ``events.jsonl`` there; ``Recorder`` reads those events back. The
partition-wide tests, the cancel-latency benchmark and the chaos run use them. Every
event carries the pid of the process that wrote it and that process's parent (a job
process's parent is its worker), so a run can be tied to the worker that ran it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from roger_devtools.workers import Workers

JOBS = """
import json, os, time
import roger

LOG = os.environ.get("ROGER_TEST_LOG", os.devnull)
MARKERS = os.environ.get("ROGER_TEST_MARKERS", "")


def note(**event):
    event.setdefault("t", time.time())
    event.setdefault("pid", os.getpid())
    event.setdefault("ppid", os.getppid())
    with open(LOG, "a") as fh:
        fh.write(json.dumps(event) + "\\n")


@roger.job
def sleepy(args):
    note(ev="start", id=args.get("tag"), job="sleepy")
    time.sleep(args.get("s", 3600))
    note(ev="end", id=args.get("tag"), job="sleepy")


@roger.job(queue_key=lambda a: a.get("qk"), execution_key=lambda a: a.get("xk"))
def keyed(args):
    note(ev="start", id=args.get("tag"), job="keyed", xk=args.get("xk"))
    time.sleep(args.get("s", 0))
    if args.get("fail"):
        raise RuntimeError("asked to fail")
    note(ev="end", id=args.get("tag"), job="keyed", xk=args.get("xk"))


@roger.job(queue_key=lambda a: a.get("qk"))
def fast(args):
    note(ev="start", id=args.get("tag"), job="fast")
    if args.get("fail"):
        raise RuntimeError("asked to fail")


@roger.job(
    retryable=True, queue_key=lambda a: a.get("qk"), execution_key=lambda a: a.get("xk")
)
def chaos(args):
    # kind ok: succeeds; flaky: fails its first run only; fail: always fails
    note(ev="start", id=args["tag"], job="chaos")
    time.sleep(args.get("s", 0))
    marker = os.path.join(MARKERS, args["tag"])
    if args["kind"] == "fail" or (args["kind"] == "flaky" and not os.path.exists(marker)):
        if args["kind"] == "flaky":
            open(marker, "w").close()
        note(ev="raised", id=args["tag"], job="chaos")
        raise RuntimeError("asked to fail")
    note(ev="end", id=args["tag"], job="chaos")


def _tag(job):
    return job.args.get("tag") if isinstance(job.args, dict) else None


class Recorder:
    def before_run(self, partition, job):
        note(ev="before_run", job_id=job.id, tag=_tag(job))

    def after_run(self, partition, job, result, state):
        note(ev="after_run", job_id=job.id, tag=_tag(job))

    def on_error(self, partition, job, error, stacktrace, state):
        note(ev="on_error", job_id=job.id, tag=_tag(job), kind=error[0])

    def on_cancel(self, partition, job):
        note(ev="on_cancel", job_id=job.id, tag=_tag(job))

    def on_buried(self, partition, job, error, stacktrace, state):
        note(ev="on_buried", job_id=job.id, tag=_tag(job), kind=error[0])
"""


class Recorder:
    """The events ``pjobs`` wrote, by kind (``start``, ``end``, a hook name) and fields."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self, ev: str | None = None, **match: Any) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if (ev is None or e.get("ev") == ev) and all(e.get(k) == v for k, v in match.items()):
                out.append(e)
        return out


def recording_workers(workdir: Path, amqp_url: str, partition: str) -> tuple[Workers, Recorder]:
    """Workers of ``partition`` that run ``pjobs`` from ``workdir``, and their recorder."""
    (workdir / "pjobs.py").write_text(JOBS)
    events = workdir / "events.jsonl"
    markers = workdir / "markers"  # pjobs:chaos "flaky" jobs: one file once they failed
    markers.mkdir(exist_ok=True)
    workers = Workers(
        amqp_url,
        partition,
        workdir,
        jobs=["pjobs"],
        callbacks=["pjobs:Recorder"],
        retry_levels="1",
        extra=["--shutdown-timeout", "2"],
        env={"ROGER_TEST_LOG": str(events), "ROGER_TEST_MARKERS": str(markers)},
        cwd=workdir,
        pythonpath=[workdir],
    )
    return workers, Recorder(events)
