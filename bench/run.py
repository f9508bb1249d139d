"""`make bench`: run the benchmarks (not tests) and print their tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (script, arguments): every peer side by side once, then the headline comparisons in
# interleaved rounds (prefetch 64 and 16), whose per-round ratios are what
# bench/RESULTS.md reports, then latency and memory beside Dramatiq (and Celery).
BENCHES = [
    ("worker_throughput.py", []),
    *(
        (
            "ab_worker.py",
            ["--rounds", "10", "--workers", w, "--variant", f"roger{w}=", "--pika", "--dramatiq"],
        )
        for w in ("64", "16")
    ),
    ("latency_memory.py", []),
    ("enqueue_throughput.py", []),
]


def main() -> int:
    code = 0
    for name, args in BENCHES:
        print(f"## {name} {' '.join(args)}", flush=True)
        code |= subprocess.call([sys.executable, str(HERE / name), *args, *sys.argv[1:]])
    return code


if __name__ == "__main__":
    sys.exit(main())
