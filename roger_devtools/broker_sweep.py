"""Before `make test`: delete what earlier test runs of this checkout left in the broker.

Tests name everything after their tag (``ROGER_TEST_TAG``, ``t`` by default, plus a stream
letter), and e2e Partitions after a ``p-<8 hex>`` partition id. Many leave their queues
behind (a test that fails, a Partition whose finalizer a teardown dropped, delay ladders
nobody deletes). On a development machine they pile up run after run: after about nine runs
the broker held 5,215 queues (3,342 quorum queues, 1,864 streams) and spent a quarter of a
core idle on them, and RabbitMQ used 66 % of all CPU of a 39-minute `make test`
(measured 2026-12-03).

Only what is certainly a leftover goes: queues and exchanges named after this checkout's
tag, and those of a ``p-<8 hex>`` partition id no Partition in the cluster uses any more
(the operator's ``roger.claim.*`` exchanges included; Partitions are listed after the
queues, so a Partition created meanwhile keeps its own). Other checkouts sharing the broker
use other tags, and their Partitions are in the cluster.

    python -m roger_devtools.broker_sweep [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from roger_devtools.management import management

ROOT = Path(__file__).resolve().parents[1]
STREAM_LETTERS = ("", "k", "b", "c")  # roger_devtools.test_streams.stream_env adds these
PARTITION_ID = re.compile(r"^(p-[0-9a-f]{8})(?:[-.]|$)")
CLAIM_PREFIXES = ("roger.claim.queue.", "roger.claim.")  # the operator's claim exchanges


def _names(kind: str) -> list[str]:
    return [item["name"] for item in management(f"/{kind}/%2F?columns=name")]


def live_partition_ids() -> set[str] | None:
    """The partitionId of every Partition in the local cluster (None: not reachable)."""
    kubeconfig = ROOT / ".cluster" / "kubeconfig"
    kubectl = ROOT / ".cluster" / "bin" / "kubectl"
    if not kubeconfig.exists() or not kubectl.exists():
        return None
    done = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "get", "partitions", "-A", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return None
    items = json.loads(done.stdout)["items"]
    return {str((p.get("spec") or {}).get("partitionId") or "") for p in items}


def leftovers(names: Iterable[str], tag: str, live: set[str] | None) -> list[str]:
    """The names that are certainly leftovers of this checkout's earlier runs."""
    prefixes = tuple(f"{tag}{letter}-" for letter in STREAM_LETTERS)
    out = []
    for name in names:
        owner = next((name[len(c) :] for c in CLAIM_PREFIXES if name.startswith(c)), name)
        partition = PARTITION_ID.match(owner)
        gone = partition is not None and live is not None and partition.group(1) not in live
        if owner.startswith(prefixes) or gone:
            out.append(name)
    return out


def _delete(kind: str, name: str) -> bool:
    try:
        management(f"/{kind}/%2F/{urllib.parse.quote(name, safe='')}", "DELETE")
    except urllib.error.HTTPError as exc:
        return exc.code == 404  # gone already
    return True


def sweep(tag: str, dry_run: bool = False) -> int:
    """Delete this checkout's leftovers; returns how many queues and exchanges went."""
    started = time.monotonic()
    queues, exchanges = _names("queues"), _names("exchanges")
    live = live_partition_ids()
    doomed = [("queues", n) for n in leftovers(queues, tag, live)]
    doomed += [("exchanges", n) for n in leftovers(exchanges, tag, live)]
    if dry_run or not doomed:
        print(f"broker sweep: {len(doomed)} leftovers of tag {tag!r}" + (" (dry run)" * dry_run))
        return 0
    with ThreadPoolExecutor(8) as pool:
        deleted = sum(pool.map(lambda item: _delete(*item), doomed))
    took = time.monotonic() - started
    print(
        f"broker sweep: deleted {deleted} of {len(doomed)} leftovers of earlier runs "
        f"(tag {tag!r}; {len(queues)} queues before) in {took:.0f}s",
        flush=True,
    )
    return deleted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        sweep(os.environ.get("ROGER_TEST_TAG", "t"), args.dry_run)
    except (OSError, urllib.error.URLError) as exc:  # never the reason a test run fails
        print(f"broker sweep: skipped ({exc})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
