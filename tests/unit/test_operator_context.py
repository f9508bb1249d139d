"""``handlers.context.Context``: what many handler threads write at once stays consistent."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from roger_operator.handlers.context import Context

pytestmark = pytest.mark.unit


def test_phase_counts_follow_every_write_and_forget_from_many_threads() -> None:
    """At 1,000 Partitions the old count (a walk over every phase, per status write) raised
    "dictionary changed size during iteration" when another thread wrote meanwhile."""
    ctx = Context(kube=cast(Any, None), broker=cast(Any, None))
    names = [f"p{i}" for i in range(200)]

    def write(offset: int) -> None:
        for round_ in range(20):
            for i, name in enumerate(names):
                ready = (i + offset + round_) % 2 == 0
                ctx.set_phase(("ns", name), "Ready" if ready else "NotReady")
                ctx.phase_counts("ns")

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    counts = ctx.phase_counts("ns")
    assert counts["Ready"] + counts["NotReady"] == len(names)
    assert counts["Ready"] == sum(1 for p in ctx.phases.values() if p == "Ready")
    for name in names[:50]:
        ctx.forget(("ns", name))
    assert sum(ctx.phase_counts("ns").values()) == 150
    assert ctx.phase_counts("other") == {"Ready": 0, "NotReady": 0}
