"""Growth of partition state: how long a worker takes to be ready, and how many channels it
opens, when the control stream holds many events and many execution keys have waited.

Usage: python bench/state_growth.py [--events 1000000] [--keys 100000] [--cancel-every 100]
       [--wait 60] [--starts 1] [--checkpoint-interval S] [--amqp-url URL] [--keep]
Builds a partition whose control stream holds ``--events`` events: ``wait`` notices for
``--keys`` distinct execution keys (their waiting rooms do not exist: each was emptied) and
one ``cancel`` of a distinct job every ``--cancel-every`` events. Then starts one
``PartitionState`` and prints seconds to ready, the cancels it knows, the most AMQP channels
its connection had open at once, and what happened in the first sweep. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roger.broker.state import PartitionState  # noqa: E402
from roger.core import naming  # noqa: E402
from roger.core import state as st  # noqa: E402


def build(url: str, partition: str, events: int, keys: int, cancel_every: int) -> list[str]:
    """Publish the events (fast: no confirms but the last); return the cancelled ids."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    name = naming.control_stream_name(partition)
    ch.queue_declare(name, durable=True, arguments=st.control_stream_arguments())
    props = pika.BasicProperties(delivery_mode=2)
    now = time.time()
    cancelled = []
    for i in range(events):
        if cancel_every and i % cancel_every == 0:
            job = f"job-{i}"
            cancelled.append(job)
            ev = st.cancel(job, now, "bench")
        else:
            ev = st.wait(f"user-{i % keys}", now)
        ch.basic_publish("", name, st.encode(ev), props)
        if i % 10000 == 0:
            conn.process_data_events(0)
    ch.confirm_delivery()
    ch.basic_publish("", name, st.encode(st.cancel("job-last", time.time())), props)
    cancelled.append("job-last")
    conn.close()
    return cancelled


def build_checkpoint(url: str, partition: str, events: int, keys: int, cancel_every: int) -> int:
    """What ``events`` events would fold to, as one checkpoint, and a short tail after it;
    returns the checkpoint's size in bytes. (Publishing a million events here takes longer
    than a benchmark may run; the start-up reads the checkpoint and the tail only.)"""
    now = time.time()
    folded = st.ControlState()
    for i in range(events):
        if cancel_every and i % cancel_every == 0:
            folded.apply(st.cancel(f"job-{i}", now), now)
        else:
            folded.apply(st.wait(f"user-{i % keys}", now), now)
    body = st.encode_checkpoint(folded)
    build(url, partition, 100, keys, cancel_every)  # the tail: 101 events, offsets 0..100
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    name = naming.checkpoint_stream_name(partition)
    ch.queue_declare(name, durable=True, arguments=st.checkpoint_stream_arguments())
    ch.confirm_delivery()
    ch.basic_publish("", name, body, pika.BasicProperties(headers={"control-offset": 0}))
    conn.close()
    return len(body)


def measure(url: str, partition: str, wait: float) -> dict[str, float]:
    ready = threading.Event()
    state = PartitionState(partition, ["default"], on_ready=ready.set)
    peak = [0]
    out: dict[str, float] = {}

    def sample(conn: object) -> None:
        peak[0] = max(peak[0], len(getattr(conn, "_channels", {})))
        conn.ioloop.call_later(0.01, lambda: sample(conn))  # type: ignore[attr-defined]

    def opened(conn: object) -> None:
        out["t0"] = time.monotonic()
        state.attach(conn)
        sample(conn)

    conn = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=opened,
        on_close_callback=lambda _c, r: out.setdefault("closed", 1) or print("closed:", r),
    )
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            conn.ioloop.start()
        except BaseException as exc:  # what the worker's loop would die of
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    ok = ready.wait(wait)
    out["ready_s"] = time.monotonic() - out.get("t0", time.monotonic()) if ok else -1
    out["cancelled_known"] = len(state.control.cancelled)
    out["waiting_keys"] = len(state.control.waiting)
    time.sleep(25)  # two sweep ticks (and a checkpoint, with a short --checkpoint-interval)
    out["peak_channels"] = peak[0]
    out["waiting_keys_after_sweeps"] = len(state.control.waiting)
    out["loop_died"] = float(bool(errors))
    if errors:
        print("loop died:", repr(errors[0])[:300])
    conn.ioloop.add_callback_threadsafe(conn.close)
    thread.join(5)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--cancel-every", type=int, default=100)
    ap.add_argument("--wait", type=float, default=60)
    ap.add_argument("--partition", default="")
    ap.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    ap.add_argument("--keep", action="store_true", help="keep the streams (for a rerun)")
    ap.add_argument("--starts", type=int, default=1, help="workers started one after another")
    ap.add_argument("--checkpoint-interval", type=float, default=0, help="seconds (0: default)")
    ap.add_argument(
        "--synthetic-checkpoint",
        action="store_true",
        help="publish the events folded into one checkpoint (and a short tail) instead",
    )
    opts = ap.parse_args()
    partition = opts.partition or f"bench-growth-{uuid.uuid4().hex[:6]}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up when timed out
    if opts.synthetic_checkpoint:
        size = build_checkpoint(opts.amqp_url, partition, opts.events, opts.keys, opts.cancel_every)
        print(f"built {partition}: a checkpoint of {opts.events} events ({size} bytes)")
    elif not opts.partition:
        t = time.monotonic()
        cancelled = build(opts.amqp_url, partition, opts.events, opts.keys, opts.cancel_every)
        print(
            f"built {partition}: {opts.events} events, {len(cancelled)} cancels "
            f"in {time.monotonic() - t:.1f}s"
        )
    if opts.checkpoint_interval and hasattr(st, "CHECKPOINT_INTERVAL"):
        st.CHECKPOINT_INTERVAL = opts.checkpoint_interval  # type: ignore[misc]
    try:
        for n in range(opts.starts):
            result = measure(opts.amqp_url, partition, opts.wait)
            print(f"-- start {n + 1}")
            for k, v in result.items():
                print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    finally:
        if not opts.keep:
            conn = pika.BlockingConnection(pika.URLParameters(opts.amqp_url))
            names = [naming.control_stream_name(partition), naming.workers_stream_name(partition)]
            names += [f"{partition}.checkpoint", naming.pause_stream_name(partition, "default")]
            for name in names:
                with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                    conn.channel().queue_delete(name)
            conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
