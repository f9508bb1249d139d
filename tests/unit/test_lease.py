"""Leader election (roger_operator.kube.lease): the pure rule, and two electors on one
Lease held by a fake at the I/O edge that, like the API server, refuses a write whose
resourceVersion is stale (409). The real API server runs it in tests/e2e/test_operator_ha.py
and tests/images/test_operator_image.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from roger_operator.kube import lease as lease_module
from roger_operator.kube.client import KubeError
from roger_operator.kube.lease import LeaderElector, Observed, decide

pytestmark = pytest.mark.unit


def spec(holder: str | None, duration: int = 8) -> dict[str, Any]:
    return {"holderIdentity": holder, "leaseDurationSeconds": duration}


def test_no_lease_a_free_one_or_our_own_is_taken() -> None:
    for found in (None, spec(None), spec(""), spec("me")):
        assert decide(found, "me", Observed(found, 100.0), 100.0, 8) == "take"


def test_anothers_lease_is_taken_only_once_unchanged_for_its_duration_by_our_clock() -> None:
    held = spec("other", duration=5)
    seen = Observed(held, 100.0)
    assert decide(held, "me", seen, 104.9, 8) == "wait"
    assert decide(held, "me", seen, 105.1, 8) == "take"  # its duration, not our 8


class LeaseStore:
    """The API server's part: one Lease, resourceVersions, 409 on a stale write."""

    PATH = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/lead"

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self.requests = 0

    def get(self, path: str) -> Any:
        assert path == self.PATH
        self._reachable()
        return copy.deepcopy(self.lease)

    def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        self._reachable()
        if method == "POST":
            if self.lease is not None:
                raise KubeError(409, "AlreadyExists")
        elif self.lease is None or body["metadata"]["resourceVersion"] != str(self.version):
            raise KubeError(409, "Conflict")
        self.version += 1
        self.lease = {
            **copy.deepcopy(body),
            "metadata": {**body["metadata"], "resourceVersion": str(self.version)},
        }
        return copy.deepcopy(self.lease)

    def _reachable(self) -> None:
        self.requests += 1
        if self.down:
            raise KubeError(0, "connection refused")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(lease_module.time, "monotonic", lambda: now[0])
    return now


def elector(store: LeaseStore, identity: str) -> LeaderElector:
    return LeaderElector(store, "ns", "lead", identity, lease_duration=8)  # type: ignore[arg-type]


def test_one_leader_and_the_standby_takes_over_only_after_the_lease_runs_out(
    clock: list[float],
) -> None:
    store = LeaseStore()
    a, b = elector(store, "a"), elector(store, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock[0] += 5
    assert a.try_acquire_or_renew()  # renewed: the record changed
    assert store.lease is not None and store.lease["spec"]["leaseTransitions"] == 0
    clock[0] += 5
    assert not b.try_acquire_or_renew()  # 5 s since b saw it change, not 8
    clock[0] += 8.5  # a died: nothing renews
    assert b.try_acquire_or_renew()
    assert store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew()  # a, back, is now the standby


def test_of_two_candidates_racing_for_an_expired_lease_only_one_wins(clock: list[float]) -> None:
    store = LeaseStore()
    assert elector(store, "old").try_acquire_or_renew()
    a, b = elector(store, "a"), elector(store, "b")
    assert not a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    clock[0] += 9
    before = store.get(LeaseStore.PATH)
    store.get = lambda path: copy.deepcopy(before)  # type: ignore[method-assign]
    wins = [a.try_acquire_or_renew(), b.try_acquire_or_renew()]  # both read one version
    assert wins == [True, False]  # b's write carried a stale resourceVersion: 409
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "a"


def test_a_leader_that_cannot_renew_gives_up_after_the_renew_deadline(
    clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LeaseStore()
    a = LeaderElector(store, "ns", "lead", "a", 8, renew_deadline=6, retry_period=2)  # type: ignore[arg-type]
    assert a.try_acquire_or_renew()
    store.down = True

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(lease_module.time, "sleep", sleep)
    a.renew_until_lost()
    assert clock[0] == 1006.0  # three failed renewals, 2 s apart: before the 8 s lease ends


def test_release_frees_the_lease_and_stops_renewing(clock: list[float]) -> None:
    store = LeaseStore()
    a, b = elector(store, "a"), elector(store, "b")
    assert a.try_acquire_or_renew()
    a.release()
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] is None
    assert not a.try_acquire_or_renew()  # never again after release
    assert b.try_acquire_or_renew()  # at once: no waiting for the lease to expire
    b.release()
    a.release()  # not the holder: leaves b's release alone
    assert store.lease["spec"]["holderIdentity"] is None
