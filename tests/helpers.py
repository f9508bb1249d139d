"""Small polling and kubectl helpers shared by the service-backed tests."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(
    check: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, message: str = "condition"
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with the last value or error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # the last error is the most useful failure message
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}; last: {last!r}"
            )
        time.sleep(interval)


class Kubectl:
    """kubectl against the local cluster, optionally impersonating someone."""

    def __init__(self, binary: str, kubeconfig: str, as_user: str | None = None) -> None:
        self.base = [binary, "--kubeconfig", kubeconfig]
        if as_user:
            self.base += ["--as", as_user]

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.base, *args], input=stdin, text=True, capture_output=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(self, manifest: str, *args: str) -> None:
        self.run("apply", "-f", "-", *args, stdin=manifest)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.run("get", *args, "-o", "json").stdout)


# Below Linux's ephemeral range (32768-60999 here): a port the kernel picked for `bind(0)` is
# one it also hands to outgoing connections, and with several suites on the machine one of
# them took such a port between the test's check and the worker's bind ("Address already in
# use" in a RabbitMQ 4.0 run). Ports are drawn at random from this range instead, which
# stays clear of the brokers' ports (5672-5693, 15672-15983, 25672-25693).
_PORT_RANGE = (16000, 25000)


def free_port() -> int:
    """A loopback TCP port nothing listens on, outside the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*_PORT_RANGE)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")
