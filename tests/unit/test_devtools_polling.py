"""The one poll loop of tests and benchmarks: what it returns, retries and reports."""

from __future__ import annotations

import time

import pytest

from roger_devtools.polling import GiveUp, eventually

pytestmark = pytest.mark.unit


def test_returns_the_first_truthy_value_and_counts_errors_as_not_yet() -> None:
    answers = iter([None, ValueError("not there yet"), [], ["found"]])

    def check() -> list[str] | None:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert eventually(check, timeout=5, interval=0.01) == ["found"]


def test_a_timeout_names_what_it_waited_for_and_the_last_error() -> None:
    def check() -> bool:
        raise KeyError("no such queue")

    with pytest.raises(AssertionError, match=r"waiting for the queue; last: KeyError\('no such"):
        eventually(check, timeout=0.2, interval=0.01, message="the queue")


def test_give_up_fails_at_once_instead_of_at_the_deadline() -> None:
    calls = []

    def check() -> bool:
        calls.append(1)
        raise GiveUp("the worker exited")

    started = time.monotonic()
    with pytest.raises(GiveUp, match="the worker exited"):
        eventually(check, timeout=30)
    assert time.monotonic() - started < 1 and len(calls) == 1
