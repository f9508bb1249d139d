"""`make bench`: run the benchmarks (not tests) and print their tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["worker_throughput.py"]


def main() -> int:
    code = 0
    for name in BENCHES:
        print(f"## {name}", flush=True)
        code |= subprocess.call([sys.executable, str(HERE / name), *sys.argv[1:]])
    return code


if __name__ == "__main__":
    sys.exit(main())
