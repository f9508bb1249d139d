"""A leaving job's queue key is freed before its delivery is settled (on the fakes).

Settled first, a worker dying before the key is freed would leave the key held for days:
the broker would never deliver the job again, and nothing else frees it. Freed first, such
a death only makes the broker deliver the job again (a rerun the crash explains).
"""

from __future__ import annotations

import pytest

from roger.worker.partition import KEY_FIRST_WITHIN
from tests.unit.runtime_fakes import Rig

pytestmark = pytest.mark.unit


def keyed_rig(job_id: str, key: str = "k") -> Rig:
    rig = Rig(queues={"default": 2})
    rig.up()
    assert rig.partition.take_queue_key(key, job_id)  # as the client did at enqueue
    return rig


def test_a_success_is_acked_only_once_its_queue_key_is_free() -> None:
    rig = keyed_rig("a")
    tag = rig.enqueue("a", queue_key="k")
    rig.held_answers = []  # the broker has not answered the release yet
    rig.succeed("a")
    assert rig.channel().acked() == set()
    rig.release_answers()
    assert rig.partition.queue_keys == {}
    assert rig.channel().acked() == {tag}


def test_a_burial_is_published_only_once_its_queue_key_is_free() -> None:
    rig = keyed_rig("a")
    tag = rig.enqueue("a", "tests.jobs.basic:fails_once_not_retryable", queue_key="k")
    rig.held_answers = []
    rig.fail("a")
    assert rig.link.unconfirmed() == 0 and rig.channel().acked() == set()
    rig.release_answers()
    assert rig.partition.queue_keys == {}
    [burial] = rig.link.confirm_all()
    assert burial.routing_key.endswith(".buried")
    rig.loop.run()
    assert rig.channel().acked() == {tag}


def test_jobs_without_a_queue_key_or_not_leaving_are_settled_at_once() -> None:
    rig = keyed_rig("b")
    rig.held_answers = []
    tag_a = rig.enqueue("a")
    rig.succeed("a")
    tag_b = rig.enqueue("b", "tests.jobs.basic:flaky", queue_key="k")
    rig.fail("b")  # retried: it stays in the partition, and so does its key
    assert rig.channel().acked() == {tag_a}
    rig.link.confirm_all()  # the retry's publish
    rig.loop.run()
    assert rig.channel().acked() == {tag_a, tag_b}
    assert rig.partition.queue_keys == {"k": "b"}


def test_a_release_that_does_not_answer_holds_the_job_up_only_so_long() -> None:
    """The key's lock is held elsewhere (the release goes on): the job is acked after
    ``KEY_FIRST_WITHIN``, and once, whatever answers later."""
    rig = keyed_rig("a")
    tag = rig.enqueue("a", queue_key="k")
    rig.held_answers = []
    rig.succeed("a")
    rig.loop.run(KEY_FIRST_WITHIN - 0.1)
    assert rig.channel().acked() == set()
    rig.loop.run(0.2)
    assert rig.channel().acked() == {tag}
    acks = list(rig.channel().acks)
    rig.release_answers()
    assert rig.partition.queue_keys == {}
    assert rig.channel().acks == acks  # not acked a second time


def test_a_delivery_that_died_while_its_key_was_freed_is_acked_nowhere() -> None:
    rig = keyed_rig("a")
    rig.enqueue("a", queue_key="k")
    old = rig.channel()
    rig.held_answers = []
    rig.succeed("a")
    rig.link.drop()
    rig.release_answers()
    rig.loop.run(KEY_FIRST_WITHIN + 1)
    assert old.acks == []  # the broker delivers it again; the next attempt frees the key
    rig.link.up()
    rig.loop.run()
    assert rig.channel().acks == []


def test_a_stopping_worker_waits_for_the_key_then_acks_before_it_closes() -> None:
    """A graceful stop must not leave a finished job unacked (it would run again)."""
    rig = keyed_rig("a")
    tag = rig.enqueue("a", queue_key="k")
    rig.worker.shutdown()
    rig.loop.run()
    rig.held_answers = []
    rig.succeed("a")
    assert not rig.link.closed  # its settlement waits for the key
    rig.release_answers()
    assert rig.channel().acked() == {tag}
    assert rig.link.closed
