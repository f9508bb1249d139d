"""A job with a queue_key taken from its args (for the client's tests and benchmarks)."""

from __future__ import annotations

from typing import Any

import roger


@roger.job(queue_key=lambda args: args.get("key"))
def unique(args: dict[str, Any]) -> None:
    return None
