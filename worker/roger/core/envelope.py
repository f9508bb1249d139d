"""The AMQP properties of what the worker republishes: retries, burials, parked messages,
and jobs moved to an execution key's waiting room.

Pure and total. Built from a decoded message, or from a delivery's properties as pika
decoded them, the result is always writable by pika and fits well inside one AMQP frame,
whatever the delivery carried: header tables nested without end or as large as a frame,
bytes that are not UTF-8, strings with lone surrogates, integers past 64 bits, floats,
decimals and timestamps pika reads but cannot write, short strings over 255 bytes. A
republish that pika refuses raises inside the worker's event loop, and one the broker
refuses (a content header over ``frame_max``) drops the connection; the delivery then comes
back and does it again: a reconnect loop. Hence the bounds here, proven by property tests
against pika's own encoder.

Every function returns keyword arguments of ``pika.BasicProperties`` (this layer does not
import pika). How any single value is made writable (text, short strings, AMQP field
values within a byte budget, JSON) is ``roger.core.writable``.
"""

from __future__ import annotations

import json
from typing import Any, Final

from roger.core.message import CONTENT_TYPE, JobMessage, amqp_timestamp
from roger.core.writable import (
    DETAIL_CHARS,
    SHORTSTR_MAX,
    jsonable,
    shortstr,
    tail,
    text,
    writable_headers,
)

# The delivery's own headers kept on a parked (or waiting) copy; entries past it are
# dropped whole and counted in ``x-roger-headers-dropped``.
KEPT_HEADERS_BYTES: Final = 32 * 1024
ORIGINAL_PROPERTIES_CHARS: Final = 16 * 1024  # x-roger-original-properties, as JSON
# What every result stays under, all properties included: frame_max is 128 KiB by default
# in RabbitMQ and pika, and a content header must fit in one frame.
PROPERTIES_BUDGET: Final = 96 * 1024
ERROR_KIND_CHARS: Final = 200
ERROR_MESSAGE_CHARS: Final = 1000
STACK_CHARS: Final = 4000

_SHORTSTR_PROPERTIES: Final = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "type",
    "user_id",
    "app_id",
)
# Kept on a parked copy; ``user_id`` never is (the broker refuses a user_id that is not
# the publisher's own, and closes the channel), ``reply_to`` and ``expiration`` neither (a
# parked message must not expire or be answered).
_PARKED_SHORTSTRS: Final = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "message_id",
    "type",
    "app_id",
)


_ALL_PROPERTIES: Final = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)


def original_properties(props: Any) -> dict[str, Any]:
    """The AMQP properties of a delivery as JSON-able data, kept on parked messages."""
    out: dict[str, Any] = {}
    for name in _ALL_PROPERTIES:
        value = getattr(props, name, None)
        if value is not None:
            out[name] = jsonable(value)
    headers = getattr(props, "headers", None)
    if headers:
        out["headers"] = jsonable(headers)
    return out


def original_properties_json(props: Any) -> str:
    """``original_properties`` as JSON of at most ``ORIGINAL_PROPERTIES_CHARS``: the headers
    are left out (noted) when they would not fit; the parked copy carries them anyway."""
    data = original_properties(props)
    out = json.dumps(data, allow_nan=False)
    if len(out) > ORIGINAL_PROPERTIES_CHARS and "headers" in data:
        data["headers"] = f"<{len(out)} characters as JSON: left out>"
        out = json.dumps(data, allow_nan=False)
    if len(out) > ORIGINAL_PROPERTIES_CHARS:  # cannot happen with short strings; be sure
        out = json.dumps({"truncated": out[:DETAIL_CHARS]})
    return out


# -- the properties of each republish ------------------------------------------------------
def _job_properties(msg: JobMessage, partition: str, headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "delivery_mode": 2,
        "content_type": CONTENT_TYPE,
        "message_id": shortstr(msg.id),
        "app_id": shortstr(partition),
        "type": shortstr(msg.name),
        "headers": headers,
        "timestamp": amqp_timestamp(msg.queued_at),
    }


def _error_headers(error: tuple[Any, Any]) -> dict[str, Any]:
    return {
        "x-roger-error-kind": text(error[0], ERROR_KIND_CHARS),
        "x-roger-error-message": text(error[1], ERROR_MESSAGE_CHARS),
    }


def _carried(carried: dict[str, Any] | None) -> dict[str, Any]:
    """Replay stamps (``x-roger-replayed-at/-count``) a job keeps through retries and
    burial, as integers only (``roger.core.buried.carried_headers`` picks them)."""
    if not carried:
        return {}
    return {k: v for k, v in carried.items() if isinstance(k, str) and type(v) is int and v >= 0}


def retry_properties(
    msg: JobMessage, partition: str, error: tuple[Any, Any], carried: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A failed job on its way to a retry queue (its body: ``encode(msg.retried())``)."""
    headers = _error_headers(error)
    headers.update(_carried(carried))
    return _job_properties(msg, partition, headers)


def burial_properties(
    msg: JobMessage,
    partition: str,
    error: tuple[Any, Any],
    stack: Any,
    reason: str,
    carried: dict[str, Any] | None = None,
    buried_at: float | None = None,
) -> dict[str, Any]:
    """A failed job on its way to ``.buried`` (its body as delivered), with why it is
    there (``x-roger-buried-reason``: ``roger.core.fate.BuriedReason``), when
    (``x-roger-buried-at``) and its replay stamps."""
    headers = _error_headers(error)
    headers["x-roger-buried-reason"] = reason
    headers.update(_carried(carried))
    if buried_at is not None:
        headers["x-roger-buried-at"] = amqp_timestamp(buried_at)
    if stack:
        headers["x-roger-stacktrace"] = tail(stack, STACK_CHARS)
    return _job_properties(msg, partition, headers)


def _kept_headers(props: Any) -> dict[str | bytes, Any]:
    headers, dropped = writable_headers(getattr(props, "headers", None), KEPT_HEADERS_BYTES)
    if dropped:
        headers["x-roger-headers-dropped"] = dropped
    return headers


def _small_int(value: Any, top: int) -> int | None:
    return value if type(value) is int and 0 <= value <= top else None


def parked_properties(
    props: Any, reason: str, detail: str, original_queue: str, parked_at: float
) -> dict[str, Any]:
    """A message that must never run, on its way to ``.invalid`` (its body as delivered):
    its own properties and headers (as far as they can be written and fit), and why."""
    headers = _kept_headers(props)
    headers.update(
        {
            "x-roger-invalid-reason": text(reason, 100),
            "x-roger-invalid-detail": text(detail, DETAIL_CHARS),
            "x-roger-original-queue": text(original_queue, SHORTSTR_MAX),
            "x-roger-original-properties": original_properties_json(props),
            "x-roger-parked-at": amqp_timestamp(parked_at),
        }
    )
    out: dict[str, Any] = {name: shortstr(getattr(props, name, None)) for name in _PARKED_SHORTSTRS}
    out.update(
        delivery_mode=2,
        headers=headers,
        timestamp=_small_int(getattr(props, "timestamp", None), 2**64 - 1),
    )
    return out


DELIVERY_COUNT = "x-delivery-count"  # set by quorum queues on redelivery


def delivery_count(props: Any) -> int:
    """How often the broker delivered this message before (0 when it does not say)."""
    headers = getattr(props, "headers", None)
    value = headers.get(DELIVERY_COUNT) if isinstance(headers, dict) else None
    return value if type(value) is int and value >= 0 else 0


def kept_properties(props: Any) -> dict[str, Any]:
    """A valid job moved as it is (to its execution key's waiting room, and back): its
    properties less ``user_id`` (see ``_PARKED_SHORTSTRS``), made writable and bounded."""
    out: dict[str, Any] = {
        name: shortstr(getattr(props, name, None))
        for name in _SHORTSTR_PROPERTIES
        if name != "user_id"
    }
    mode = getattr(props, "delivery_mode", None)
    out.update(
        delivery_mode=mode if mode in (1, 2) else 2,
        priority=_small_int(getattr(props, "priority", None), 255),
        timestamp=_small_int(getattr(props, "timestamp", None), 2**64 - 1),
        headers=_kept_headers(props),
    )
    # The broker counts deliveries itself; a copy starts again from none.
    out["headers"].pop(DELIVERY_COUNT, None)
    return out
