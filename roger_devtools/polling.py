"""Waiting for a condition with a deadline: the one poll loop of tests and benchmarks.

A failed wait names what it waited for and the last value or error it saw, so a red test
says why without a rerun.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
FIRST_PAUSE = 0.05  # quick conditions are seen quickly; slow ones polled every ``interval``


class GiveUp(AssertionError):
    """Raised by a check when its condition can no longer come true (the process it
    waits for has exited): the wait fails at once instead of at its deadline."""


def eventually(
    check: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, message: str = "condition"
) -> T:
    """Poll ``check`` until it returns a truthy value, and return that value.

    An error raised by ``check`` counts as "not yet" (a resource that does not exist yet,
    a port not listening yet), except ``GiveUp``. Pauses grow from 50 ms to ``interval``.
    """
    deadline = time.monotonic() + timeout
    pause = min(FIRST_PAUSE, interval)
    last: object = None
    while True:
        try:
            value = check()
        except GiveUp:
            raise
        except Exception as exc:  # the last error is the most useful failure message
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}; last: {last!r}"
            )
        time.sleep(pause)
        pause = min(pause * 2, interval)
