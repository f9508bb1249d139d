"""The flow driver and the shared confirm bookkeeping (no broker needed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from roger.broker.channels import Confirms
from roger.broker.flow import Flow, Refused, Resume, answered, run

pytestmark = pytest.mark.unit


def test_a_flow_reads_top_down_over_answers_given_now_or_later() -> None:
    later: list[Resume] = []

    def two_steps() -> Flow[int]:
        a = yield answered(2)
        b = yield later.append  # answered later, as a broker would
        return int(a) * int(b)

    results: list[int] = []
    run(two_steps(), results.append)
    assert results == [] and len(later) == 1
    later[0](21)
    later[0](99)  # a second answer to the same step is ignored
    assert results == [42]


def test_a_refusal_is_raised_inside_the_flow_and_can_be_caught() -> None:
    def refused_then_recovers() -> Flow[str]:
        try:
            yield answered(Refused(405, "RESOURCE_LOCKED"))
        except Refused as exc:
            return f"refused {exc.code}"
        return "not refused"

    results: list[str] = []
    run(refused_then_recovers(), results.append)
    assert results == ["refused 405"]


def test_many_steps_answered_at_once_do_not_recurse() -> None:
    def many() -> Flow[int]:
        total = 0
        for _ in range(10_000):
            total += yield answered(1)
        return total

    results: list[int] = []
    run(many(), results.append)
    assert results == [10_000]


class _Channel:
    is_open = True

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.on_return: Any = None

    def add_on_return_callback(self, callback: Any) -> None:
        self.on_return = callback

    def basic_publish(
        self, _ex: str, key: str, _body: bytes, _props: Any, mandatory: bool = False
    ) -> None:
        assert mandatory, "every confirmed publish is mandatory"
        self.sent.append(key)


def _frame(name: str, tag: int, multiple: bool) -> Any:
    return SimpleNamespace(method=SimpleNamespace(NAME=name, delivery_tag=tag, multiple=multiple))


def test_confirms_match_acks_and_nacks_to_publishes_in_order() -> None:
    ch = _Channel()
    c = Confirms(ch)
    told: dict[str, bool] = {}
    for key in ("a", "b", "c", "d"):
        assert c.publish(key, b"", None, lambda ok, k=key: told.__setitem__(k, ok))
    c.on_confirm(_frame("Basic.Ack", 2, True))  # a and b
    assert told == {"a": True, "b": True} and c.pending() == 2
    c.on_confirm(_frame("Basic.Nack", 4, False))  # d alone
    c.on_confirm(_frame("Basic.Ack", 9, False))  # unknown tag: ignored
    assert told["d"] is False and c.pending() == 1
    c.fail_all()
    assert told["c"] is False and c.pending() == 0
    ch.is_open = False
    assert not c.publish("e", b"", None, lambda _ok: None)
    assert ch.sent == ["a", "b", "c", "d"]


def test_a_returned_publish_is_not_confirmed_to_its_source() -> None:
    """RabbitMQ acks a message that no queue took (after returning it, as it was
    mandatory): its source must hear False, and the others their own answers."""
    ch = _Channel()
    unroutable: list[str] = []
    c = Confirms(ch, unroutable.append)
    told: dict[str, bool] = {}
    for key in ("a", "gone", "b"):
        props = SimpleNamespace(message_id=f"id-{key}")
        assert c.publish(key, b"", props, lambda ok, k=key: told.__setitem__(k, ok))
    ch.on_return(
        ch, SimpleNamespace(routing_key="gone"), SimpleNamespace(message_id="id-gone"), b""
    )
    c.on_confirm(_frame("Basic.Ack", 3, True))
    assert told == {"a": True, "gone": False, "b": True}
    assert unroutable == ["gone"] and c.pending() == 0
