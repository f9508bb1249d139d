"""Stopping a process the way Kubernetes does: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen[bytes], grace: float = 20) -> int:
    """Stop ``proc`` (if it still runs) and return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)
