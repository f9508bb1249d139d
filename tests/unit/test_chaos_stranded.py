"""The stranded-retry-queue signal and when the chaos run applies the remedy."""

from __future__ import annotations

from typing import Any

import pytest

from roger_devtools.chaos_stranded import StrandedWatch, held_for_dead_lettering

pytestmark = pytest.mark.unit


def row(name: str, messages: int, ready: int = 0, unacked: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "messages": messages,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    }


def test_only_retry_queue_messages_neither_ready_nor_unacked_are_held() -> None:
    rows = [
        row("p-default.retry.1", 9),
        row("p-default.retry.30", 4, ready=4),  # waiting out their delay: healthy
        row("p-default", 5, unacked=5),  # running jobs, not a retry queue
        row("p-default.retry.2", 3, ready=1, unacked=0),
        row("p-default.retry.x", 2),
    ]
    assert held_for_dead_lettering(rows) == {"p-default.retry.1": 9, "p-default.retry.2": 2}


def test_the_remedy_runs_once_a_queue_stays_held_for_the_delay() -> None:
    rows = [row("p-default.retry.1", 9)]
    applied: list[str] = []
    watch = StrandedWatch(lambda: rows, lambda q: applied.append(q) or "ok", after=10)
    watch(100.0)
    watch(105.0)
    assert applied == []
    watch(110.0)
    assert applied == ["p-default.retry.1"]
    assert watch.recovered == ["p-default.retry.1: 9 job(s) held, remedy answered ok"]
    rows.clear()  # cleared: a later stranding of it starts its own delay
    watch(111.0)
    rows.append(row("p-default.retry.1", 1))
    watch(112.0)
    watch(121.0)
    assert applied == ["p-default.retry.1"]
    watch(122.0)
    assert applied == ["p-default.retry.1", "p-default.retry.1"]


def test_a_queue_seen_held_once_and_then_drained_gets_no_remedy() -> None:
    rows = [row("p-default.retry.1", 2)]
    applied: list[str] = []
    watch = StrandedWatch(lambda: rows, lambda q: applied.append(q) or "ok", after=10)
    watch(100.0)
    rows[0] = row("p-default.retry.1", 0)
    watch(105.0)
    rows[0] = row("p-default.retry.1", 3)
    watch(112.0)
    assert applied == []
