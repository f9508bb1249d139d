"""Hostile deliveries for live workers: malformed bodies, AMQP headers no pika client would
write, and a publisher that writes them (raw field values through pika).

Everything is drawn from a seeded ``random.Random``: a failing run is replayed exactly.
"""

from __future__ import annotations

import contextlib
import json
import random
import struct
from collections.abc import Iterator
from typing import Any

import pika
import pika.data

# The two messages of issue 12, verbatim.
ISSUE_INF = b'{"id":"1","name":"m:f","args":{},"queue":"default","queued_at":1e400}'
ISSUE_BIGINT = (
    b'{"id":"1","name":"m:f","args":{},"queue":"default","queued_at":' + b"9" * 400 + b"}"
)


class RawField(bytes):
    """An AMQP field value written as these exact bytes (kind octet included)."""


@contextlib.contextmanager
def raw_fields() -> Iterator[None]:
    """Let pika write ``RawField`` header values (publisher side only)."""
    original = pika.data.encode_value

    def encode_value(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, RawField):
            pieces.append(bytes(value))
            return len(value)
        return int(original(pieces, value))

    pika.data.encode_value = encode_value
    try:
        yield
    finally:
        pika.data.encode_value = original


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def nested_array(depth: int) -> RawField:
    value = b"V"
    for _ in range(depth):
        value = b"A" + _u32(len(value)) + value
    return RawField(value)


def nested_table(depth: int) -> RawField:
    value = b"V"
    for _ in range(depth):
        payload = b"\x01k" + value
        value = b"F" + _u32(len(payload)) + payload
    return RawField(value)


def timestamp(seconds: int) -> RawField:
    return RawField(b"T" + struct.pack(">Q", seconds))


def double(value: float) -> RawField:
    return RawField(b"d" + struct.pack(">d", value))


def hostile_headers(rng: random.Random) -> dict[Any, Any]:
    """Headers the broker relays and pika used to choke on, or that cannot be written back."""
    kind = rng.randrange(9)
    if kind == 0:
        return {"ts": timestamp(rng.choice([2**63, 2**64 - 1, 253402300800]))}
    if kind == 1:
        return {"deep": nested_array(rng.randrange(40, 3000))}
    if kind == 2:
        return {"deep": nested_table(rng.randrange(40, 1500))}
    if kind == 3:  # near the frame size: a parked copy used to add a JSON copy of it
        n = rng.randrange(60, 115)
        return {f"big{i}": "é" * 500 for i in range(n)}
    if kind == 4:
        return {"float": double(rng.choice([1e300, -1e300, 1e19, 2.5]))}
    if kind == 5:  # not UTF-8: read as bytes, key and value
        return {bytes([0xFF, 0xFE, rng.randrange(256)]): RawField(b"S" + _u32(3) + b"\xc3\x28\xff")}
    if kind == 6:
        return {"dec": RawField(b"D" + bytes([rng.randrange(256)]) + rng.randbytes(4))}
    if kind == 7:
        return {"nested": {"a": [1, {"b": [b"\x00\xff", None, True]}], "s": "\u2028x"}}
    return {}


def _job(n: int, out: str, **fields: Any) -> dict[str, Any]:
    """Job ``n``: ``tests.jobs.basic`` jobs record ``n`` in ``out``; ``case`` names it."""
    base: dict[str, Any] = {
        "id": f"m{n}",
        "name": "tests.jobs.basic:ok",
        "args": {"case": n, "n": n, "out": out},
        "queue": "default",
    }
    base.update(fields)
    return base


def _dump(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _with_number(n: int, out: str, field: str, number: str) -> bytes:
    body = _dump(_job(n, out))
    return body[:-1] + f',"{field}":{number}}}'.encode()


def malformed_body(rng: random.Random, n: int, out: str) -> bytes:
    """A body the worker must park (never run), of one of many kinds."""
    kind = rng.randrange(14)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if kind == 1:  # JSON-looking text in an encoding, broken
        return (
            _dump(_job(n, out))[: rng.randrange(1, 40)]
            .decode()
            .encode(rng.choice(["utf-16", "utf-32", "utf-8-sig"]))
        )
    if kind == 2:
        return rng.choice([b"[1,2]", b'"s"', b"null", b"1e400", b"-0", b"{}", b"NaN", b"Infinity"])
    if kind == 3:
        data = _job(n, out)
        del data[rng.choice(["id", "name", "args", "queue"])]
        return _dump(data)
    if kind == 4:
        field, value = rng.choice(
            [
                ("id", ""),
                ("id", "x" * 200),
                ("id", 5),
                ("name", "no colon"),
                ("name", 3),
                ("queue", ""),
                ("retry_count", -1),
                ("retry_count", True),
                ("queued_at", "now"),
                ("max_execution_time", 0.5),
                ("queue_key", []),
                ("execution_key", {}),
            ]
        )
        return _dump(_job(n, out, **{field: value}))
    if kind == 5:
        field = rng.choice(["queued_at", "max_execution_time"])
        return _with_number(n, out, field, rng.choice(["1e400", "-1e400", "9" * 400, "1e999"]))
    if kind == 6:
        return _dump(_job(n, out)).replace(b'{"case":', b'{"x":1e400,"case":')
    if kind == 7:
        depth = rng.randrange(101, 5000)
        return _dump(_job(n, out))[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 8:
        return _dump(_job(n, out, name=rng.choice(["tests.jobs.basic:missing", "os:system"])))
    if kind == 9:  # a valid job that names a queue this partition does not consume
        return _dump(_job(n, out, queue=rng.choice(["elsewhere", "mail", "default.buried"])))
    if kind == 10:
        return _dump(_job(n, out)).decode().encode("utf-16")[: rng.randrange(2, 30)]
    if kind == 11:
        return _dump(_job(n, out))[: rng.randrange(1, 30)]
    if kind == 12:  # a NUL where JSON allows none
        return _dump(_job(n, out)).replace(b"{", b"{\x00", 1)
    return _dump(_job(n, out, retry_count="1"))


def valid_body(rng: random.Random, n: int, out: str, name: str) -> bytes:
    """A job that must run: plain, or odd in ways the decoder accepts."""
    kind = rng.randrange(8)
    data = _job(n, out, name=name)
    if kind == 1:
        return _dump(data).decode().encode(rng.choice(["utf-16", "utf-32-le", "utf-8-sig"]))
    if kind == 2:
        data["args"]["deep"] = json.loads("[" * 90 + "]" * 90)
    elif kind == 3:
        data["args"]["big"] = 10**300
        data["queued_at"] = rng.choice([-5, 1e300, 10**30])
    elif kind == 4:
        data["args"]["s"] = "\ud800 \udfff é 😀"
        data["id"] = "😀" * 128  # 512 bytes of UTF-8: more than a short string holds
    elif kind == 5:
        data["max_execution_time"] = 1e300
    elif kind == 6:
        data["future_field"] = {"x": [1, 2, 3]}
    return _dump(data)  # ASCII: lone surrogates and emoji are written as escapes
