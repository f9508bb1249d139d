"""The body of a job's next attempt never exceeds what RabbitMQ 4 takes by default.

Escaped as ASCII, non-ASCII text grows up to 6 times: a 10 MB body of such text would become
30 MB on its retry, which a RabbitMQ 4 broker refuses (16 MiB max_message_size) and the
decoder would park. ``retry_body`` writes UTF-8 then, and gives up (``None``: buried as
delivered) only when even that does not fit.
"""

from __future__ import annotations

import json

import pytest

from roger.core.message import MAX_BODY_BYTES, JobMessage, decode, encode, retry_body

pytestmark = pytest.mark.unit


def _msg(text: str) -> JobMessage:
    return JobMessage(id="a", name="m:f", args={"s": text}, queue="default", retry_count=2)


def test_an_ordinary_retry_is_the_usual_ascii_body_with_the_next_retry_count() -> None:
    body = retry_body(_msg("héllo"))
    assert body == encode(_msg("héllo").retried())
    assert decode(body).retry_count == 3 and b"\\u00e9" in body


def test_non_ascii_text_that_would_not_fit_escaped_is_written_as_utf8() -> None:
    text = "é" * (MAX_BODY_BYTES // 4)  # 8 MiB as UTF-8, 24 MiB escaped
    body = retry_body(_msg(text))
    assert body is not None and len(body) <= MAX_BODY_BYTES
    assert len(encode(_msg(text).retried())) > MAX_BODY_BYTES
    again = decode(body)
    assert again.args == {"s": text} and again.retry_count == 3


def test_a_retry_that_fits_in_no_encoding_is_refused() -> None:
    text = "x" * MAX_BODY_BYTES
    assert retry_body(_msg(text)) is None
    delivered = json.dumps({"id": "a", "name": "m:f", "args": {"s": "é" * 100}, "queue": "q"})
    assert retry_body(decode(delivered.encode())) is not None
