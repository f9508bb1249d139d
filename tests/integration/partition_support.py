"""Real ``roger worker`` processes for the partition-wide tests, and what they record.

Jobs and a callback (written into the test's directory) append one JSON line per event
to ``$ROGER_TEST_LOG``; ``Recorder`` reads them back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pika

JOBS = """
import json, os, time
import roger

LOG = os.environ.get("ROGER_TEST_LOG", os.devnull)


def note(**event):
    event.setdefault("t", time.time())
    event.setdefault("pid", os.getpid())
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


class Recorder:
    def before_run(self, partition, job):
        note(ev="before_run", job_id=job.id)

    def after_run(self, partition, job, result, state):
        note(ev="after_run", job_id=job.id)

    def on_error(self, partition, job, error, stacktrace, state):
        note(ev="on_error", job_id=job.id, kind=error[0])

    def on_cancel(self, partition, job):
        note(ev="on_cancel", job_id=job.id)

    def on_buried(self, partition, job, error, stacktrace, state):
        note(ev="on_buried", job_id=job.id, kind=error[0])
"""


class Recorder:
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


class Workers:
    """Start/kill ``roger worker`` processes of one partition in a directory."""

    def __init__(self, workdir: Path, amqp_url: str, partition: str) -> None:
        self.dir = workdir
        self.url = amqp_url
        self.partition = partition
        self.log = workdir / "events.jsonl"
        (workdir / "pjobs.py").write_text(JOBS)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.recorder = Recorder(self.log)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "ROGER_TEST_LOG": str(self.log),
            "ROGER_AMQP_URL": self.url,
            "PYTHONPATH": str(self.dir),
            "ROGER_LOG_LEVEL": os.environ.get("ROGER_TEST_WORKER_LOG_LEVEL", "INFO"),
        }

    def start(
        self, queues: str = "default=2", extra: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        out = open(self.dir / f"worker-{n}.log", "ab")  # noqa: SIM115 - kept by the process
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roger.cli",
                "worker",
                "--partition",
                self.partition,
                *[a for q in queues.split(",") for a in ("--queue", q)],
                "--jobs",
                "pjobs",
                "--callback",
                "pjobs:Recorder",
                "--retry-levels",
                "1",
                "--shutdown-timeout",
                "2",
                *extra,
            ],
            cwd=self.dir,
            env=self.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def start_consuming(
        self, queues: str = "default=2", count: int = 1, extra: tuple[str, ...] = ()
    ) -> list[subprocess.Popen[bytes]]:
        """Start ``count`` workers, then wait until each has caught up with the state."""
        procs = [self.start(queues, extra) for _ in range(count)]
        for proc in procs:
            self.wait_consuming(proc)
        return procs

    def wait_consuming(self, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
        n = self.procs.index(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = (self.dir / f"worker-{n}.log").read_text(errors="replace")
            if "partition state caught up" in text:
                return
            if proc.poll() is not None:
                raise AssertionError(f"worker exited {proc.returncode}: {text[-2000:]}")
            time.sleep(0.1)
        raise AssertionError("worker did not start consuming")

    def kill9(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.dir.glob("worker-*.log"))
        )

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def message_count(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (a passive declare on a connection of its own)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def delete_queues(conn: pika.BlockingConnection, names: list[str]) -> None:
    """Delete each queue that exists, one channel each (a refusal closes its channel)."""
    for name in names:
        ch = conn.channel()
        try:
            ch.queue_delete(name)
        except pika.exceptions.ChannelClosedByBroker:
            pass
        finally:
            if ch.is_open:
                ch.close()
