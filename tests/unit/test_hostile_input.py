"""Hostile input never escapes as an exception: the decoder, every republish (retry,
burial, park, waiting room) and the reading of AMQP headers are total.

An exception on the worker's event loop closes its AMQP connection; the delivery that
caused it comes back after the reconnect and closes it again. So: for any body and any
headers, the result is a job or ``InvalidMessage`` with a park reason, and whatever the
worker then builds from it is something pika can write and the broker accepts.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from types import ModuleType, SimpleNamespace
from typing import Any

import pika
import pika.data
import pika.spec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import roger.broker  # noqa: F401 - installs the header reader into pika
from roger.core import amqp_fields, envelope, message
from tests.unit import hostile_strategies as hs

pytestmark = pytest.mark.unit

# The two messages of issue 12, verbatim.
ISSUE_INF = b'{"id":"1","name":"m:f","args":{},"queue":"default","queued_at":1e400}'
ISSUE_BIGINT = (
    b'{"id":"1","name":"m:f","args":{},"queue":"default","queued_at":' + b"9" * 400 + b"}"
)


def _job(**fields: Any) -> bytes:
    base: dict[str, Any] = {"id": "j", "name": "m.x:f", "args": {}, "queue": "default"}
    base.update(fields)
    return json.dumps(base).encode()


@pytest.mark.parametrize(
    "body",
    [
        ISSUE_INF,
        ISSUE_BIGINT,
        ISSUE_INF.replace(b"1e400", b"-1e400"),
        _job(max_execution_time=10**400),
        _job(args={"x": [1, 2]}).replace(b"2]", b"1e999]"),
    ],
    ids=["issue-inf", "issue-400-digits", "minus-inf", "met-400-digits", "inf-in-args"],
)
def test_numbers_without_a_finite_float_are_invalid_fields(body: bytes) -> None:
    with pytest.raises(message.InvalidMessage) as exc:
        message.decode(body)
    assert exc.value.reason == message.INVALID_FIELD


def _nested_args(depth: int) -> bytes:
    """A job whose body nests ``depth`` levels (the object itself is level 1)."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return ('{"id":"d","name":"m.x:f","queue":"default","args":' + inner + "}").encode()


def test_nesting_is_bounded_far_below_the_recursion_limit() -> None:
    msg = message.decode(_nested_args(message.MAX_DEPTH))
    json.dumps(message.encode(msg).decode())  # the retry body re-encodes
    with pytest.raises(message.InvalidMessage) as exc:
        message.decode(_nested_args(message.MAX_DEPTH + 1))
    assert exc.value.reason == message.INVALID_FIELD
    with pytest.raises(message.InvalidMessage) as exc:
        message.decode(_nested_args(5000))  # past the parser's own limit
    assert exc.value.reason == message.NOT_JSON


def test_a_body_over_the_limit_is_too_large_before_any_parsing() -> None:
    body = _job() + b" " * message.MAX_BODY_BYTES
    with pytest.raises(message.InvalidMessage) as exc:
        message.decode(body)
    assert exc.value.reason == message.TOO_LARGE


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-32-le"])
def test_a_body_in_another_encoding_reaches_job_processes_as_utf8(encoding: str) -> None:
    text = '{"id":"é1","name":"m.x:f","args":{"s":"ü"},"queue":"default","extra":1}'
    msg, body = message.decode_body(text.encode(encoding))
    assert msg.id == "é1"
    assert json.loads(body.decode("utf-8")) == json.loads(text)  # unknown fields kept
    plain = text.encode()
    assert message.decode_body(plain)[1] is plain  # every client's case: untouched


def _writes(fields: dict[str, Any]) -> int:
    """pika can write these properties, and read them back: their size in bytes."""
    raw = b"".join(pika.BasicProperties(**fields).encode())
    pika.spec.BasicProperties().decode(raw)
    return len(raw)


def _handled(body: bytes) -> None:
    """What the worker does with a delivery, short of I/O: none of it may raise."""
    try:
        msg, job_body = message.decode_body(body)
    except message.InvalidMessage as exc:
        assert exc.reason in message.PARK_REASONS
        return
    frame = json.loads(b'{"t":"run","k":1,"job":' + job_body + b"}")  # a job process's read
    assert frame["job"]["id"] == msg.id
    retried = message.decode(message.encode(msg.retried()))
    assert retried.retry_count == msg.retry_count + 1
    body_of_retry = message.retry_body(msg)  # what the worker publishes: fits, or None
    if body_of_retry is not None:
        assert len(body_of_retry) <= message.MAX_BODY_BYTES
        assert message.decode(body_of_retry).retry_count == msg.retry_count + 1
    error = ("Boom\ud800", "x" * 5000)
    for fields in (
        envelope.retry_properties(msg, "p", error),
        envelope.burial_properties(msg, "p", error, "stack\udfff" * 2000, "not_retryable"),
    ):
        assert _writes(fields) <= envelope.PROPERTIES_BUDGET


@given(hs.ANY_BODY)
@example(ISSUE_INF)
@example(ISSUE_BIGINT)
@example(_job(id="é" * 128, name="m.x:" + "f" * 300, queued_at=-5))
@example(_job(id="\ud800", queued_at=1e300))
@example(_nested_args(message.MAX_DEPTH))
def test_decode_is_total_and_what_it_accepts_the_worker_can_handle(body: bytes) -> None:
    _handled(body)


# -- headers ---------------------------------------------------------------------------
def _pika_reader() -> ModuleType:
    """pika's own table reader, as shipped (roger.broker replaced it in pika.data)."""
    spec = importlib.util.spec_from_file_location("pika_data_as_shipped", pika.data.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PIKA_READER = _pika_reader()


def _delivery_properties(headers_raw: bytes) -> Any:
    """The properties of a delivery whose header table is ``headers_raw``, read the way
    the worker reads them (pika, with roger's reader installed)."""
    flags = pika.spec.BasicProperties.FLAG_HEADERS | pika.spec.BasicProperties.FLAG_MESSAGE_ID
    raw = struct.pack(">H", flags) + headers_raw + b"\x02m1"
    props = pika.spec.BasicProperties()
    props.decode(raw)
    return props


@given(hs.RAW_TABLES)
@example(hs.raw_table([(b"t", b"T" + struct.pack(">Q", 2**63))]))
@example(hs.raw_table([(b"d", b"d" + struct.pack(">d", float("inf")))]))
def test_any_relayed_header_table_is_read_and_parks_cleanly(raw: bytes) -> None:
    assert amqp_fields.decode_table(raw, 0)[1] == len(raw)  # read to its end
    props = _delivery_properties(raw)
    assert props.message_id == "m1"
    fields = envelope.parked_properties(props, "not_json", "detail", "p-default", 1e9)
    assert _writes(fields) <= envelope.PROPERTIES_BUDGET
    json.loads(fields["headers"]["x-roger-original-properties"])
    assert _writes(envelope.kept_properties(props)) <= envelope.PROPERTIES_BUDGET


@given(st.lists(st.tuples(hs._KEYS, hs.RAW_VALUES), max_size=6).map(hs.raw_table))
def test_the_reader_agrees_with_pika_wherever_pika_can_read(raw: bytes) -> None:
    try:
        expected = PIKA_READER.decode_table(raw, 0)
    except (OverflowError, ValueError, OSError, RecursionError):
        return  # pika cannot: the other test covers it
    assert amqp_fields.decode_table(raw, 0) == expected


def test_pika_reads_headers_with_the_total_reader() -> None:
    assert pika.data.decode_table is amqp_fields.decode_table
    deep = b"V"
    for _ in range(5000):
        deep = b"A" + struct.pack(">I", len(deep)) + deep
    raw = hs.raw_table([(b"ts", b"T" + struct.pack(">Q", 2**63)), (b"deep", deep)])
    with pytest.raises((OverflowError, RecursionError)):
        PIKA_READER.decode_table(raw, 0)
    props = _delivery_properties(raw)
    assert props.headers["ts"] == 2**63
    assert "not read" in str(props.headers["deep"])


@given(
    headers=hs.PY_HEADERS,
    shortstrs=st.fixed_dictionaries(
        {name: hs.SHORTSTRS for name in ("message_id", "type", "app_id", "correlation_id")}
    ),
    timestamp=st.one_of(st.none(), st.integers()),
    reason=st.text(max_size=200),
    detail=st.text(max_size=3000),
)
@example(
    headers={f"k{i}": "x" * 1000 for i in range(127)},  # a frame-sized table
    shortstrs={},
    timestamp=None,
    reason="not_json",
    detail="",
)
@example(
    headers={b"\xff\xfe": {"\ud800": [float("nan"), 10**30]}},
    shortstrs={"message_id": "é" * 200},
    timestamp=-1,
    reason="x",
    detail="\udcff",
)
def test_parked_and_kept_properties_are_writable_and_bounded_for_any_delivery(
    headers: Any, shortstrs: dict[str, Any], timestamp: Any, reason: str, detail: str
) -> None:
    props = SimpleNamespace(headers=headers, timestamp=timestamp, **shortstrs)
    parked = envelope.parked_properties(props, reason, detail, "p-default", 1.7e9)
    assert _writes(parked) <= envelope.PROPERTIES_BUDGET
    assert parked["headers"]["x-roger-original-queue"] == "p-default"
    json.loads(parked["headers"]["x-roger-original-properties"])
    assert _writes(envelope.kept_properties(props)) <= envelope.PROPERTIES_BUDGET


def test_a_frame_sized_header_table_keeps_what_fits_and_counts_the_rest() -> None:
    headers = {f"k{i:03}": "x" * 1000 for i in range(127)}
    props = SimpleNamespace(headers=headers, message_id="m")
    fields = envelope.parked_properties(props, "not_json", "", "p-default", 0)
    kept = fields["headers"]
    assert list(kept)[:3] == ["k000", "k001", "k002"]  # in order, from the start
    assert kept["x-roger-headers-dropped"] == 127 - sum(k.startswith("k") for k in kept)
    assert kept["x-roger-headers-dropped"] > 90
    original = json.loads(kept["x-roger-original-properties"])
    assert original["message_id"] == "m" and "left out" in original["headers"]
