"""A retry's body never exceeds what the broker takes (RabbitMQ 4: 16 MiB by default).

A job whose args are non-ASCII text is escaped on re-encoding (up to 6 times larger): before
the fix a 10 MB body became a 30 MB retry, which RabbitMQ 4 refused (the worker reconnected
and ran the job again, in a loop) and which 3.10 took, only for the worker to park it as
too large on its next delivery. Now the retry is written as UTF-8, and a body that fits in
no encoding is buried as delivered (reason ``retry_too_large``), once.
"""

from __future__ import annotations

import json

import pytest

from roger.core import metric_names, naming
from roger.core.message import MAX_BODY_BYTES
from roger_devtools.polling import eventually
from roger_devtools.workers import Workers
from tests.integration.support import Broker

pytestmark = pytest.mark.integration


def _body(job_id: str, text: str) -> bytes:
    """A job without its optional fields: re-encoding adds them (about 100 bytes)."""
    job = {"id": job_id, "name": "tests.jobs.basic:flaky", "args": {"s": text}}
    return json.dumps({**job, "queue": "default"}, ensure_ascii=False).encode()


def test_retries_of_large_non_ascii_bodies_fit_or_are_buried_as_delivered(
    workers: Workers, broker: Broker, unique_name: str
) -> None:
    p = unique_name
    w = workers.start(queues=["default=2"], retry_levels="1")
    main = naming.queue_name(p, "default")
    buried = naming.buried_queue_name(p, "default")
    grows = _body("grows", "é" * 5_000_000)  # 10 MB; 30 MB escaped
    filler = MAX_BODY_BYTES - len(_body("full", ""))
    full = _body("full", "x" * filler)  # exactly the maximum: no retry fits
    assert len(full) == MAX_BODY_BYTES
    broker.publish(main, grows, message_id="grows")
    broker.publish(main, full, message_id="full")

    eventually(lambda: broker.count(buried) == 2, 120, message=workers.logs())
    found = {props.message_id: (props, body) for props, body in broker.peek(buried)}
    props, body = found["grows"]  # retried once (level 1 s), then its retries ran out
    assert props.headers["x-roger-buried-reason"] == "retries_exhausted"
    assert json.loads(body)["retry_count"] == 1 and json.loads(body)["args"]["s"][:3] == "ééé"
    props, body = found["full"]
    assert props.headers["x-roger-buried-reason"] == "retry_too_large"
    assert body == full
    assert broker.count(naming.invalid_queue_name(p, "default")) == 0  # nothing parked
    assert w.metric(metric_names.BROKER_RECONNECTS + "_total") == 0, workers.logs()
