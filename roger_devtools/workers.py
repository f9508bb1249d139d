"""Real ``roger worker`` processes of one partition: the one harness of tests and benchmarks.

Each worker writes its log to a file of its own in the caller's directory and serves its
metrics and probes on a free loopback port. ``Workers`` holds what every worker of a test
shares (broker, partition, job modules, callbacks, flags, environment), starts them and
stops them all at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from roger_devtools.polling import GiveUp, eventually
from roger_devtools.ports import free_port
from roger_devtools.processes import stop

ROOT = Path(__file__).resolve().parents[1]
CAUGHT_UP = "partition state caught up"  # the worker's log line once it may consume
# A bound for a heavily loaded machine, not a claim: a worker is ready once its queues are
# declared, and quorum-queue declarations took over 20 s on a shared broker under load.
READY_WITHIN = 90.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class WorkerProc:
    """One ``roger worker`` subprocess, its log file and its metrics port."""

    def __init__(
        self, argv: Sequence[str], log_path: Path, port: int, cwd: Path, env: Mapping[str, str]
    ) -> None:
        self.port = port
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*argv, "--metrics-port", str(port)],
            cwd=cwd,
            env=dict(env),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        """Status and body of a GET on the metrics port; 0 when nothing answers."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            raise GiveUp(f"worker exited {self.proc.returncode}: {self.output()[-2000:]}")

    def wait_ready(self, timeout: float = READY_WITHIN) -> WorkerProc:
        """Until /readyz answers 200; fails at once if the worker exits."""

        def ready() -> bool:
            self._alive()
            return self.get("/readyz")[0] == 200

        try:
            eventually(ready, timeout, message="worker /readyz")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nworker log:\n{self.output()[-2000:]}") from None
        return self

    def wait_caught_up(self, timeout: float = 20) -> WorkerProc:
        """Until the worker has read its partition's state (cancels, pauses) and consumes."""

        def caught_up() -> bool:
            self._alive()
            return CAUGHT_UP in self.output()

        eventually(caught_up, timeout, message=f"{CAUGHT_UP!r} in the worker's log")
        return self

    def metrics(self) -> Samples:
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

    def stop(self, grace: float = 15) -> None:
        stop(self.proc, grace)
        self.log.close()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")


class Workers:
    """Starts workers of one partition (each call may add to the shared settings) and
    stops them all in ``stop_all``."""

    def __init__(
        self,
        amqp_url: str,
        partition: str,
        workdir: Path,
        *,
        jobs: Sequence[str],
        callbacks: Sequence[str] = (),
        retry_levels: str = "1,2",
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
        pythonpath: Sequence[Path] = (),
    ) -> None:
        self.amqp_url, self.partition, self.workdir = amqp_url, partition, workdir
        self.jobs, self.callbacks, self.retry_levels = jobs, callbacks, retry_levels
        self.extra, self.cwd = extra, cwd
        path = [*map(str, pythonpath), str(ROOT), os.environ.get("PYTHONPATH", "")]
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(path).rstrip(os.pathsep),
            "ROGER_LOG_LEVEL": os.environ.get("ROGER_TEST_WORKER_LOG_LEVEL", "INFO"),
            **(env or {}),
        }
        self.started: list[WorkerProc] = []

    def start(
        self,
        queues: Sequence[str] = ("default=2",),
        *,
        ready: bool = True,
        jobs: Sequence[str] | None = None,
        callbacks: Sequence[str] | None = None,
        retry_levels: str | None = None,
        extra: Sequence[str] = (),
        tag: str = "",
        hooks_file: Path | None = None,
    ) -> WorkerProc:
        """A worker, by default once /readyz says 200. ``tag`` names its log file and goes
        to its jobs as ``ROGER_TEST_TAG``; ``hooks_file`` is where the tests' recording
        callback writes (``ROGER_TEST_HOOKS``)."""
        argv = [sys.executable, "-m", "roger.cli", "--amqp-url", self.amqp_url, "worker"]
        argv += ["--partition", self.partition]
        argv += ["--retry-levels", retry_levels or self.retry_levels]
        argv += [a for q in queues for a in ("--queue", q)]
        argv += [a for j in (jobs or self.jobs) for a in ("--jobs", j)]
        callbacks = self.callbacks if callbacks is None else callbacks
        argv += [a for c in callbacks for a in ("--callback", c)]
        argv += [*self.extra, *extra]
        env = dict(self.env)
        if tag:
            env["ROGER_TEST_TAG"] = tag
        if hooks_file is not None:
            env["ROGER_TEST_HOOKS"] = str(hooks_file)
        port = free_port()
        log = self.workdir / f"worker-{len(self.started)}-{tag or 'w'}-{port}.log"
        w = WorkerProc(argv, log, port, self.cwd, env)
        self.started.append(w)
        return w.wait_ready() if ready else w

    def start_consuming(
        self, queues: Sequence[str] = ("default=2",), count: int = 1, extra: Sequence[str] = ()
    ) -> list[WorkerProc]:
        """Start ``count`` workers at once, then wait until each has caught up with the
        partition's state and consumes its queues (/readyz)."""
        started = [self.start(queues, ready=False, extra=extra) for _ in range(count)]
        return [w.wait_caught_up().wait_ready() for w in started]

    def logs(self) -> str:
        """The end of every worker's log, for a failure message."""
        return "\n".join(w.output()[-3000:] for w in self.started)

    def stop_all(self) -> None:
        """SIGTERM to every worker first (they shut down in parallel), then wait for each."""
        for w in self.started:
            if w.proc.poll() is None:
                w.signal(signal.SIGTERM)
        for w in self.started:
            w.stop()
