"""A change kopf hands over twice is reconciled once (``partition.already_handled``).

kopf runs the create handler again on an older body when the watch brings its own patch
back later than its consistency wait; the second run would apply, declare and write the
same things again. Here the reconcile itself is replaced by a recorder (its I/O is proven by
the e2e tests): what is under test is only when it runs.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest

from roger_operator.handlers import partition
from roger_operator.handlers.context import Context
from tests.unit.test_operator_builders import partition as builders_partition

pytestmark = pytest.mark.unit


class Recorder:
    """Stands for ``partition._reconcile``: records each run, ends clean or not as told."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, int]] = []
        self.clean = True
        self.fail = False

    def __call__(self, _ctx: Context, _key: Any, body: Any) -> bool:
        self.runs.append(partition.change_of(body))
        if self.fail:
            raise RuntimeError("the API server said no")
        return self.clean


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(partition, "_reconcile", recorder)
    return recorder


def context() -> Context:
    return Context(kube=cast(Any, None), broker=cast(Any, None))


def test_the_same_change_again_is_skipped_and_a_new_generation_is_not(runs: Recorder) -> None:
    ctx, body = context(), builders_partition()
    partition.reconcile(ctx, body, "change")
    partition.reconcile(ctx, copy.deepcopy(body), "change")  # kopf's second call
    assert len(runs.runs) == 1
    edited = copy.deepcopy(body)
    edited["metadata"]["generation"] += 1
    partition.reconcile(ctx, edited, "change")
    assert len(runs.runs) == 2
    partition.reconcile(ctx, body, "change")  # the older spec, handed over late: stale
    assert runs.runs[-1] == partition.change_of(edited) and len(runs.runs) == 2


@pytest.mark.parametrize("trigger", ["repair", "drift", "callback", "refresh", "deployment"])
def test_every_other_trigger_runs_for_the_same_change(runs: Recorder, trigger: str) -> None:
    ctx, body = context(), builders_partition()
    partition.reconcile(ctx, body, "change")
    partition.reconcile(ctx, body, trigger)
    assert len(runs.runs) == 2


def test_a_reconcile_with_a_problem_or_an_error_runs_again(runs: Recorder) -> None:
    ctx, body = context(), builders_partition()
    runs.clean = False  # e.g. the broker was busy
    partition.reconcile(ctx, body, "change")
    partition.reconcile(ctx, body, "change")
    assert len(runs.runs) == 2
    runs.clean = True
    partition.reconcile(ctx, body, "change")
    runs.fail = True  # a later reconcile of the same change failed: nothing is remembered
    with pytest.raises(RuntimeError):
        partition.reconcile(ctx, body, "repair")
    runs.fail = False
    partition.reconcile(ctx, body, "change")
    assert len(runs.runs) == 5


def test_a_partition_created_anew_with_the_same_name_is_reconciled(runs: Recorder) -> None:
    ctx, body = context(), builders_partition()
    partition.reconcile(ctx, body, "change")
    anew = copy.deepcopy(body)
    anew["metadata"]["uid"] = "created-anew-with-the-same-name"
    partition.reconcile(ctx, anew, "change")
    assert len(runs.runs) == 2
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    ctx.forget(key)  # its finalizer ran
    partition.reconcile(ctx, anew, "change")
    assert len(runs.runs) == 3
