"""Reading AMQP 0-9-1 field tables (message headers) without ever raising on what a
broker relays.

pika's own reader raises on input the broker accepts from any publisher: a timestamp past
the year 9999 (``OverflowError``), a float that is infinite (it turns floats into ints),
arrays or tables nested a few thousand levels deep (``RecursionError``). Raised while pika
reads a delivery, any of them closes the connection; the delivery comes back after the
reconnect and closes it again, for ever. This reader gives the same values as pika's
wherever pika's succeeds, and otherwise a value that says what was there: the timestamp
as its integer, the float as text, a note in place of what is nested deeper than
``MAX_DEPTH``. ``roger.broker`` installs it into pika.

Only a frame that is cut short (which the broker never relays) still raises.
"""

from __future__ import annotations

import datetime
import decimal
import math
import struct
from typing import Any, Final

MAX_DEPTH: Final = 32  # nested tables and arrays deeper than this are not read

_U32: Final = struct.Struct(">I")
_FIXED: Final = {  # kind -> (struct, size): integers and booleans
    b"b": (struct.Struct(">b"), 1),
    b"B": (struct.Struct(">B"), 1),
    b"U": (struct.Struct(">h"), 2),
    b"u": (struct.Struct(">H"), 2),
    b"s": (struct.Struct(">h"), 2),
    b"I": (struct.Struct(">i"), 4),
    b"i": (struct.Struct(">I"), 4),
    b"L": (struct.Struct(">q"), 8),
    b"l": (struct.Struct(">q"), 8),
}
_FLOATS: Final = {b"f": (struct.Struct(">f"), 4), b"d": (struct.Struct(">d"), 8)}


class UnknownFieldType(ValueError):
    """A field kind this reader does not know: its length is unknown, nothing after it can
    be read (pika raises the same)."""


def decode_short_string(encoded: bytes, offset: int) -> tuple[str | bytes, int]:
    length = encoded[offset]
    return _text(encoded[offset + 1 : offset + 1 + length]), offset + 1 + length


def decode_table(encoded: bytes, offset: int, depth: int = 0) -> tuple[dict[Any, Any], int]:
    """A field table at ``offset``: (the table, the offset after it)."""
    (size,) = _U32.unpack_from(encoded, offset)
    offset += 4
    end = offset + size
    if depth >= MAX_DEPTH:
        return {"x-roger-not-read": f"a table nested deeper than {MAX_DEPTH} levels"}, end
    result: dict[Any, Any] = {}
    while offset < end:
        key, offset = decode_short_string(encoded, offset)
        value, offset = decode_value(encoded, offset, depth)
        result[key] = value
    return result, offset


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf8")
    except UnicodeDecodeError:
        return raw


def _float(value: float) -> Any:
    """pika's reading of a float (an int), or text where there is no such int."""
    return int(value) if math.isfinite(value) else repr(value)


def _timestamp(seconds: int) -> Any:
    try:
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return seconds  # past what datetime holds: the number itself


def decode_value(encoded: bytes, offset: int, depth: int = 0) -> tuple[Any, int]:
    """One field value at ``offset``: (the value, the offset after it)."""
    kind = encoded[offset : offset + 1]
    offset += 1
    if kind == b"t":
        return bool(encoded[offset]), offset + 1
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return fixed[0].unpack_from(encoded, offset)[0], offset + fixed[1]
    floating = _FLOATS.get(kind)
    if floating is not None:
        return _float(floating[0].unpack_from(encoded, offset)[0]), offset + floating[1]
    if kind == b"D":
        decimals = encoded[offset]
        raw = struct.unpack_from(">i", encoded, offset + 1)[0]
        return decimal.Decimal(raw) * (decimal.Decimal(10) ** -decimals), offset + 5
    if kind in (b"S", b"x"):
        (length,) = _U32.unpack_from(encoded, offset)
        offset += 4
        raw = encoded[offset : offset + length]
        return (_text(raw) if kind == b"S" else raw), offset + length
    if kind == b"A":
        (length,) = _U32.unpack_from(encoded, offset)
        offset += 4
        end = offset + length
        if depth + 1 >= MAX_DEPTH:
            return f"<an array nested deeper than {MAX_DEPTH} levels: not read>", end
        items = []
        while offset < end:
            item, offset = decode_value(encoded, offset, depth + 1)
            items.append(item)
        return items, offset
    if kind == b"T":
        return _timestamp(struct.unpack_from(">Q", encoded, offset)[0]), offset + 8
    if kind == b"F":
        return decode_table(encoded, offset, depth + 1)
    if kind == b"V":
        return None, offset
    raise UnknownFieldType(f"unknown AMQP field type {kind!r}")
