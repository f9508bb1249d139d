"""Queue-argument migration (``roger_operator.rabbit.migration``) on the real broker, and the
RabbitMQ behaviour it rests on, on whichever broker the tier runs (3.10, or 4.0 with
``ROGER_TEST_RABBITMQ``): the answers below were the same on both when this was written,
and a broker version that changes one fails here first."""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from roger.broker import buried_store
from roger.core import naming
from roger_devtools.polling import eventually
from roger_operator.builders.model import PartitionSpec
from roger_operator.rabbit import migration
from roger_operator.rabbit.broker import Broker
from tests.brokers import selected
from tests.integration.support import management, operator_spec

pytestmark = pytest.mark.integration


def spec(partition_id: str, levels: tuple[int, ...], bound: int) -> PartitionSpec:
    return operator_spec(partition_id, ("q",), levels, bound)


@pytest.fixture
def broker(amqp_url: str, unique_name: str) -> Iterator[Broker]:
    b = Broker(selected().management_port, timeout=30.0, wait=120.0)  # a loaded machine
    yield b
    b.close()
    for name in list_queues(unique_name):
        with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
            conn.channel().queue_delete(name)
    for policy in management("/policies/%2F"):
        if unique_name in policy["name"]:
            management(f"/policies/%2F/{urllib.parse.quote(policy['name'], safe='')}", "DELETE")


def list_queues(prefix: str) -> list[str]:
    return [q["name"] for q in management("/queues/%2F") if q["name"].startswith(prefix)]


def applied(queue: str, bound: int, vhost: str = "/", policy: str | None = None) -> None:
    """Until the broker shows the policy's bound on the queue (applied asynchronously)."""
    path = f"/queues/{urllib.parse.quote(vhost, safe='')}/{queue}"

    def shown() -> bool:
        found = management(path)
        definition = found.get("effective_policy_definition") or {}
        return definition.get("max-length") == bound and policy in (None, found.get("policy"))

    eventually(shown, timeout=30, message=f"max-length {bound} applied to {queue} ({policy})")


def fill(amqp_url: str, queue: str, n: int) -> int:
    """Publish ``n`` messages (confirmed), return how many the queue keeps."""
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(n):
            ch.basic_publish("", queue, str(i).encode())
        return int(ch.queue_declare(queue, passive=True).method.message_count)


def test_rabbitmq_never_changes_a_bound_argument_in_place(amqp_url: str, unique_name: str) -> None:
    """Why the bound is a policy: a re-declare with another or no x-max-length is a 406,
    and a quorum queue has no if-empty delete (540, the connection closes)."""
    name = f"{unique_name}.probe"
    args = {"x-queue-type": "quorum", "x-max-length": 10}
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        conn.channel().queue_declare(name, durable=True, arguments=args)
        for other in ({"x-queue-type": "quorum"}, {**args, "x-max-length": 20}):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                conn.channel().queue_declare(name, durable=True, arguments=other)
            assert refused.value.reply_code == 406
            assert "x-max-length" in refused.value.reply_text
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            conn.channel().queue_delete(name, if_empty=True)
        assert closed.value.reply_code == 540


def test_the_bound_is_a_policy_that_changes_in_place(
    broker: Broker, amqp_url: str, unique_name: str
) -> None:
    buried = naming.buried_queue_name(unique_name, "q")
    assert broker.declare(amqp_url, spec(unique_name, (1,), 3)) == []
    assert "x-max-length" not in management(f"/queues/%2F/{buried}")["arguments"]
    applied(buried, 3)
    assert fill(amqp_url, buried, 5) == 3  # drop-head at the policy's bound
    assert broker.declare(amqp_url, spec(unique_name, (1,), 6)) == []  # raised in place
    applied(buried, 6)
    assert fill(amqp_url, buried, 5) == 6


def test_a_policy_already_in_place_is_not_written_again(
    broker: Broker, amqp_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each policy PUT makes the broker re-match every queue against every policy (seconds
    on a broker with many), so a re-declare (a new operator process, a retry after a
    timed-out PUT) reads the policy and writes only what differs."""
    calls: list[tuple[str, str]] = []
    real_call = broker.management_call

    def recorded(url: str, method: str, kind: str, name: str, body: object = None) -> int | None:
        calls.append((method, kind))
        return real_call(url, method, kind, name, body)

    monkeypatch.setattr(broker, "management_call", recorded)
    buried = naming.buried_queue_name(unique_name, "q")
    assert broker.declare(amqp_url, spec(unique_name, (1,), 3)) == []
    assert calls == [("PUT", "policies")]
    applied(buried, 3)
    broker.forget(amqp_url, unique_name)  # as a restarted operator: nothing remembered
    assert broker.declare(amqp_url, spec(unique_name, (1,), 3)) == []
    assert calls == [("PUT", "policies")]  # found in place: not written again
    broker.forget(amqp_url, unique_name)
    assert broker.declare(amqp_url, spec(unique_name, (1,), 4)) == []  # a new bound is
    assert calls == [("PUT", "policies")] * 2
    applied(buried, 4)


@pytest.mark.parametrize(("wanted", "kept"), [(5, 5), (20, 20)])
def test_a_legacy_bound_argument_is_lowered_by_the_policy_or_the_queue_replaced(
    broker: Broker, amqp_url: str, unique_name: str, wanted: int, kept: int
) -> None:
    """x-max-length 10 (an earlier version's .buried): with a policy, RabbitMQ applies the
    lower of the two, so 5 is the policy alone; 20 replaces the queue (its jobs filed into
    .buried.log first)."""
    buried = naming.buried_queue_name(unique_name, "q")
    legacy = {"x-queue-type": "quorum", "x-max-length": 10}
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        conn.channel().queue_declare(buried, durable=True, arguments=legacy)
    assert fill(amqp_url, buried, 2) == 2
    assert broker.declare(amqp_url, spec(unique_name, (1,), wanted)) == []
    args = management(f"/queues/%2F/{buried}")["arguments"]
    assert ("x-max-length" in args) is (wanted <= 10)
    if wanted > 10:  # replaced: the two jobs it held went to the log, not away
        assert fill(amqp_url, buried, 0) == 0
        with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
            assert len(buried_store.jobs(conn, unique_name, "q")) == 2
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        conn.channel().queue_purge(buried)
    applied(buried, wanted)
    assert fill(amqp_url, buried, 25) == kept


def listed(broker: Broker, amqp_url: str, partition: PartitionSpec, queue: str) -> None:
    """Wait until the management API lists ``queue`` (on a busy broker it serves a list
    cached for a few seconds, new queues missing)."""
    eventually(
        lambda: queue in (migration.observe(broker, amqp_url, partition) or {}),
        30,
        message=f"the management API lists {queue}",
    )


def test_retired_retry_queues_are_deleted_once_empty(
    broker: Broker, amqp_url: str, unique_name: str
) -> None:
    first = spec(unique_name, (1, 2), 10)
    assert broker.declare(amqp_url, first) == []
    old = naming.retry_queue_name(unique_name, "q", 2)
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        conn.channel().queue_delete(naming.queue_name(unique_name, "q"))  # no dead-letter target
        conn.channel().queue_declare(naming.queue_name(unique_name, "q"), durable=True,
                                     arguments={"x-queue-type": "quorum"})  # fmt: skip
    # The retiring queue existed before the edit, as the broker's listing says.
    listed(broker, amqp_url, first, old)
    second = dataclasses.replace(first, retry_levels=(1, 3))
    # As reconciles do: a listing that failed (a 5xx under load) is taken again next time.
    eventually(
        lambda: broker.declare(amqp_url, second) == [] and broker.retired(amqp_url, unique_name),
        60,
        message="the old retry queue noted as retired",
    )
    assert broker.retired(amqp_url, unique_name) == [old]
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()  # in the queue before the drain looks
        ch.basic_publish("", old, b"job", pika.BasicProperties(expiration="600000"))
    assert broker.drain_retired(amqp_url, second) == [old]  # a job waits in it: kept
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        conn.channel().queue_purge(old)
    assert broker.drain_retired(amqp_url, second) == []
    assert old not in list_queues(unique_name)
    assert naming.retry_queue_name(unique_name, "q", 3) in list_queues(unique_name)


def test_a_foreign_queue_is_refused_by_name(
    broker: Broker, amqp_url: str, unique_name: str
) -> None:
    main = naming.queue_name(unique_name, "q")
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        conn.channel().queue_declare(main, durable=True, arguments={"x-queue-type": "classic"})
    (refused,) = broker.declare(amqp_url, spec(unique_name, (1,), 10))
    assert main in refused and "'x-queue-type'" in refused


@pytest.fixture
def own_vhost(unique_name: str) -> Iterator[str]:
    """A vhost of the test's own: a vhost-wide policy must not reach other tests' queues."""
    quoted = urllib.parse.quote(unique_name, safe="")
    management(f"/vhosts/{quoted}", "PUT")
    grant = {"configure": ".*", "write": ".*", "read": ".*"}
    management(f"/permissions/{quoted}/guest", "PUT", body=grant)
    yield unique_name
    management(f"/vhosts/{quoted}", "DELETE")


def test_a_vhost_policy_bounds_every_default_buried_queue_with_one_policy(
    amqp_url: str, own_vhost: str
) -> None:
    """``--bound-policy vhost``: Partitions at the default bound share ``roger-bound`` (a
    new Partition writes no policy, so the broker re-matches nothing); one with another
    bound has its own above it; an own policy left by the per-queue mode is dropped once
    the shared one is in place, and a bound back at the default drops the own one."""
    url = amqp_url.rsplit("/", 1)[0] + "/" + urllib.parse.quote(own_vhost, safe="")
    vhost = urllib.parse.quote(own_vhost, safe="")
    per_queue = Broker(selected().management_port, timeout=30.0, wait=120.0)
    shared = Broker(selected().management_port, timeout=30.0, wait=120.0, vhost_bound=100)
    try:
        old = naming.buried_queue_name("old", "q")
        assert per_queue.declare(url, spec("old", (1,), 100)) == []
        applied(old, 100, own_vhost, f"roger-bound:{old}")
        for p, bound in (("old", 100), ("a", 100), ("b", 100), ("c", 7)):
            assert shared.declare(url, spec(p, (1,), bound)) == []
        policies = {p["name"]: p for p in management(f"/policies/{vhost}")}
        c = naming.buried_queue_name("c", "q")
        assert set(policies) == {"roger-bound", f"roger-bound:{c}"}
        assert policies["roger-bound"]["pattern"] == naming.BURIED_QUEUE_PATTERN
        for p in ("old", "a", "b"):
            applied(naming.buried_queue_name(p, "q"), 100, own_vhost, "roger-bound")
        applied(c, 7, own_vhost, f"roger-bound:{c}")
        assert fill(url, c, 9) == 7
        assert shared.declare(url, spec("c", (1,), 100)) == []
        assert {p["name"] for p in management(f"/policies/{vhost}")} == {"roger-bound"}
        applied(c, 100, own_vhost, "roger-bound")
        for name in (naming.queue_name("a", "q"), naming.retry_queue_name("a", "q", 1)):
            assert management(f"/queues/{vhost}/{name}").get("policy") in (None, "")
    finally:
        per_queue.close()
        shared.close()


def test_a_listing_that_failed_is_taken_again_by_the_next_declare(
    broker: Broker, amqp_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A management API that is on but silent once (a 5xx under load, a timeout) must not
    leave a retired retry queue unnoted for good: it would never be drained."""
    first = spec(unique_name, (1, 2), 10)
    assert broker.declare(amqp_url, first) == []
    old = naming.retry_queue_name(unique_name, "q", 2)
    listed(broker, amqp_url, first, old)
    second = dataclasses.replace(first, retry_levels=(1, 3))
    listing = broker.management_list
    monkeypatch.setattr(broker, "management_list", lambda *a, **k: None)
    assert broker.declare(amqp_url, second) == []
    assert broker.retired(amqp_url, unique_name) == []  # unknown yet
    assert not broker.declared(amqp_url, second)  # a refresh of a Ready Partition redoes it
    monkeypatch.setattr(broker, "management_list", listing)
    assert broker.declare(amqp_url, second) == []  # before: skipped, the spec was "done"
    assert broker.retired(amqp_url, unique_name) == [old]
    assert broker.declared(amqp_url, second) and not broker.declared(amqp_url, first)
