"""Free loopback ports for the processes that tests, benchmarks and the demo start."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Below Linux's ephemeral range (32768-60999 here): a port the kernel picked for `bind(0)` is
# one it also hands to outgoing connections, and with several suites on the machine one of
# them took such a port between the test's check and the worker's bind ("Address already in
# use" in a RabbitMQ 4.0 run). Ports are drawn at random from this range instead, which
# stays clear of the brokers' ports (5672-5693, 15672-15983, 25672-25693).
PORT_RANGE = (16000, 25000)

# A port handed out is not handed out again, by any process on the machine, for this long:
# the check only sees ports already bound, and a chaos run once started two workers on the
# same random port before either had bound it (a 1 in 9,000 draw per pair, which a suite
# starting hundreds of workers meets now and then).
LEASE_SECONDS = 120.0
LEASES = Path(tempfile.gettempdir()) / "roger-port-leases.json"


def free_port() -> int:
    """A loopback TCP port nothing listens on right now, outside the ephemeral range, and
    not handed out by this function in the last ``LEASE_SECONDS``."""
    rng = random.Random()
    with _leases() as leased:
        for _ in range(200):
            port = rng.randrange(*PORT_RANGE)
            if str(port) in leased:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            leased[str(port)] = time.time()
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


@contextlib.contextmanager
def _leases() -> Iterator[dict[str, float]]:
    """The live leases, under an exclusive lock across processes; written back after."""
    fd = os.open(f"{LEASES}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            leased: dict[str, float] = json.loads(LEASES.read_text())
        except (OSError, ValueError):
            leased = {}
        now = time.time()
        leased = {p: t for p, t in leased.items() if now - t < LEASE_SECONDS}
        yield leased
        tmp = LEASES.with_name(f"{LEASES.name}.{os.getpid()}")
        tmp.write_text(json.dumps(leased))
        tmp.replace(LEASES)
    finally:
        os.close(fd)
