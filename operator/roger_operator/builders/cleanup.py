"""What a Partition's deletion may remove from RabbitMQ: queue facts -> delete or keep.

Pure, so every rule is unit-tested. The rules lose nothing:

- a job queue group (main, retry, buried, invalid queue of one partition queue) is deleted
  only when none of its queues has a ready or unacked message or a consumer: a running job
  acks on the main queue and may republish to its retry, buried or invalid queue, and a
  retry queue dead-letters back into the main queue;
- an unacked count that is unknown (no management API, or a sample taken while consumers
  were still there) counts as a job; only queues workers consume can have one (``consumed``);
- waiting rooms and key queues go when they hold nothing; exclusive lock queues belong to a
  live connection and are never touched;
- the delay ladder (``<p>.delay.<k>``) holds delayed jobs of any of the partition's
  queues (their queue is only in their routing key): while one of its queues holds a job,
  the whole ladder and every job queue group are kept, else the ladder goes (its exchanges
  with it, ``ladder_deleted``);
- state streams (control, checkpoint, pause, workers) describe the jobs: they go only when
  nothing else of the partition is kept;
- a name that another claimed partition id also explains (``a`` vs ``a-b``) is never
  deleted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from roger.core import delay, naming

Kind = Literal["job", "waiting", "key", "lock", "stream", "delay"]
JOB: Final = "job"
STREAM_SUFFIXES: Final = ("control", "checkpoint", "workers")
_KEY_RE: Final = re.compile(r"^qkey\.[0-9a-f]{32}$")
_LOCK_RE: Final = re.compile(r"^(qkey\.[0-9a-f]{32}\.lock|xkey\.[0-9a-f]{32})$")
_DELAY_RE: Final = re.compile(r"^delay\.[0-9]{1,2}$")


@dataclass(frozen=True)
class Name:
    """One RabbitMQ name attributed to the partition being deleted."""

    name: str
    kind: Kind
    group: str = ""  # job queues: the main queue they belong to
    other_owner: str = ""  # another claimed partition id that also explains this name


@dataclass(frozen=True)
class QueueFacts:
    """What the broker says about one existing queue or stream."""

    name: Name
    ready: int
    consumers: int
    unacked: int | None  # None: unknown
    exclusive: bool = False

    def holds(self) -> str:
        """Why this queue may hold a job, or "" when it surely holds none."""
        why = []
        if self.ready:
            why.append(f"{self.ready} ready")
        if self.unacked is None:
            why.append("unacked unknown")
        elif self.unacked:
            why.append(f"{self.unacked} unacked")
        if self.consumers:
            why.append(f"{self.consumers} consumers")
        return ", ".join(why)


@dataclass(frozen=True)
class Verdict:
    name: str
    delete: bool
    reason: str

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def attribute(
    partition_id: str,
    main_queues: Sequence[str],
    declared: Iterable[str],
    pause_queues: Iterable[str],
    listed: Iterable[str],
    claimed_ids: Iterable[str] = (),
) -> list[Name]:
    """The names to look at: the spec's queues and streams, and the listed names that are
    surely this partition's (anything else under ``<id>-`` is left alone, unlisted)."""
    mains = {m: m for m in main_queues}
    others = sorted((c for c in claimed_ids if c != partition_id), key=len, reverse=True)
    out: dict[str, Name] = {}

    def owner_of(name: str) -> str:
        for other in others:
            if naming.belongs_to_partition(name, other) and other.startswith(f"{partition_id}-"):
                return other
        return ""

    def add(name: str, kind: Kind, group: str = "") -> None:
        out.setdefault(name, Name(name, kind, group, owner_of(name)))

    for name in declared:
        add(name, JOB, _group(name, mains) or name)
    for suffix in STREAM_SUFFIXES:
        add(f"{partition_id}.{suffix}", "stream")
    for queue in pause_queues:
        add(naming.pause_stream_name(partition_id, queue), "stream")
    for level in range(delay.LEVELS):
        add(naming.delay_queue_name(partition_id, level), "delay")
    waiting = naming.execution_waiting_queue_name(partition_id, "x")[:-1]  # the key comes last
    for name in listed:
        if name in out:
            continue
        if name.startswith(f"{partition_id}."):
            rest = name[len(partition_id) + 1 :]
            if rest in STREAM_SUFFIXES or rest.startswith("pause."):
                add(name, "stream")
            elif _KEY_RE.match(rest):
                add(name, "key")
            elif _LOCK_RE.match(rest):
                add(name, "lock")
            elif _DELAY_RE.match(rest):
                add(name, "delay")
        elif name.startswith(waiting) and len(name) > len(waiting):
            add(name, "waiting")
        else:
            group = _group(name, mains)
            if group:  # e.g. a retry level or queue removed from the spec earlier
                add(name, JOB, group)
    return list(out.values())


def _group(name: str, mains: dict[str, str]) -> str:
    head = name.split(".", 1)[0]
    return mains.get(head, "")


def consumed(name: Name) -> bool:
    """Whether workers take deliveries from it (so it can hold unacked messages): main
    queues, waiting rooms and key queues. Retry queues dead-letter by TTL, buried and
    invalid queues only park messages, and streams keep no unacked state."""
    if name.kind == JOB:
        return name.group == name.name
    return name.kind in ("waiting", "key")


def decide(facts: Sequence[QueueFacts]) -> list[Verdict]:
    """Delete or keep each existing queue, with the reason (see the module docstring)."""
    busy_groups: dict[str, str] = {}
    for f in facts:
        why = f.holds()
        if f.name.kind == JOB and why and f.name.group not in busy_groups:
            busy_groups[f.name.group] = f"{f.name.name}: {why}"
    delayed = next(
        (f"{f.name.name}: {f.holds()}" for f in facts if f.name.kind == "delay" and f.holds()), ""
    )
    if delayed:  # a delayed job's queue is not known here: every queue may get it
        for f in facts:
            if f.name.kind == JOB:
                busy_groups.setdefault(f.name.group, f"{delayed} (delayed jobs)")
    verdicts: list[Verdict] = []
    streams: list[QueueFacts] = []
    for f in facts:
        n = f.name
        if n.other_owner:
            verdicts.append(Verdict(n.name, False, f"also a name of partition {n.other_owner}"))
        elif f.exclusive or n.kind == "lock":
            verdicts.append(Verdict(n.name, False, "lock held by a live connection"))
        elif n.kind == "stream":
            streams.append(f)
        elif n.kind == "delay" and delayed:
            why = f.holds() or f"same ladder as {delayed.split(':', 1)[0]}, which holds jobs"
            verdicts.append(Verdict(n.name, False, why))
        elif n.kind == JOB and n.group in busy_groups:
            why = f.holds()
            if not why:
                why = f"same queue as {busy_groups[n.group].split(':', 1)[0]}, which holds jobs"
            verdicts.append(Verdict(n.name, False, why))
        elif n.kind != JOB and f.holds():
            verdicts.append(Verdict(n.name, False, f.holds()))
        else:
            verdicts.append(Verdict(n.name, True, "empty"))
    kept_any = any(not v.delete for v in verdicts)
    for f in streams:
        if f.name.other_owner:
            continue
        if f.consumers:
            verdicts.append(Verdict(f.name.name, False, f"{f.consumers} readers"))
        elif kept_any:
            verdicts.append(Verdict(f.name.name, False, "state of the jobs kept"))
        else:
            verdicts.append(Verdict(f.name.name, True, "nothing left it describes"))
    return verdicts


def ladder_deleted(verdicts: Sequence[Verdict], partition_id: str) -> bool:
    """Whether no queue of the delay ladder is kept: its exchanges can go too."""
    ladder = {naming.delay_queue_name(partition_id, k) for k in range(delay.LEVELS)}
    return not any(v.name in ladder and not v.delete for v in verdicts)


def still_running(facts: Sequence[QueueFacts], pods: int, sampled: bool = True) -> list[str]:
    """What says workers are still running (empty: they are all gone).

    Workers stop consuming first and then finish their jobs, so consumers alone do not
    tell; unacked deliveries, exclusive locks and the Pods themselves do. ``sampled``:
    unacked counts come from the management API, so an unknown one is worth waiting for.
    """
    out = [f"{pods} worker pods"] if pods else []
    for f in facts:
        if f.name.other_owner:
            continue
        if f.consumers:
            out.append(f"{f.name.name}: {f.consumers} consumers")
        elif f.exclusive or f.name.kind == "lock":
            out.append(f"{f.name.name}: lock held")
        elif f.name.kind in (JOB, "waiting", "key"):
            if f.unacked:
                out.append(f"{f.name.name}: {f.unacked} unacked")
            elif f.unacked is None and sampled:
                out.append(f"{f.name.name}: unacked not sampled yet")
    return out


def summary(verdicts: Sequence[Verdict]) -> tuple[list[str], list[str]]:
    """(deleted names, kept names with reasons), for the Event and the log."""
    deleted = [v.name for v in verdicts if v.delete]
    kept = [v.describe() for v in verdicts if not v.delete]
    return deleted, kept
