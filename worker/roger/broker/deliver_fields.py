"""A ``basic.deliver`` method and its content header's properties, read by offset (pure).

pika's own ``decode`` methods test every one of the fourteen property flags and call a
helper (a ``struct`` unpack, a slice, a decode) per short string: on the worker's loop
that was a tenth of its time a job. These two functions make the same pika objects from
the same bytes by the same rules, and only visit the fields a message has:

- a short string is its UTF-8 text, or its bytes when they are not UTF-8 (as pika does);
- a table goes through ``pika.data.decode_table``, looked up at call time, so the
  never-raising reader ``roger.broker.amqp_fields`` installs applies here too;
- a flag word with the continuation bit (no 0-9-1 ``basic`` property needs one) is left to
  pika's ``decode``.

``tests/unit/test_deliver_fields.py`` checks both against pika's ``decode`` on generated
fields, every property present or absent, text or not.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from pika import data, spec

_U16: Final = struct.Struct(">H").unpack_from
_U64: Final = struct.Struct(">Q").unpack_from

_SHORT, _OCTET, _TIMESTAMP, _TABLE = "short", "octet", "timestamp", "table"
_P = spec.BasicProperties
# AMQP 0-9-1 basic class properties, in flag (and wire) order.
_PROPERTIES: Final = (
    (_P.FLAG_CONTENT_TYPE, "content_type", _SHORT),
    (_P.FLAG_CONTENT_ENCODING, "content_encoding", _SHORT),
    (_P.FLAG_HEADERS, "headers", _TABLE),
    (_P.FLAG_DELIVERY_MODE, "delivery_mode", _OCTET),
    (_P.FLAG_PRIORITY, "priority", _OCTET),
    (_P.FLAG_CORRELATION_ID, "correlation_id", _SHORT),
    (_P.FLAG_REPLY_TO, "reply_to", _SHORT),
    (_P.FLAG_EXPIRATION, "expiration", _SHORT),
    (_P.FLAG_MESSAGE_ID, "message_id", _SHORT),
    (_P.FLAG_TIMESTAMP, "timestamp", _TIMESTAMP),
    (_P.FLAG_TYPE, "type", _SHORT),
    (_P.FLAG_USER_ID, "user_id", _SHORT),
    (_P.FLAG_APP_ID, "app_id", _SHORT),
    (_P.FLAG_CLUSTER_ID, "cluster_id", _SHORT),
)
_NONE: Final = dict.fromkeys(name for _, name, _ in _PROPERTIES)  # copied: 6x fromkeys' speed
_CONTINUED: Final = 1  # the flag word's last bit: another flag word follows

# flag word -> the (attribute, kind) of the fields present; a producer sends few shapes
_shapes: dict[int, tuple[tuple[str, str], ...]] = {}


def _shape(flags: int) -> tuple[tuple[str, str], ...]:
    shape = _shapes.get(flags)
    if shape is None:
        shape = tuple((name, kind) for flag, name, kind in _PROPERTIES if flags & flag)
        if len(_shapes) < 256:  # a hostile producer's every shape is not kept
            _shapes[flags] = shape
    return shape


def _text(raw: bytes) -> str | bytes:
    """A short string's value, as pika gives it: its text, or its bytes if not UTF-8."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def properties(buf: bytes, at: int) -> Any:
    """The ``BasicProperties`` whose flag word starts at ``buf[at]`` (just past a content
    header's class, weight and body size)."""
    flags: int = _U16(buf, at)[0]
    if flags & _CONTINUED:
        return spec.BasicProperties().decode(buf, at)
    values: dict[str, Any] = _NONE.copy()
    at += 2
    for name, kind in _shape(flags):
        if kind is _SHORT:
            end = at + 1 + buf[at]
            values[name] = _text(buf[at + 1 : end])
            at = end
        elif kind is _OCTET:
            values[name] = buf[at]
            at += 1
        elif kind is _TIMESTAMP:
            values[name] = _U64(buf, at)[0]
            at += 8
        else:
            values[name], at = data.decode_table(buf, at)
    props = object.__new__(spec.BasicProperties)
    props.__dict__ = values
    return props


def deliver(buf: bytes, at: int) -> Any:
    """The ``Basic.Deliver`` whose arguments start at ``buf[at]`` (past class and method)."""
    end = at + 1 + buf[at]
    consumer_tag = _text(buf[at + 1 : end])
    delivery_tag: int = _U64(buf, end)[0]
    redelivered = (buf[end + 8] & 1) != 0
    at = end + 9
    end = at + 1 + buf[at]
    exchange = _text(buf[at + 1 : end])
    at = end + 1 + buf[end]
    routing_key = _text(buf[end + 1 : at])
    method = object.__new__(spec.Basic.Deliver)
    method.__dict__ = {
        "consumer_tag": consumer_tag,
        "delivery_tag": delivery_tag,
        "redelivered": redelivered,
        "exchange": exchange,
        "routing_key": routing_key,
    }
    return method
