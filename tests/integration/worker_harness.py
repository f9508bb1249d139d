"""Run real `roger worker` processes against the test broker, and look at the broker.

Every wait is a poll with a deadline that fails the test with what it last saw.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pika
from prometheus_client.parser import text_string_to_metric_families

from roger.core import naming
from tests.brokers import BROKER
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
MGMT = BROKER.management_api
T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T], timeout: float = 15.0, every: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), out.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out.update(extra)
    return out


def roger(*args: str, amqp_url: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion."""
    head = [sys.executable, "-m", "roger.cli"] + (["--amqp-url", amqp_url] if amqp_url else [])
    return subprocess.run(
        [*head, *args],
        cwd=ROOT,
        env=kw.pop("env", env()),
        capture_output=True,
        text=True,
        timeout=kw.pop("timeout", 30),
        **kw,
    )


class WorkerProc:
    """A `roger worker` subprocess with metrics on a free port and its log in a file."""

    def __init__(
        self,
        amqp_url: str,
        partition: str,
        tmp: Path,
        *,
        queues: Iterable[str] = ("default=2",),
        jobs: Iterable[str] = ("tests.jobs.basic",),
        callbacks: Iterable[str] = (),
        retry_levels: str = "1,2",
        extra: Iterable[str] = (),
        tag: str = "",
        hooks_file: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.log_path = tmp / f"worker-{tag or 'w'}-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "roger.cli",
            "--amqp-url",
            amqp_url,
            "worker",
            "--partition",
            partition,
            "--retry-levels",
            retry_levels,
            "--metrics-port",
            str(self.port),
        ]
        for q in queues:
            cmd += ["--queue", q]
        for j in jobs:
            cmd += ["--jobs", j]
        for c in callbacks:
            cmd += ["--callback", c]
        cmd += list(extra)
        extra_env = {"ROGER_TEST_TAG": tag}
        if hooks_file is not None:
            extra_env["ROGER_TEST_HOOKS"] = str(hooks_file)
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env(**extra_env), stdout=self.log, stderr=subprocess.STDOUT
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float = 20) -> WorkerProc:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}: {self.output()}")
            return self.get("/readyz")[0] == 200

        wait_for("worker /readyz", ready, timeout)
        return self

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200, status
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            v
            for (n, lbl), v in self.metrics().items()
            if n == name and all((k, val) in lbl for k, val in labels.items())
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()


class Broker:
    """A blocking pika connection for looking at queues and publishing raw messages."""

    def __init__(self, amqp_url: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.ch = self.conn.channel()

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()

    def _channel(self) -> Any:
        if not self.ch.is_open:
            self.ch = self.conn.channel()
        return self.ch

    def count(self, queue: str) -> int:
        """Ready messages; -1 if the queue does not exist."""
        try:
            return int(self._channel().queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:
            return -1

    def consumers(self, queue: str) -> int:
        return int(self._channel().queue_declare(queue, passive=True).method.consumer_count)

    def publish(self, queue: str, body: bytes, **props: Any) -> None:
        props.setdefault("delivery_mode", 2)
        self._channel().basic_publish("", queue, body, pika.BasicProperties(**props))

    def drain(self, queue: str) -> list[tuple[Any, bytes]]:
        """Take every ready message of a queue (acknowledged)."""
        out = []
        ch = self._channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))

    def peek(self, queue: str) -> list[tuple[Any, bytes]]:
        """Every ready message of a queue, left in place (requeued by the channel close)."""
        ch = self.conn.channel()
        out = []
        try:
            while True:
                method, props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    return out
                out.append((props, body))
        finally:
            ch.close()

    def delete_partition(self, partition: str) -> None:
        """Every queue whose name starts with ``<partition>-`` (Roger's and the state's)."""
        names = [q["name"] for q in management("/queues/%2F?columns=name")]
        self.delete(*(n for n in names if naming.belongs_to_partition(n, partition)))

    def delete(self, *queues: str) -> None:
        for q in queues:
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                self._channel().queue_delete(q)


def management(path: str, method: str = "GET", attempts: int = 5) -> Any:
    """The RabbitMQ management API (guest/guest on loopback). A 5xx is asked again: the
    API answers 500 now and then while queues come and go on a busy machine."""
    req = urllib.request.Request(MGMT + path, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                return json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == attempts - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def read_lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def queue_names(
    partition: str, queue: str = "default", levels: Iterable[int] = (1, 2)
) -> list[str]:
    base = f"{partition}-{queue}"
    return [base, *(f"{base}.retry.{s}" for s in levels), f"{base}.buried", f"{base}.invalid"]


class Workers:
    """Starts workers for one test and stops them (and deletes its queues) afterwards."""

    def __init__(self, amqp_url: str, partition: str, tmp: Path) -> None:
        self.amqp_url, self.partition, self.tmp = amqp_url, partition, tmp
        self.started: list[WorkerProc] = []

    def start(self, ready: bool = True, **kw: Any) -> WorkerProc:
        w = WorkerProc(self.amqp_url, self.partition, self.tmp, **kw)
        self.started.append(w)
        return w.wait_ready() if ready else w

    def stop_all(self) -> None:
        for w in self.started:
            w.stop()
