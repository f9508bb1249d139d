"""What the sweep before `make test` deletes: only this checkout's leftovers."""

from __future__ import annotations

import pytest

from roger_devtools.broker_sweep import leftovers

pytestmark = pytest.mark.unit

NAMES = [
    "t-startup-race-1a2b3c-default",  # this checkout (tag t), no stream
    "tb-test-x-9f9f9f-default.retry.1",  # its broker stream
    "tk-test-y-0a0a0a.control",  # its kube stream
    "tc-test-z-0b0b0b-default",  # its clock stream
    "ann-test-x-1a1a1a-default",  # another checkout (tag ann)
    "annb-test-x-1a1a1a-default",
    "p-0123abcd-default",  # a Partition that is gone
    "p-0123abcd.control",
    "roger.claim.p-0123abcd",
    "roger.claim.queue.p-0123abcd-default",
    "roger.claim.queue.tb-test-x-9f9f9f-default",
    "p-feedbeef-default",  # a Partition that still exists
    "roger.claim.p-feedbeef",
    "p-0123abcdef-default",  # not a partition id of the tests (10 hex digits)
    "demo-default",
    "bench-queue",
]


def test_this_checkouts_names_and_gone_partitions_only() -> None:
    assert leftovers(NAMES, "t", live={"p-feedbeef"}) == [
        "t-startup-race-1a2b3c-default",
        "tb-test-x-9f9f9f-default.retry.1",
        "tk-test-y-0a0a0a.control",
        "tc-test-z-0b0b0b-default",
        "p-0123abcd-default",
        "p-0123abcd.control",
        "roger.claim.p-0123abcd",
        "roger.claim.queue.p-0123abcd-default",
        "roger.claim.queue.tb-test-x-9f9f9f-default",
    ]


def test_partitions_are_kept_when_the_cluster_cannot_say_which_exist() -> None:
    assert leftovers(NAMES, "ann", live=None) == [
        "ann-test-x-1a1a1a-default",
        "annb-test-x-1a1a1a-default",
    ]
