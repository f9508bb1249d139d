"""The broker's ``consumer_timeout``, as the worker sees it (pure: no I/O).

RabbitMQ closes a channel with ``PRECONDITION_FAILED`` when a delivery on it stays
unacknowledged longer than its consumer timeout (30 min by default; checked once a minute),
and returns every unacknowledged delivery of that channel to its queue. Measured here:
3.10.8 has only the global ``consumer_timeout``; 4.0.5 honours the queue argument and the
policy ``consumer-timeout`` (quorum queues) but ignores the consumer argument
``x-consumer-timeout``, and neither re-checks a queue argument on redeclaration, so a
worker cannot lengthen the timeout of a queue the operator declared (docs/reliability.md).
What the worker can do: know which of its queues are at risk at start-up, and when it
happens, recognise the close, so that no job runs twice at once and nothing else reruns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

PRECONDITION_FAILED: Final = 406
RABBITMQ_DEFAULT: Final = 1800.0  # seconds: RabbitMQ's default consumer_timeout
MARGIN: Final = 60.0  # the broker checks once a minute; outcomes take a moment to confirm
OVERDUE_SHARE: Final = 0.9  # a job running this share of the timeout is taken as overdue
_VALUE_USED = re.compile(r"[Tt]imeout value used: (\d+) ms")


def is_ack_timeout(reply_code: int, reply_text: str) -> bool:
    """Whether a channel close is the broker's consumer timeout (not any other 406)."""
    text = reply_text.lower()
    return (
        reply_code == PRECONDITION_FAILED
        and "delivery acknowledgement" in text
        and "timed out" in text
    )


def timeout_in_reply(reply_text: str) -> float | None:
    """The timeout (seconds) the broker says it used, if it says so (3.10 and 4.0 do)."""
    found = _VALUE_USED.search(reply_text)
    return int(found.group(1)) / 1000 if found else None


def overdue(ages: Sequence[float], timeout: float | None) -> list[int]:
    """Which running deliveries (by index; ``ages`` in seconds since each started) held
    the channel past the timeout: those that ran at least ``OVERDUE_SHARE`` of it, or,
    when the timeout is unknown or none did, the oldest one (the broker times out the
    oldest unacknowledged delivery first)."""
    if not ages:
        return []
    if timeout is not None:
        found = [i for i, age in enumerate(ages) if age >= OVERDUE_SHARE * timeout]
        if found:
            return found
    return [max(range(len(ages)), key=lambda i: ages[i])]


def needed(limits: Iterable[float | None], callback_timeout: float) -> float | None:
    """How long a delivery of a queue may stay unacknowledged at most: its jobs' longest
    ``max_execution_time`` plus the hooks beside it and ``MARGIN``; ``None`` when a job
    of the queue has no limit (it may hold its delivery for any time)."""
    longest = 0.0
    for limit in limits:
        if limit is None:
            return None
        longest = max(longest, limit)
    return longest + 2 * callback_timeout + MARGIN


def at_risk(
    queues: Mapping[str, Iterable[float | None]], callback_timeout: float, broker_timeout: float
) -> dict[str, str]:
    """A warning for each queue whose jobs may hold a delivery past ``broker_timeout``."""
    out = {}
    for name, limits in queues.items():
        need = needed(limits, callback_timeout)
        if need is None:
            out[name] = (
                f"queue {name}: a job without max_execution_time may run past the broker's "
                f"consumer_timeout ({broker_timeout:g}s): it would be stopped there and "
                "charged a failed attempt"
            )
        elif need > broker_timeout:
            out[name] = (
                f"queue {name}: jobs may hold a delivery {need:g}s (longest max_execution_time "
                f"plus hooks and margin), more than the broker's consumer_timeout "
                f"({broker_timeout:g}s): raise it (rabbitmq.conf consumer_timeout, or the "
                "policy consumer-timeout on RabbitMQ 3.12+) above that"
            )
    return out
