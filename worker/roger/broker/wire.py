"""A ``basic.publish`` as the bytes that go on the wire (pure).

pika builds and marshals three frame objects per publish on the thread that owns the
connection; with one I/O thread serving every caller of a shared client, that was most
of the thread's time per job. Here the caller's thread builds the bytes (method frame,
content header, body frames) and the I/O thread only writes them, a batch at a time.
The layout is AMQP 0-9-1 (section 4.2.3); a unit test checks it byte for byte against
pika's own marshalling.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import pika

_METHOD, _HEADER, _BODY, _FRAME_END = 1, 2, 3, b"\xce"
_FRAME: Final = struct.Struct(">BHI")  # type, channel, payload size
_PUBLISH_HEAD: Final = b"\x00\x3c\x00\x28\x00\x00"  # basic.publish, ticket 0
_HEADER_HEAD: Final = struct.Struct(">HHQ")  # class basic, weight 0, body size
_MANDATORY: Final = b"\x01"


# The properties of Roger's job messages (``roger.core.message.properties``), in the
# order of the AMQP ``basic`` content header, with their flag bits; any other set of
# properties goes through pika's encoder.
_JOB_KEYS: Final = {"content_type", "delivery_mode", "message_id", "timestamp", "type", "app_id"}
_JOB_FLAGS: Final = struct.pack(">H", 1 << 15 | 1 << 12 | 1 << 7 | 1 << 6 | 1 << 5 | 1 << 3)
_TIMESTAMP: Final = struct.Struct(">Q")
_SHORTS: dict[str, bytes] = {}  # content types, job names, partitions: few, repeated
_SHORTS_MAX: Final = 4096


def _short(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"{value[:40]!r}... is over 255 bytes: too long for an AMQP short string")
    return bytes((len(raw),)) + raw


def _repeated(value: str) -> bytes:
    found = _SHORTS.get(value)
    if found is None:
        found = _short(value)
        if len(_SHORTS) < _SHORTS_MAX:
            _SHORTS[value] = found
    return found


def properties(fields: dict[str, Any]) -> bytes:
    """The property flags and values of a content header, from ``pika.BasicProperties``
    keyword arguments."""
    if fields.keys() != _JOB_KEYS or None in fields.values():
        return b"".join(pika.BasicProperties(**fields).encode())
    return b"".join(
        (
            _JOB_FLAGS,
            _repeated(fields["content_type"]),
            bytes((fields["delivery_mode"],)),
            _short(fields["message_id"]),
            _TIMESTAMP.pack(fields["timestamp"]),
            _repeated(fields["type"]),
            _repeated(fields["app_id"]),
        )
    )


_METHODS: dict[tuple[int, str, str], bytes] = {}  # (channel, exchange, key) -> method frame
_METHODS_MAX: Final = 4096


def _method_frame(channel: int, exchange: str, routing_key: str) -> bytes:
    found = _METHODS.get((channel, exchange, routing_key))
    if found is None:
        method = _PUBLISH_HEAD + _short(exchange) + _short(routing_key) + _MANDATORY
        found = _FRAME.pack(_METHOD, channel, len(method)) + method + _FRAME_END
        if len(_METHODS) < _METHODS_MAX:
            _METHODS[(channel, exchange, routing_key)] = found
    return found


def publish(
    channel: int, queue: str, body: bytes, props: bytes, body_max: int, exchange: str = ""
) -> bytes:
    """Every frame of a mandatory publish of ``body`` with routing key ``queue`` to
    ``exchange`` (the default exchange: the queue of that name); ``props`` from
    ``properties``, ``body_max`` the connection's frame size less 8."""
    size = len(body)
    parts = [
        _method_frame(channel, exchange, queue),
        _FRAME.pack(_HEADER, channel, 12 + len(props)),
        _HEADER_HEAD.pack(60, 0, size),
        props,
        _FRAME_END,
    ]
    if 0 < size <= body_max:  # the common case: one body frame
        parts += (_FRAME.pack(_BODY, channel, size), body, _FRAME_END)
    else:
        for start in range(0, size, body_max):
            chunk = body[start : start + body_max]
            parts += (_FRAME.pack(_BODY, channel, len(chunk)), chunk, _FRAME_END)
    return b"".join(parts)
