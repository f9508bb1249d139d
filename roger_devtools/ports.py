"""Free loopback ports for the processes that tests, benchmarks and the demo start."""

from __future__ import annotations

import random
import socket

# Below Linux's ephemeral range (32768-60999 here): a port the kernel picked for `bind(0)` is
# one it also hands to outgoing connections, and with several suites on the machine one of
# them took such a port between the test's check and the worker's bind ("Address already in
# use" in a RabbitMQ 4.0 run). Ports are drawn at random from this range instead, which
# stays clear of the brokers' ports (5672-5693, 15672-15983, 25672-25693).
PORT_RANGE = (16000, 25000)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now, outside the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")
