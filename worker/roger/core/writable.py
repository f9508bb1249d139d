"""Any value made writable: as text, as an AMQP short string, as an AMQP field value pika
can encode (and its encoded size, so a header table stays within a byte budget), as data
``json.dumps`` always writes.

Pure and total: whatever a delivery carried (header tables nested without end, bytes that
are not UTF-8, lone surrogates, integers past 64 bits, floats, decimals and timestamps pika
reads but cannot write, a hostile ``__repr__``), the result is writable and the same value
wherever it already was. ``roger.core.envelope`` builds the republished properties from
these; reading hostile headers is ``roger.core.amqp_fields``.
"""

from __future__ import annotations

import calendar
import datetime
import decimal
import math
from typing import Any, Final

SHORTSTR_MAX: Final = 255  # bytes of an AMQP short string (message_id, type, app_id, ...)
MAX_HEADER_DEPTH: Final = 16  # deeper header values are replaced by a note
DETAIL_CHARS: Final = 1000


# -- text ------------------------------------------------------------------------------
def text(value: Any, limit: int) -> str:
    """At most ``limit`` characters that encode as UTF-8 (lone surrogates escaped)."""
    out = value[:limit] if isinstance(value, str) else _repr(value)[:limit]
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        out = out.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]
    return out


def tail(value: Any, limit: int) -> str:
    """Like ``text``, keeping the end (of a stack trace)."""
    if isinstance(value, str) and len(value) > limit:
        value = value[-limit:]
    return text(value, limit)


def shortstr(value: Any) -> str | None:
    """An AMQP short string: at most 255 bytes of UTF-8, cut at a character boundary."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    else:
        raw = text(value, 4 * SHORTSTR_MAX).encode("utf-8")
    return raw[:SHORTSTR_MAX].decode("utf-8", "ignore")


def _repr(value: Any) -> str:
    try:
        return repr(value)[:DETAIL_CHARS]
    except Exception:  # a hostile __repr__ changes nothing
        return f"<{type(value).__name__}>"


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # more digits than Python prints
        return f"<integer of {value.bit_length()} bits>"


# -- AMQP field values -------------------------------------------------------------------
def _key(key: Any) -> str | bytes:
    if isinstance(key, bytes | bytearray):
        return bytes(key)[:SHORTSTR_MAX]
    return shortstr(key) or ""


def _decimal(value: decimal.Decimal) -> decimal.Decimal | str:
    """As pika writes it (decimals 0-255, a signed 32-bit integer), or as text."""
    try:
        n = value.normalize()
        exponent = n.as_tuple().exponent
        if not isinstance(exponent, int):  # NaN, Infinity
            return str(value)
        decimals = -exponent if exponent < 0 else 0
        raw = int(n * (decimal.Decimal(10) ** decimals)) if decimals else int(n)
    except (ArithmeticError, ValueError):
        return str(value)
    if decimals > 255 or not -(2**31) <= raw < 2**31:
        return str(value)
    return value


def _timestamp(value: datetime.datetime) -> datetime.datetime | str:
    try:
        seconds = calendar.timegm(value.utctimetuple())
    except (OverflowError, ValueError):
        return value.isoformat()
    return value if 0 <= seconds < 2**64 else value.isoformat()


def writable(value: Any, depth: int = 1) -> Any:
    """A header value pika can write, the same value wherever it could already."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else _int_text(value)
    if isinstance(value, str):
        return text(value, len(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return _decimal(value)
    if isinstance(value, datetime.datetime):
        return _timestamp(value)
    if isinstance(value, dict | list | tuple) and depth > MAX_HEADER_DEPTH:
        return f"<nested deeper than {MAX_HEADER_DEPTH} levels>"
    if isinstance(value, dict):
        return {_key(k): writable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [writable(v, depth + 1) for v in value]
    return text(_repr(value), DETAIL_CHARS)


def encoded_size(value: Any) -> int:
    """Bytes pika writes for a value returned by ``writable`` (AMQP 0-9-1 field value)."""
    if isinstance(value, str):
        return 5 + len(value.encode("utf-8"))
    if isinstance(value, bytes):
        return 5 + len(value)
    if isinstance(value, bool):
        return 2
    if isinstance(value, int):
        return 5 if -(2**31) <= value < 2**31 else 9
    if isinstance(value, decimal.Decimal):
        return 6
    if isinstance(value, datetime.datetime):
        return 9
    if isinstance(value, dict):
        return 1 + table_size(value)
    if isinstance(value, list):
        return 5 + sum(encoded_size(v) for v in value)
    return 1  # None


def _key_size(key: str | bytes) -> int:
    return 1 + len(key if isinstance(key, bytes) else key.encode("utf-8"))


def table_size(table: dict[Any, Any]) -> int:
    return 4 + sum(_key_size(k) + encoded_size(v) for k, v in table.items())


def writable_headers(headers: Any, budget: int) -> tuple[dict[str | bytes, Any], int]:
    """The entries of a header table that pika can write, in order, as long as they fit
    in ``budget`` bytes; and how many entries were dropped (whole) to stay under it."""
    if not isinstance(headers, dict):
        return {}, 0 if headers is None else 1
    out: dict[str | bytes, Any] = {}
    used, dropped = 4, 0
    for key, value in headers.items():
        k, v = _key(key), writable(value)
        size = _key_size(k) + encoded_size(v)
        if used + size > budget:
            dropped += 1
            continue
        if k in out:  # two keys the same once made writable: the last one wins
            used -= _key_size(k) + encoded_size(out[k])
        out[k] = v
        used += size
    return out, dropped


# -- JSON ---------------------------------------------------------------------------------
def jsonable(value: Any, depth: int = 1) -> Any:
    """A header or property value as data ``json.dumps`` always writes."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else _int_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, dict | list | tuple) and depth > MAX_HEADER_DEPTH:
        return f"<nested deeper than {MAX_HEADER_DEPTH} levels>"
    if isinstance(value, dict):
        return {_json_key(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, depth + 1) for v in value]
    return text(_repr(value) if not isinstance(value, decimal.Decimal) else str(value), 1000)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode("utf-8", "backslashreplace")
    return _repr(key)
