"""`make test`'s first phase: the suite in three pytest sessions side by side.

The kube stream (e2e and images tiers: the cluster, operators, the real node), the broker
stream (integration and unit tiers: RabbitMQ, the 3-node cluster, workers; and an e2e
module, so that both take about as long) and the clock stream (e2e modules that mostly
wait) share only the machine and the 3.10 broker, where every test's names are its own:
each stream runs with a name tag of its own (``ROGER_TEST_TAG`` plus its first letter:
tests/helpers.py), so its namespaces, Partitions, queues and test operators never meet
another's. Inside a stream, tests run one at a time in their usual order, exactly as they
do alone.

Why sessions and not pytest-xdist: with pytest 9, pytest-xdist 3.8's ``--dist
loadgroup`` no longer groups anything (it renames ``item._nodeid``, which pytest 9 no
longer reads), so every test went to whichever worker was free: one module's operator
fixture started on two workers at once, and the 3-node cluster tests ran beside each other.
Plain sessions need no scheduler at all. More than two busy streams saturated the 2 cores
(three workers: 1-2 load-related failures a run); the third stream, ``clock``, holds tests
that mostly wait.

    python -m roger_devtools.test_streams [--streams 1|3] [pytest args...]

First the broker is swept of this checkout's earlier leftovers (``roger_devtools.broker_sweep``).
Each line of a stream's output is prefixed with its name; the exit code is the first
non-zero one of the streams (0 when all passed). ``--streams 1``: one session, everything
in order.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from typing import IO

from roger_devtools import broker_sweep

# stream -> the test directories (tiers) and single modules it runs; a module named here
# is left out of the stream whose directory holds it. tests/unit/test_streams.py checks
# that every test module runs in exactly one stream. The clock stream holds e2e modules
# that mostly wait (minute ticks, jobs that sleep, grace periods, scaling intervals) and
# use little CPU, so it runs beside the two busy streams at little cost to them; each of
# its modules starts an operator of its own, scoped by the stream's name tag. Measured
# 2026-12-02 with the Schedule e2e alone in it: kube 1,000-1,079 s, broker 1,006-1,110 s,
# clock 106 s; test_operator_delete took 155 s and test_operator_autoscale 92 s. With all
# three here: kube and broker 1,010-1,233 s (the machine's hour), clock 407-437 s. One
# integration module waits too (a client the broker must notice is gone) and runs here.
STREAMS: dict[str, tuple[str, ...]] = {
    "kube": ("tests/e2e", "tests/images"),
    "broker": ("tests/integration", "tests/unit", "tests/e2e/test_operator_hung_broker.py"),
    "clock": (
        "tests/e2e/test_schedule_ticks.py",
        "tests/e2e/test_operator_delete.py",
        "tests/e2e/test_operator_autoscale.py",
        "tests/integration/test_queue_key_holder_lost.py",  # waits for the broker to notice
    ),
}
STREAM_ENV = "ROGER_TEST_STREAM"  # set in each stream's session (tests/conftest.py)


def left_out(name: str) -> list[str]:
    """The modules other streams name that lie in one of this stream's directories."""
    mine = [d for d in STREAMS[name] if not d.endswith(".py")]
    return [
        path
        for other, paths in STREAMS.items()
        if other != name
        for path in paths
        if path.endswith(".py") and any(path.startswith(f"{d}/") for d in mine)
    ]


def stream_command(name: str, pytest_args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        *STREAMS[name],
        *(f"--ignore={path}" for path in left_out(name)),
        "-o",
        f"cache_dir=.pytest_cache/{name}",  # each its own --lf record
        *pytest_args,
    ]


def stream_env(name: str, base: dict[str, str]) -> dict[str, str]:
    """The stream's environment: its own name tag and its name."""
    return {**base, "ROGER_TEST_TAG": base.get("ROGER_TEST_TAG", "t") + name[0], STREAM_ENV: name}


def _copy(name: str, source: IO[bytes], lock: threading.Lock) -> None:
    for line in iter(source.readline, b""):
        with lock:
            sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
            sys.stdout.flush()


def run_streams(pytest_args: list[str]) -> int:
    lock = threading.Lock()
    started = time.monotonic()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    copiers = []
    for name in STREAMS:
        proc = subprocess.Popen(
            stream_command(name, pytest_args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=stream_env(name, dict(os.environ)),
        )
        procs[name] = proc
        assert proc.stdout is not None
        copier = threading.Thread(target=_copy, args=(name, proc.stdout, lock), daemon=True)
        copier.start()
        copiers.append(copier)
    codes: dict[str, int] = {}
    try:
        while len(codes) < len(procs):  # each stream's own time, in the order they end
            for name, proc in procs.items():
                if name not in codes and proc.poll() is not None:
                    codes[name] = proc.returncode
                    took = time.monotonic() - started
                    with lock:
                        print(f"== stream {name}: exit {codes[name]} after {took:.0f}s", flush=True)
            time.sleep(0.5)
    finally:
        for proc in procs.values():  # interrupted: take the other stream down too
            if proc.poll() is None:
                proc.terminate()
    for copier in copiers:
        copier.join(timeout=10)
    return next((code for code in codes.values() if code != 0), 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, choices=(1, len(STREAMS)), default=len(STREAMS))
    args, pytest_args = parser.parse_known_args(argv)
    broker_sweep.main([])  # earlier runs' leftovers cost the broker CPU all run long
    if args.streams == 1:
        return subprocess.call([sys.executable, "-m", "pytest", "tests", *pytest_args])
    return run_streams(pytest_args)


if __name__ == "__main__":
    sys.exit(main())
