"""Cancel latency: from ``Client.cancel`` returning to ``on_cancel`` running, for jobs that
are running (stuck in ``time.sleep``) on one of two ``roger worker`` processes.

Usage: python bench/cancel_latency.py [--jobs 40] [--amqp-url URL]
Prints p50/p99/max in milliseconds. Not a test: a number for bench/PART2_RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roger_devtools.polling import eventually  # noqa: E402
from roger_devtools.recording import recording_workers  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    opts = ap.parse_args()
    import roger

    partition = f"bench-cancel-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as tmp:
        workers, rec = recording_workers(Path(tmp), opts.amqp_url, partition)
        sys.path.insert(0, tmp)
        latencies: list[float] = []
        try:
            workers.start_consuming(["default=4"], count=2)
            with roger.Client(opts.amqp_url) as client:
                for i in range(opts.jobs):
                    job_id = client.enqueue(partition, "pjobs:sleepy", {"tag": f"c{i}", "s": 3600})
                    eventually(
                        lambda i=i: rec.events("start", id=f"c{i}"), 20, 0.01, f"job {i} to start"
                    )
                    t0 = time.time()
                    client.cancel(partition, job_id)
                    got = eventually(
                        lambda j=job_id: rec.events("on_cancel", job_id=j),
                        10,
                        0.002,
                        f"on_cancel of job {i}",
                    )
                    latencies.append(got[0]["t"] - t0)
        except AssertionError as exc:
            raise SystemExit(f"{exc}\n{workers.logs()}") from None
        finally:
            workers.stop_all()
    ms = [x * 1000 for x in latencies]
    print(
        f"cancel -> on_cancel for running jobs ({len(ms)} jobs, 2 workers): "
        f"p50 {percentile(ms, 50):.0f} ms, p99 {percentile(ms, 99):.0f} ms, "
        f"max {max(ms):.0f} ms, mean {statistics.mean(ms):.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
