"""Delayed jobs: when a job is due, and the route that holds it in the broker until then.

Pure: the client, the worker and the operator's cleanup agree on it, and every rule is
unit-tested (``tests/unit/test_delay.py``).

A delayed job waits in a **ladder** of quorum queues ``<p>.delay.<k>`` (k = 0..LEVELS-1),
each with one fixed ``x-message-ttl`` of ``UNIT_MS * 2**k``: in a queue where every message
has the same TTL, expiry order is arrival order, so nothing waits behind a longer delay
(per-message TTLs in one queue would expire only at its head). The delay, in units of
``UNIT_MS``, is written in binary in the routing key (one word per level, highest level
first, then the job queue's RabbitMQ name); each level has a topic exchange
``<p>.delay.<k>`` that sends a message whose bit k is 1 into that level's queue and one
whose bit is 0 on to the next lower level's exchange. A queue dead-letters (at-least-once)
to the next lower exchange with the message's own routing key, so a message visits only
the levels of its set bits, at most ``LEVELS`` hops; below level 0, ``<p>.delay.due`` routes
it by its last word to the job's queue. Nothing outside the broker holds the job.

One pass of the ladder is at most ``LEG_MAX`` (about 3 days). A longer delay takes several
legs: its job reaches its queue early (header ``x-roger-due-at-ms`` in the future) and the
worker sends it round again for what is left. That visit is also where the worker sees a
cancel: a cancel is remembered ``HORIZON`` (7 days), longer than any leg.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any, Final

from roger.core import naming

UNIT_MS: Final = 250  # the ladder's resolution: a job starts at most this late (plus hops)
LEVELS: Final = 20  # level k holds UNIT_MS * 2**k: 0.25 s .. 36.4 h
LEG_UNITS: Final = 2**LEVELS - 1
LEG_MAX: Final = LEG_UNITS * UNIT_MS / 1000  # seconds one pass of the ladder can hold (~3 d)
MAX_DELAY: Final = 90 * 86400  # seconds: the longest delay accepted
DUE_AT_HEADER: Final = "x-roger-due-at-ms"  # epoch milliseconds (int) at which it is due
EARLY_TOLERANCE: Final = 0.02  # seconds: a job this close to its time runs now


class InvalidDelay(ValueError):
    """A delay or due time that cannot be honoured (negative, too far, naive datetime)."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where to publish a delayed job: ``exchange`` with ``routing_key``."""

    exchange: str
    routing_key: str
    seconds: float  # what this leg holds it (<= LEG_MAX)


def delay_seconds(delay: float | None, at: datetime.datetime | None, now: float) -> float | None:
    """The delay asked for by ``delay=`` (seconds) or ``at=`` (an aware datetime), checked.

    None when neither is given (an immediate job). A due time already past is no delay
    (runs now, as a CronJob's late start); a negative ``delay`` is a mistake and refused.
    """
    if delay is not None and at is not None:
        raise InvalidDelay("give delay or at, not both")
    if at is not None:
        if not isinstance(at, datetime.datetime):
            raise InvalidDelay(f"at must be a datetime; got {type(at).__name__}")
        if at.tzinfo is None or at.tzinfo.utcoffset(at) is None:
            raise InvalidDelay(
                f"at={at.isoformat()} has no time zone: give an aware datetime"
                " (e.g. datetime(..., tzinfo=timezone.utc)), a naive one is ambiguous"
            )
        seconds = max(0.0, at.timestamp() - now)
    elif delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise InvalidDelay(f"delay must be a number of seconds; got {delay!r}")
        seconds = float(delay)
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidDelay(f"delay must be 0 or more seconds; got {delay!r}")
    else:
        return None
    if seconds > MAX_DELAY:
        raise InvalidDelay(
            f"delay of {seconds:.0f}s is more than the longest accepted, {MAX_DELAY}s"
            f" ({MAX_DELAY // 86400} days)"
        )
    return seconds


def parse_at(text: str) -> datetime.datetime:
    """``roger enqueue --at``: ISO 8601 with an offset or ``Z`` (naive text is refused)."""
    try:
        value = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidDelay(
            f"--at {text!r} is not an ISO 8601 time (e.g. 2026-12-01T09:00:00+01:00)"
        ) from None
    if value.tzinfo is None:
        raise InvalidDelay(f"--at {text!r} has no offset: add one (+01:00) or Z for UTC")
    return value


def remaining(headers: Any, now: float) -> float:
    """Seconds until a delivered job is due (<= 0: due); jobs without the header are due."""
    if not isinstance(headers, dict):
        return 0.0
    value = headers.get(DUE_AT_HEADER)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return value / 1000 - now


def not_due(headers: Any, now: float) -> float:
    """Seconds a delivered job is early (0: run it). A job is run, not sent round, within
    ``EARLY_TOLERANCE`` of its time (clock jitter), or when its header is beyond any delay
    we accept; earlier, it goes round again (at least one 250 ms unit)."""
    left = remaining(headers, now)
    if left <= EARLY_TOLERANCE or left > MAX_DELAY + LEG_MAX:
        return 0.0
    return left


_DEATH_HEADERS: Final = ("x-death", "x-first-death-", "x-last-death-")


def without_deaths(headers: dict[Any, Any]) -> dict[Any, Any]:
    """Headers for another pass: the broker's record of the last pass goes, else it takes
    the same queues twice for a dead-letter cycle and drops the job."""
    return {
        k: v
        for k, v in headers.items()
        if not (k.decode() if isinstance(k, bytes) else str(k)).startswith(_DEATH_HEADERS)
    }


def due_header(due_at: float) -> dict[str, int]:
    """The header a delayed job carries (AMQP tables have no floats pika can write)."""
    return {DUE_AT_HEADER: math.ceil(due_at * 1000)}


def units(seconds: float) -> int:
    """Whole ladder units for ``seconds``, rounded up: a job never starts early."""
    return max(0, math.ceil(seconds * 1000 / UNIT_MS - 1e-9))


def route(partition: str, queue: str, seconds: float) -> Route | None:
    """The first leg of a wait of ``seconds`` for a job of ``queue``; None: due now."""
    if seconds <= 0:
        return None
    n = min(units(seconds), LEG_UNITS)
    if n == 0:
        return None
    bits = [(n >> k) & 1 for k in range(LEVELS - 1, -1, -1)]
    words = [str(b) for b in bits] + [naming.queue_name(partition, queue)]
    top = n.bit_length() - 1  # enter at the highest set bit: the levels above are all 0
    return Route(naming.delay_exchange_name(partition, top), ".".join(words), n * UNIT_MS / 1000)


def hops(routing_key: str) -> list[int]:
    """The levels a message with this routing key waits in, in order (for tests, docs)."""
    bits = routing_key.split(".")[:LEVELS]
    return [LEVELS - 1 - i for i, b in enumerate(bits) if b == "1"]


def level_ttl_ms(level: int) -> int:
    return int(UNIT_MS * 2**level)


def _pattern(level: int, bit: str) -> str:
    return "*." * (LEVELS - 1 - level) + f"{bit}.#"


def level_queue_arguments(partition: str, level: int) -> dict[str, Any]:
    """Level ``level`` holds a message ``level_ttl_ms`` then dead-letters it, with its own
    routing key, to the next lower exchange; kept until that one's queue confirmed it."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": level_ttl_ms(level),
        "x-dead-letter-exchange": _lower_exchange(partition, level),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def _lower_exchange(partition: str, level: int) -> str:
    if level == 0:
        return naming.delay_due_exchange_name(partition)
    return naming.delay_exchange_name(partition, level - 1)


@dataclass(frozen=True, slots=True)
class Ladder:
    """Every object of a partition's ladder: declared idempotently by client and worker."""

    exchanges: list[str]  # topic exchanges, due exchange last
    queues: list[tuple[str, dict[str, Any]]]
    queue_bindings: list[tuple[str, str, str]]  # (queue, exchange, pattern)
    exchange_bindings: list[tuple[str, str, str]]  # (destination, source, pattern)


def ladder(partition: str) -> Ladder:
    exchanges = [naming.delay_exchange_name(partition, k) for k in range(LEVELS)]
    exchanges.append(naming.delay_due_exchange_name(partition))
    queues = [
        (naming.delay_queue_name(partition, k), level_queue_arguments(partition, k))
        for k in range(LEVELS)
    ]
    queue_bindings = [
        (naming.delay_queue_name(partition, k), exchanges[k], _pattern(k, "1"))
        for k in range(LEVELS)
    ]
    exchange_bindings = [
        (_lower_exchange(partition, k), exchanges[k], _pattern(k, "0")) for k in range(LEVELS)
    ]
    return Ladder(exchanges, queues, queue_bindings, exchange_bindings)


def due_binding(partition: str, queue: str) -> tuple[str, str, str]:
    """(queue, exchange, pattern): the due exchange hands a job to its queue by the last
    word of its routing key (a queue's RabbitMQ name has no dot: one word)."""
    stem = naming.queue_name(partition, queue)
    return stem, naming.delay_due_exchange_name(partition), f"#.{stem}"


def worker_topology(
    partition: str, queues: list[str]
) -> tuple[list[str], list[tuple[str, str, str, bool]]]:
    """What a worker of ``queues`` declares at start: the due exchange and its queues'
    bindings to it, as (destination, source, pattern, destination is an exchange).

    Only these: a queue re-declared (recreated) loses its bindings, and the binding is
    what hands it its due jobs. The ladder's 20 quorum queues are declared by the client
    before the partition's first delayed job (a worker that sends a job round again got
    it from the ladder, so the ladder is there); a partition that never delays a job
    never has them.
    """
    bindings = [(*due_binding(partition, q), False) for q in queues]
    return [naming.delay_due_exchange_name(partition)], bindings
