"""An operator told to stop starts no more work and lets go of none it holds.

kopf waits for every handler it has handed to a thread, including those queued when the
stop came; forty Partitions deleted at once kept a stopped operator alive 45-100 s (longer
than a Pod's grace period). After ``Context.stop`` no broker call starts (``Stopping``),
handlers end in one line, and a finalizer past its deadlines still never gives up on its
queues because of the stop: the next operator resumes the deletion.
"""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any, cast

import kopf
import pytest

from roger_devtools.polling import eventually
from roger_operator import handlers
from roger_operator.handlers import deletion
from roger_operator.handlers.context import Context
from roger_operator.rabbit import Broker, Stopping
from roger_operator.rabbit.lanes import Lanes
from tests.unit.test_operator_builders import partition as builders_partition

pytestmark = pytest.mark.unit


def test_stopped_lanes_drop_queued_calls_and_wake_every_caller_at_once() -> None:
    lanes = Lanes(lambda exc: False, threads=1, wait=30.0)
    running, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow() -> str:
        running.set()
        release.wait(10)
        ran.append("slow")
        return "slow"

    def queued() -> str:
        ran.append("queued")
        return "queued"

    outcomes: dict[str, object] = {}

    def call(name: str, fn: Any) -> None:
        try:
            outcomes[name] = lanes.call("broker", fn)
        except Exception as exc:
            outcomes[name] = exc

    first = threading.Thread(target=call, args=("slow", slow))
    first.start()
    assert running.wait(5)  # the lane's one thread runs ``slow``
    second = threading.Thread(target=call, args=("queued", queued))
    second.start()
    eventually(lambda: lanes._lanes["broker"].pending == 2, 5, message="queued behind")
    started = time.monotonic()
    lanes.shutdown()
    second.join(5)
    assert isinstance(outcomes["queued"], Stopping)
    assert time.monotonic() - started < 1.0  # woken, not left to its 30 s wait
    with pytest.raises(Stopping):
        lanes.call("another broker", queued)
    first.join(5)
    assert isinstance(outcomes["slow"], Stopping)  # its caller is not kept waiting either
    release.set()
    eventually(lambda: ran == ["slow"], 5, message="the running call ends in its thread")
    time.sleep(0.1)
    assert ran == ["slow"]  # the dropped one never ran


def test_a_caller_waiting_for_a_hung_call_is_woken_by_the_stop() -> None:
    lanes = Lanes(lambda exc: False, threads=1, wait=30.0)
    release = threading.Event()
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(lanes.call("hung broker", release.wait, 10))
        except Exception as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    eventually(lambda: lanes._lanes["hung broker"].running, 5, message="the call runs")
    started = time.monotonic()
    lanes.shutdown()
    caller.join(5)
    assert isinstance(outcome[0], Stopping)
    assert time.monotonic() - started < 1.0  # not its 30 s wait, nor the call's 10 s
    release.set()


def test_a_stopped_broker_refuses_calls_without_connecting() -> None:
    broker = Broker(management_port=None)
    broker.stop_calls()
    for call in (
        lambda: broker.run("amqp://guest:guest@127.0.0.1:1/", lambda channel: None),
        lambda: broker.delete_queue("amqp://guest:guest@127.0.0.1:1/", "q"),
        lambda: broker.management_get("amqp://guest:guest@127.0.0.1:1/", "queues", "q", ""),
    ):
        with pytest.raises(Stopping):
            call()
    broker.close()


class RecordingKube:
    def __init__(self) -> None:
        self.events: list[str] = []

    def event(self, body: Any, *, reason: str, message: str, type_: str) -> None:
        self.events.append(reason)


def test_a_finalizer_past_its_deadlines_never_gives_up_because_of_a_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = RecordingKube()
    ctx = Context(kube=cast(Any, kube), broker=cast(Any, None), delete_broker_timeout=1.0)
    body = builders_partition()
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    body["metadata"]["deletionTimestamp"] = long_ago.strftime("%Y-%m-%dT%H:%M:%SZ")

    def stopped_midway(_ctx: Context, _body: Any) -> None:
        raise Stopping

    monkeypatch.setattr(deletion, "delete", stopped_midway)
    with pytest.raises(Stopping):
        handlers.finalize(ctx, body)
    with pytest.raises(kopf.TemporaryError, match="stopping"), handlers.while_running(ctx):
        handlers.finalize(ctx, body)
    assert kube.events == []  # no "queues left in RabbitMQ": the finalizer stays

    def unexpected(_ctx: Context, _body: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(deletion, "delete", unexpected)  # the give-up path still works
    handlers.finalize(ctx, body)
    assert kube.events == [deletion.KEPT]


def test_handlers_that_start_after_the_stop_do_nothing() -> None:
    ctx = Context(kube=cast(Any, None), broker=cast(Any, Broker(management_port=None)))
    ran: list[str] = []
    with handlers.while_running(ctx):
        ran.append("before the stop")
    ctx.stop()
    with pytest.raises(kopf.TemporaryError, match="stopping"), handlers.while_running(ctx):
        ran.append("after the stop")
    assert ran == ["before the stop"]
    ctx.broker.close()
