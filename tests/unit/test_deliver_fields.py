"""The worker's reading of a delivery's method and properties gives what pika's gives.

Generated fields cover every basic property present or absent, short strings that are
UTF-8 or not (pika hands those on as bytes), octets and timestamps at their limits, and
header tables; the objects must match pika's ``decode`` attribute for attribute.
"""

from __future__ import annotations

import struct
from typing import Any

import pika.data
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika import spec

from roger.broker import deliver_fields

pytestmark = pytest.mark.unit

# A short string is at most 255 octets; bytes that are not UTF-8 come back as bytes.
_short = st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255) | st.binary(max_size=255)
_octet = st.integers(0, 255)
_headers = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.integers(-(2**40), 2**40) | st.text(max_size=8) | st.booleans() | st.none(),
    max_size=4,
)
_props = st.builds(
    spec.BasicProperties,
    content_type=st.none() | _short,
    content_encoding=st.none() | _short,
    headers=st.none() | _headers,
    delivery_mode=st.none() | _octet,
    priority=st.none() | _octet,
    correlation_id=st.none() | _short,
    reply_to=st.none() | _short,
    expiration=st.none() | _short,
    message_id=st.none() | _short,
    timestamp=st.none() | st.integers(0, 2**64 - 1),
    type=st.none() | _short,
    user_id=st.none() | _short,
    app_id=st.none() | _short,
    cluster_id=st.none() | _short,
)


def _encoded(obj: Any, lead: bytes = b"") -> bytes:
    return lead + b"".join(obj.encode())


@settings(max_examples=400, deadline=None)
@given(props=_props, lead=st.binary(max_size=9))
def test_properties_are_what_pikas_decode_makes_of_them(props: Any, lead: bytes) -> None:
    buf = _encoded(props, lead)
    ours = deliver_fields.properties(buf, len(lead))
    assert type(ours) is spec.BasicProperties
    assert vars(ours) == vars(spec.BasicProperties().decode(buf, len(lead)))


@settings(max_examples=300, deadline=None)
@given(
    consumer_tag=_short,
    delivery_tag=st.integers(0, 2**64 - 1),
    redelivered=st.booleans(),
    exchange=_short,
    routing_key=_short,
    lead=st.binary(max_size=9),
)
def test_a_deliver_method_is_what_pikas_decode_makes_of_it(
    consumer_tag: Any,
    delivery_tag: int,
    redelivered: bool,
    exchange: Any,
    routing_key: Any,
    lead: bytes,
) -> None:
    method = spec.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key)
    buf = _encoded(method, lead)
    ours = deliver_fields.deliver(buf, len(lead))
    assert type(ours) is spec.Basic.Deliver
    assert vars(ours) == vars(spec.Basic.Deliver().decode(buf, len(lead)))


def test_a_second_flag_word_is_left_to_pika() -> None:
    # content_type present and the continuation bit set; the second word sets nothing
    buf = struct.pack(">HH", spec.BasicProperties.FLAG_CONTENT_TYPE | 1, 0) + b"\x04text"
    ours = deliver_fields.properties(buf, 0)
    assert vars(ours) == vars(spec.BasicProperties().decode(buf, 0))
    assert ours.content_type == "text"


def test_headers_go_through_the_table_reader_installed_at_call_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """roger.broker.amqp_fields swaps pika's table reader for one that never raises: the
    worker's own path must use whichever is installed, not one bound at import."""
    read: list[int] = []
    real = pika.data.decode_table

    def recording(buf: bytes, at: int) -> Any:
        read.append(at)
        return real(buf, at)

    monkeypatch.setattr(pika.data, "decode_table", recording)
    props = spec.BasicProperties(headers={"x-delivery-count": 3}, message_id="m")
    assert deliver_fields.properties(_encoded(props), 0).headers == {"x-delivery-count": 3}
    assert read == [2]
