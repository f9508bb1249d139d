"""Hypothesis strategies for hostile input: message bodies, AMQP header tables as raw
bytes (what a broker relays from any client) and as Python values (what a reader hands
out, and worse)."""

from __future__ import annotations

import datetime
import json
import struct
from typing import Any

from hypothesis import strategies as st

# -- bodies ------------------------------------------------------------------------------
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "utf-32-be")
NUMBER_TEXTS = st.sampled_from(
    ["1e400", "-1e400", "1e308", "9" * 400, "-" + "9" * 400, "9" * 4301, "0.0", "-0", "1.5e-400"]
)


def _json_leaf() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(10**60), max_value=10**60),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
    )


JSON_VALUES = st.recursive(
    _json_leaf(),
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def job_fields(draw: st.DrawFn) -> dict[str, Any]:
    """A job object whose fields are each right, wrong or missing."""
    right: dict[str, Any] = {
        "id": draw(st.text(min_size=1, max_size=140)),
        "name": draw(
            st.sampled_from(
                ["m.x:f", "tests.jobs.basic:noop", "os:system", "a" * 300 + ":f", "nope"]
            )
        ),
        "args": draw(JSON_VALUES),
        "queue": draw(st.sampled_from(["default", "", "mail", "x" * 300])),
        "queue_key": draw(st.one_of(st.none(), st.text(max_size=10))),
        "execution_key": draw(st.one_of(st.none(), st.text(max_size=10))),
        "retry_count": draw(st.one_of(st.integers(min_value=0), st.integers())),
        "queued_at": draw(
            st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers())
        ),
        "max_execution_time": draw(st.one_of(st.none(), st.floats(0, 1e9), st.integers())),
    }
    out: dict[str, Any] = {}
    for key, value in right.items():
        choice = draw(st.integers(0, 9))
        if choice == 0:
            continue  # missing
        out[key] = draw(JSON_VALUES) if choice == 1 else value
    return out


def _dump(data: dict[str, Any], number: str | None) -> str:
    text = json.dumps(data, separators=(",", ":"))
    if number is not None and text.endswith("}"):  # a number JSON writers never produce
        sep = "," if len(text) > 2 else ""
        text = text[:-1] + f'{sep}"queued_at":{number}' + "}"
    return text


@st.composite
def deep_json(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 3000))
    inner = "[" * depth + "]" * depth
    return ('{"id":"d","name":"m.x:f","queue":"default","args":' + inner + "}").encode()


@st.composite
def job_bodies(draw: st.DrawFn) -> bytes:
    """Bodies that get far into the decoder: job-like JSON in any encoding."""
    number = draw(st.one_of(st.none(), NUMBER_TEXTS))
    text = _dump(draw(job_fields()), number)
    return text.encode(draw(st.sampled_from(ENCODINGS)), "surrogatepass")


ANY_BODY = st.one_of(st.binary(max_size=300), job_bodies(), deep_json())


# -- AMQP field values as bytes ------------------------------------------------------------
def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _shortstr(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


_FIXED_SIZES = {b"b": 1, b"B": 1, b"U": 2, b"u": 2, b"s": 2, b"I": 4, b"i": 4, b"L": 8, b"l": 8}


def _raw_leaf() -> st.SearchStrategy[bytes]:
    fixed = st.sampled_from(sorted(_FIXED_SIZES)).flatmap(
        lambda k: st.binary(min_size=_FIXED_SIZES[k], max_size=_FIXED_SIZES[k]).map(lambda b: k + b)
    )
    special_doubles = st.sampled_from([float("inf"), float("-inf"), 1e300, -1e300, 0.5]).map(
        lambda f: b"d" + struct.pack(">d", f)
    )
    return st.one_of(
        st.integers(0, 255).map(lambda n: b"t" + bytes([n])),
        fixed,
        st.binary(min_size=4, max_size=4).map(lambda b: b"f" + b),
        st.binary(min_size=8, max_size=8).map(lambda b: b"d" + b),
        special_doubles,
        st.binary(min_size=5, max_size=5).map(lambda b: b"D" + b),
        st.binary(max_size=40).map(lambda b: b"S" + _u32(len(b)) + b),
        st.text(max_size=20).map(lambda t: t.encode()).map(lambda b: b"S" + _u32(len(b)) + b),
        st.binary(max_size=40).map(lambda b: b"x" + _u32(len(b)) + b),
        st.binary(min_size=8, max_size=8).map(lambda b: b"T" + b),
        st.sampled_from([0, 2**31, 253402300800, 2**63, 2**64 - 1]).map(
            lambda n: b"T" + struct.pack(">Q", n)
        ),
        st.just(b"V"),
    )


def raw_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    payload = b"".join(_shortstr(k) + v for k, v in entries)
    return _u32(len(payload)) + payload


_KEYS = st.one_of(st.binary(max_size=12), st.text(max_size=12).map(lambda t: t.encode()[:255]))

RAW_VALUES = st.recursive(
    _raw_leaf(),
    lambda kids: st.one_of(
        st.lists(kids, max_size=4).map(lambda xs: b"A" + _u32(len(b"".join(xs))) + b"".join(xs)),
        st.lists(st.tuples(_KEYS, kids), max_size=4).map(lambda es: b"F" + raw_table(es)),
    ),
    max_leaves=15,
)


@st.composite
def deep_raw_value(draw: st.DrawFn) -> bytes:
    """Arrays or tables nested up to a few thousand levels (RecursionError in pika)."""
    depth = draw(st.integers(1, 2500))
    table = draw(st.booleans())
    value = b"V"
    for _ in range(depth):
        value = b"F" + raw_table([(b"k", value)]) if table else b"A" + _u32(len(value)) + value
    return value


RAW_TABLES = st.lists(st.tuples(_KEYS, st.one_of(RAW_VALUES, deep_raw_value())), max_size=6).map(
    raw_table
)


# -- header values as Python objects ----------------------------------------------------------
def _py_leaf() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.text(max_size=40),  # lone surrogates included
        st.binary(max_size=40),
        st.decimals(),
        st.decimals(allow_nan=False, allow_infinity=False, places=3),
        st.datetimes(),
        st.datetimes(timezones=st.just(datetime.UTC)),
        st.builds(object),
    )


_PY_KEYS = st.one_of(st.text(max_size=300), st.binary(max_size=300), st.integers())

PY_VALUES = st.recursive(
    _py_leaf(),
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.lists(kids, max_size=3).map(tuple),
        st.dictionaries(_PY_KEYS, kids, max_size=4),
    ),
    max_leaves=20,
)


@st.composite
def deep_py_value(draw: st.DrawFn) -> Any:
    value: Any = draw(_py_leaf())
    for _ in range(draw(st.integers(1, 400))):
        value = {"k": value} if draw(st.booleans()) else [value]
    return value


@st.composite
def big_headers(draw: st.DrawFn) -> dict[str, Any]:
    """Tables near and past the frame size (128 KiB)."""
    entries = draw(st.integers(1, 150))
    size = draw(st.integers(1, 1200))
    return {f"k{i}": "é" * size for i in range(entries)}


PY_HEADERS = st.one_of(
    st.none(),
    st.dictionaries(_PY_KEYS, st.one_of(PY_VALUES, deep_py_value()), max_size=8),
    big_headers(),
    PY_VALUES,  # not even a table
)

SHORTSTRS = st.one_of(st.none(), st.text(max_size=300), st.binary(max_size=300))
