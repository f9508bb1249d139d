"""Roger worker throughput against a bare pika consumer, Dramatiq and Celery.

Same broker, same run, N no-op jobs each. Every system gets a pre-filled queue and is
timed over the middle 80% of its drain (10% -> 90% consumed), sampled by passive declares,
so start-up is excluded for all of them alike. Then Roger's enqueue rate (confirmed
``Client.enqueue``) and its enqueue-to-start latency at half its measured peak.

Usage: python bench/worker_throughput.py [--jobs 20000] [--workers 16]
(Over 400 lines: one benchmark of four systems; ab_worker.py and enqueue_throughput.py reuse it.)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
from pika.adapters.select_connection import SelectConnection

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path[:0] = [str(ROOT / "worker"), str(BENCH), str(ROOT)]

from roger.core import message, naming  # noqa: E402
from roger.core.config import split_slots  # noqa: E402
from roger.worker.procs import available_cpus  # noqa: E402
from roger_devtools.polling import eventually  # noqa: E402
from roger_devtools.ports import free_port  # noqa: E402
from roger_devtools.processes import stop  # noqa: E402


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(ROOT), out.get("PYTHONPATH", "")])
    out.update(extra)
    return out


class Broker:
    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()

    def count(self, queue: str) -> int:
        return int(self.ch.queue_declare(queue, passive=True).method.message_count)

    def fill(self, queue: str, bodies: Callable[[int], tuple[bytes, Any]], n: int) -> None:
        for i in range(n):
            body, props = bodies(i)
            self.ch.basic_publish("", queue, body, props)
        deadline = time.monotonic() + 120
        while self.count(queue) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{queue}: only {self.count(queue)} of {n} arrived")
            time.sleep(0.05)

    def drain_rate(
        self, queue: str, n: int, timeout: float = 600, on_mark: Callable[[], None] | None = None
    ) -> float:
        """Jobs/s over the middle 80% of the drain of a pre-filled queue; ``on_mark`` runs
        where that window starts and where it ends."""
        first, last = measured_window(n)
        lo, hi = n - first, n - last  # as messages left in the queue
        t_lo = t_hi = None
        deadline = time.monotonic() + timeout
        while t_hi is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{queue} did not drain: {self.count(queue)} left")
            left = self.count(queue)
            now = time.perf_counter()
            if t_lo is None and left <= lo:
                t_lo = now
                if on_mark is not None:
                    on_mark()
            if left <= hi:
                t_hi = now
                if on_mark is not None:
                    on_mark()
            time.sleep(0.01)
        assert t_lo is not None
        return (lo - hi) / (t_hi - t_lo)

    def delete_partition(self, partition: str) -> None:
        """Every queue named ``<partition>-...`` in this URL's vhost (listed by the
        management API)."""
        vhost = urllib.parse.quote(pika.URLParameters(self.url).virtual_host, safe="")
        try:
            with management("GET", f"queues/{vhost}?columns=name") as r:
                names = [q["name"] for q in json.load(r)]
        except OSError:
            names = roger_queues(partition)
        self.delete(*(n for n in names if naming.belongs_to_partition(n, partition)))

    def delete(self, *queues: str) -> None:
        for q in queues:
            try:
                self.ch.queue_delete(q)
            except pika.exceptions.ChannelClosedByBroker:
                self.ch = self.conn.channel()


def management(method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
    """A call to the local broker's management API (guest/guest), as a response context."""
    req = urllib.request.Request(
        f"http://127.0.0.1:15672/api/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
            "Content-Type": "application/json",
        },
    )
    return urllib.request.urlopen(req, timeout=timeout)


@contextlib.contextmanager
def fresh_vhost(url: str) -> Iterator[str]:
    """``url`` moved to a new, empty vhost (deleted afterwards with what it holds): other
    runs' leftover queues on a shared broker neither slow the run nor get touched by it."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    quoted = urllib.parse.quote(name, safe="")
    try:
        with management("PUT", f"vhosts/{quoted}", {}, timeout=120):
            pass
        user = pika.URLParameters(url).credentials.username
        perms = {"configure": ".*", "write": ".*", "read": ".*"}
        with management("PUT", f"permissions/{quoted}/{user}", perms):
            pass
        parts = urllib.parse.urlsplit(url)
        yield urllib.parse.urlunsplit(parts._replace(path="/" + quoted))
    finally:
        try:  # a loaded broker takes its time over a vhost with streams and quorum queues
            with management("DELETE", f"vhosts/{quoted}", timeout=300):
                pass
        except OSError as exc:
            print(f"vhost {name} not deleted ({exc}): delete it by hand", file=sys.stderr)


def add_amqp_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("ROGER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    )


def wait_http(url: str, timeout: float = 60) -> None:
    def ok() -> bool:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)

    eventually(ok, timeout, 0.1, f"{url} to answer 200")


# Called where a drain's measured window starts and ends, with the consumer's pid
# (ab_worker.py --cpu reads the CPU the broker and that process tree used in between).
OnMark = Callable[[int], None]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``/proc/<pid>/task/<tid>/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured_window(n: int) -> tuple[int, int]:
    """The deliveries of an ``n``-job drain that rates are measured over: from the 10 %
    mark to the 90 % one (start-up and the tail left out), as counts consumed."""
    return int(n * 0.1), int(n * 0.9)


def drain_and_stop(
    b: Broker,
    proc: subprocess.Popen[bytes],
    queue: str,
    n: int,
    *extra_queues: str,
    on_mark: OnMark | None = None,
) -> float:
    """A peer's drain rate of ``queue``; then the peer is stopped and its queues deleted."""
    try:
        return b.drain_rate(queue, n, on_mark=_marks(on_mark, proc.pid))
    finally:
        stop(proc)
        b.delete(queue, *extra_queues)


def _marks(on_mark: OnMark | None, pid: int) -> Callable[[], None] | None:
    return None if on_mark is None else lambda: on_mark(pid)


def roger_body(partition: str) -> Callable[[int], tuple[bytes, Any]]:
    def make(i: int) -> tuple[bytes, Any]:
        msg = message.JobMessage(
            id=uuid.uuid4().hex,
            name="bench_roger_jobs:noop",
            args=None,
            queue="default",
            queued_at=time.time(),
        )
        return message.encode(msg), pika.BasicProperties(**message.properties(msg, partition))

    return make


def _broker_pid(url: str) -> int:
    """The process listening on the AMQP URL's port (``ss``): the broker to pin."""
    port = pika.URLParameters(url).port
    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"pid=(\d+)", out)
    if found is None:
        raise SystemExit(f"no process of this user listens on port {port}: cannot pin it")
    return int(found.group(1))


@contextlib.contextmanager
def broker_on_cpus(url: str, cpus: str | None) -> Iterator[None]:
    """The broker (every thread) on ``cpus`` alone, this process and all it starts on the
    other CPUs; both restored on the way out. ``None``: nothing changes."""
    if cpus is None:
        yield
        return
    pid, everything = _broker_pid(url), os.sched_getaffinity(0)
    broker = set(_cpu_list(cpus))
    if not broker < everything:
        raise SystemExit(f"--broker-cpus {cpus} must leave a CPU for the rest of {everything}")
    subprocess.run(["taskset", "-a", "-cp", cpus, str(pid)], check=True, capture_output=True)
    os.sched_setaffinity(0, everything - broker)
    print(
        f"# broker (pid {pid}) on CPUs {sorted(broker)}, the rest on {sorted(everything - broker)}"
    )
    try:
        yield
    finally:
        os.sched_setaffinity(0, everything)
        all_cpus = ",".join(map(str, sorted(everything)))
        subprocess.run(["taskset", "-a", "-cp", all_cpus, str(pid)], capture_output=True)


def _cpu_list(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


# -- the contenders --------------------------------------------------------------------
class _TurnAcks:
    """The ceiling's acks: the last tag of a loop turn, ``multiple=True``."""

    def __init__(self) -> None:
        self.tag, self.channel, self.due = 0, None, False

    def delivered(self, conn: Any, channel: Any, tag: int) -> None:
        self.tag, self.channel = tag, channel
        if not self.due:
            self.due = True
            conn.ioloop.call_later(0, lambda: self.flush(conn))

    def flush(self, conn: Any) -> None:
        self.due = False
        if conn.is_open and self.channel is not None:
            self.channel.basic_ack(self.tag, multiple=True)


def bench_pika(
    url: str,
    n: int,
    prefetch: int,
    qtype: str,
    on_mark: OnMark | None = None,
    bodies: Callable[[int], tuple[bytes, Any]] | None = None,
) -> float:
    """The ceiling: a tuned bare consumer. ``bodies`` makes its messages (default: a few
    bytes with only ``delivery_mode``; ``roger_body`` gives it Roger's own job messages)."""
    b = Broker(url)
    q = f"bench-pika-{uuid.uuid4().hex[:6]}"
    b.ch.queue_declare(q, durable=True, arguments={"x-queue-type": qtype})
    props = pika.BasicProperties(delivery_mode=2)
    b.fill(q, bodies or (lambda i: (b'{"n":%d}' % i, props)), n)
    state = {"n": 0, "t": [0.0, 0.0]}
    lo, hi = measured_window(n)

    # Tuned as Roger acks: one ack with multiple=True per loop turn (ioloop.call_later(0)),
    # for every delivery decoded in that turn; acking one by one costs a frame apiece.
    acks = _TurnAcks()

    def on_message(ch: Any, method: Any, _p: Any, _b: bytes) -> None:
        acks.delivered(conn, ch, method.delivery_tag)
        state["n"] += 1
        if state["n"] in (lo, hi):
            state["t"][state["n"] == hi] = time.perf_counter()
            if on_mark is not None:
                on_mark(os.getpid())  # this process is the consumer
        if state["n"] == n:
            conn.close()

    def on_channel(ch: Any) -> None:
        ch.basic_qos(prefetch_count=prefetch, callback=lambda _f: ch.basic_consume(q, on_message))

    conn = SelectConnection(
        pika.URLParameters(url),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, r: c.ioloop.stop(),
    )
    conn.ioloop.start()
    b.delete(q)
    return (hi - lo) / (state["t"][1] - state["t"][0])


def start_roger(
    url: str,
    partition: str,
    workers: int,
    extra_env: dict[str, str],
    processes: int | None = None,
) -> Any:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roger.cli",
            "--amqp-url",
            url,
            "--log-level",
            "WARNING",
            "worker",
            "--partition",
            partition,
            "--queue",
            f"default={workers}",
            "--jobs",
            "bench_roger_jobs",
            "--callback",
            "bench_roger_jobs:AllHooks",
            "--metrics-port",
            str(port),
            "--retry-levels",
            "1",
            *(["--job-processes", str(processes)] if processes else []),
        ],
        cwd=ROOT,
        env=env(**extra_env),
    )
    wait_http(f"http://127.0.0.1:{port}/readyz")
    return proc


def roger_queues(partition: str) -> list[str]:
    base = f"{partition}-default"
    return [base, f"{base}.retry.1", f"{base}.buried", f"{base}.invalid"]


def roger_label(workers: int, processes: int | None = None) -> str:
    split = split_slots(workers, processes or available_cpus())
    shape = f"{len(split)} processes x {split[0]} slots" if split[0] > 1 else "a process per slot"
    return f"Roger worker, max_workers {workers} ({shape})"


def bench_roger(
    url: str,
    n: int,
    workers: int,
    processes: int | None = None,
    extra_env: dict[str, str] | None = None,
    on_mark: OnMark | None = None,
) -> float:
    b = Broker(url)
    partition = f"bench-{uuid.uuid4().hex[:6]}"
    extra = dict(extra_env or {})
    # ab_worker.py's variants are environments: this one is --job-processes instead
    processes = processes or int(extra.pop("BENCH_JOB_PROCESSES", 0)) or None
    proc = start_roger(url, partition, workers, extra, processes)  # declares the queues
    stop(proc)
    b.fill(f"{partition}-default", roger_body(partition), n)
    proc = start_roger(url, partition, workers, extra, processes)
    try:
        return b.drain_rate(f"{partition}-default", n, on_mark=_marks(on_mark, proc.pid))
    finally:
        stop(proc)
        b.delete_partition(partition)


def declare_dramatiq_queue(b: Broker) -> str:
    """A queue as Dramatiq's RabbitMQ broker declares it (its dead-letter queue beside)."""
    q = f"bench-dramatiq-{uuid.uuid4().hex[:6]}"
    b.ch.queue_declare(
        q,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{q}.XQ"},
    )
    return q


def dramatiq_body(q: str, actor: str = "noop") -> Callable[[int], tuple[bytes, Any]]:
    """Dramatiq messages for ``actor``; ``stamp`` carries the time it was made."""
    import dramatiq

    props = pika.BasicProperties(delivery_mode=2)

    def body(i: int) -> tuple[bytes, Any]:
        args = (time.time(),) if actor == "stamp" else ()
        return dramatiq.Message(
            queue_name=q, actor_name=actor, args=args, kwargs={}, options={}
        ).encode(), props

    return body


def start_dramatiq(url: str, q: str, **extra: str) -> subprocess.Popen[bytes]:
    """``dramatiq`` with 2 processes x 8 threads on ``q``."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dramatiq"),
            "bench_dramatiq_app",
            "--processes",
            "2",
            "--threads",
            "8",
        ],
        cwd=BENCH,
        env=env(BENCH_AMQP_URL=url, BENCH_QUEUE=q, **extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bench_dramatiq(url: str, n: int, on_mark: OnMark | None = None) -> float:
    b = Broker(url)
    q = declare_dramatiq_queue(b)
    b.fill(q, dramatiq_body(q), n)
    proc = start_dramatiq(url, q)
    return drain_and_stop(b, proc, q, n, f"{q}.DQ", f"{q}.XQ", on_mark=on_mark)


def celery_body() -> Callable[[int], tuple[bytes, Any]]:
    """Celery's task protocol 2 messages for the no-op task."""
    from bench_celery_app import app

    def body(i: int) -> tuple[bytes, Any]:
        tid = uuid.uuid4().hex
        m = app.amqp.as_task_v2(tid, "bench_celery_app.noop", args=(), kwargs={})
        props = pika.BasicProperties(
            delivery_mode=2,
            content_type="application/json",
            content_encoding="utf-8",
            headers=m.headers,
            correlation_id=tid,
            reply_to="",
        )
        return json.dumps(m.body).encode(), props

    return body


def start_celery(url: str, q: str) -> subprocess.Popen[bytes]:
    """A Celery prefork worker with 2 processes on ``q``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench_celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-Q",
            q,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ],
        cwd=BENCH,
        env=env(BENCH_AMQP_URL=url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bench_celery(url: str, n: int) -> float:
    b = Broker(url)
    q = f"bench-celery-{uuid.uuid4().hex[:6]}"
    b.ch.queue_declare(q, durable=True)
    b.fill(q, celery_body(), n)
    return drain_and_stop(b, start_celery(url, q), q, n)


def bench_enqueue(url: str, n: int) -> float:
    import roger

    partition = f"bench-{uuid.uuid4().hex[:6]}"
    with roger.Client(url) as client:
        client.enqueue(partition, "bench_roger_jobs:noop")  # connect + declare
        t0 = time.perf_counter()
        for _ in range(n):
            client.enqueue(partition, "bench_roger_jobs:noop")
        rate = n / (time.perf_counter() - t0)
    Broker(url).delete_partition(partition)
    return rate


def publish_at_rate(
    b: Broker, queue: str, make: Callable[[int], tuple[bytes, Any]], rate: float, seconds: float
) -> int:
    """``rate`` messages a second for ``seconds``, each made just before it is published
    (so the time it carries is its enqueue time); returns how many."""
    total = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        body, props = make(i)
        b.ch.basic_publish("", queue, body, props)
    return total


def read_latencies(path: Path, total: int, timeout: float = 60) -> list[float]:
    """The enqueue-to-start times (ms) a contender wrote, one a line, once all are in."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= total:
            break
        time.sleep(0.2)
    return sorted(float(x) * 1000 for x in lines)


def p50_p99(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=100)
    return q[49], q[98]


def bench_latency(url: str, rate: float, seconds: float, workers: int) -> tuple[float, float, int]:
    """p50/p99 enqueue-to-start (ms) with jobs published at ``rate`` per second."""
    b = Broker(url)
    partition = f"bench-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "latency"
        proc = start_roger(url, partition, workers, {"BENCH_LATENCY_FILE": str(path)})
        try:
            total = publish_at_rate(b, f"{partition}-default", roger_body(partition), rate, seconds)
            values = read_latencies(path, total)
        finally:
            stop(proc)
            b.delete_partition(partition)
    return (*p50_p99(values), len(values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_amqp_url(parser)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=16, help="Roger max_workers (prefetch)")
    parser.add_argument("--big-workers", type=int, default=64, help="a second, larger pool")
    parser.add_argument("--skip", action="append", default=[], help="pika|roger|dramatiq|celery")
    opts = parser.parse_args()
    url, n, w = opts.amqp_url, opts.jobs, opts.workers
    print(f"# {n} no-op jobs each, one RabbitMQ on this machine ({os.cpu_count()} cores)")
    rows: list[tuple[str, float]] = []
    big = opts.big_workers
    pika_w, pika_big = (
        f"bare pika consumer, quorum, prefetch {w}",
        f"bare pika consumer, quorum, prefetch {big}",
    )
    roger_w, roger_big = roger_label(w), roger_label(big)
    roger_isolated = roger_label(w, w)
    dramatiq, celery = (
        "Dramatiq 2 processes x 8 threads (classic queue)",
        "Celery prefork, 2 processes (classic queue)",
    )
    runs = [
        (pika_w, lambda: bench_pika(url, n, w, "quorum")),
        (roger_w, lambda: bench_roger(url, n, w)),
        (roger_isolated, lambda: bench_roger(url, n, w, w)),
        (pika_big, lambda: bench_pika(url, n, big, "quorum")),
        (roger_big, lambda: bench_roger(url, n, big)),
        (dramatiq, lambda: bench_dramatiq(url, n)),
        (celery, lambda: bench_celery(url, n)),
    ]
    skip = {s.lower() for s in opts.skip}
    for name, fn in runs:
        if any(s in name.lower() for s in skip):
            continue
        rate = fn()
        rows.append((name, rate))
        print(f"  {name:<62} {rate:8.0f} jobs/s", flush=True)
    print()
    print("| system | jobs/s |")
    print("|---|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.0f} |")
    rate = dict(rows)

    def ratio(a: str, b: str) -> None:
        if a in rate and b in rate:
            print(f"- {a} / {b}: {rate[a] / rate[b]:.2f}")

    print()
    for roger_row, ceiling in ((roger_w, pika_w), (roger_isolated, pika_w), (roger_big, pika_big)):
        ratio(roger_row, ceiling)
        ratio(roger_row, dramatiq)
        ratio(roger_row, celery)
    enq = bench_enqueue(url, 300)
    print()
    print(f"Roger enqueue (Client.enqueue, persistent, confirmed one by one): {enq:.0f} jobs/s")
    for workers, row in ((w, roger_w), (big, roger_big)):
        peak = rate.get(row)
        for share in (0.25, 0.5) if peak else ():
            p50, p99, count = bench_latency(url, peak * share, 5.0, workers)
            print(
                f"Roger enqueue-to-start at {peak * share:.0f} jobs/s ({share:.0%} of the"
                f" max_workers {workers} peak), {count} jobs: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
