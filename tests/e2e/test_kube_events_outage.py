"""The observer against an API server that hangs, stops and restarts (a real kube-apiserver).

The observer talks to a kube-apiserver of its own (same binary, etcd and certificates as
the local cluster, another port; ``PrivateApiServer``), so freezing (SIGSTOP) or stopping
it does not disturb other tests that share the cluster's main API server. One private
server serves the module; each test leaves it running and answering.

- observe() never blocks while every API call hangs (latency over thousands of calls);
- the queue between the event loop and the emitter is bounded, its drops counted as
  ``queue_full``;
- a stop/restart mid-run: jobs go on, drops are counted, one warning per outage, one
  "resumed" line, Events resume;
- always: emitted + dropped == observed.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from roger.kube.client import KubeEventsApi
from roger.kube.metrics import kube_event_metrics
from roger.kube.observer import KubeEventsObserver
from roger_devtools.polling import eventually
from tests.e2e.kube_events_support import (
    PrivateApiServer,
    create_partition,
    lifecycle,
    list_events,
    make_observer,
)
from tests.helpers import Kubectl

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.exclusive("bounds observe() latency in microseconds: other tests' load skews it"),
]


@pytest.fixture(scope="module")
def _module_apiserver(
    kubeconfig: str, kubectl_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateApiServer]:
    server = PrivateApiServer(tmp_path_factory.mktemp("apiserver"), kubectl_bin)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_apiserver(_module_apiserver: PrivateApiServer) -> Iterator[PrivateApiServer]:
    server = _module_apiserver
    yield server
    server.thaw()  # whatever the test did (or failed to undo), leave it answering
    if not server.running():
        server.start()


def observer(server: PrivateApiServer, namespace: str, name: str, **kw: Any) -> KubeEventsObserver:
    """An observer writing through the private API server, quick to probe again."""
    kw.setdefault("probe_first", 0.2)
    kw.setdefault("probe_max", 1.0)
    return KubeEventsObserver(
        KubeEventsApi.from_environment(server.kubeconfig),
        namespace=namespace,
        name=name,
        partition=name,
        instance="e2e-pod-0",
        metrics=kube_event_metrics(CollectorRegistry()),
        **kw,
    )


def accounted(obs: KubeEventsObserver) -> None:
    """Every observation is either on an Event or counted as dropped, none twice."""
    stats = obs.stats()
    assert stats["pending"] == 0, stats
    assert obs.emitted + sum(stats["dropped"].values()) == obs.observed, stats


# A blocking observe() would wait for the client's timeouts (2 s connect, 5 s read); a
# deque append takes well under a microsecond. The bounds leave room for a busy machine.
MAX_OBSERVE = 0.25
P99_OBSERVE = 0.001


def test_observe_never_blocks_while_the_api_hangs(
    kubectl: Kubectl, namespace: str, private_apiserver: PrivateApiServer
) -> None:
    create_partition(kubectl, namespace, "tenant-hang")
    obs = observer(private_apiserver, namespace, "tenant-hang", queue_limit=1000)
    try:
        obs.observe(lifecycle("after_run", "tenant-hang", 0))
        eventually(lambda: obs.emitted == 1, timeout=30, message="first Event written")
        private_apiserver.freeze()
        latencies: list[float] = []
        saw_down = None
        # ~12 s of bursts: across the client's 5 s read timeout, the outage it starts and
        # the probes that hang again. A new job name per burst makes a new series, so the
        # emitter always has a create to (try to) write.
        for burst in range(24):
            for i in range(500):
                hook = "on_error" if i % 50 == 0 else "after_run"
                event = lifecycle(hook, "tenant-hang", burst * 500 + i, job=f"tests.jobs.J{burst}")  # type: ignore[arg-type]
                t0 = time.perf_counter()
                obs.observe(event)
                latencies.append(time.perf_counter() - t0)
            saw_down = saw_down or obs.stats()["down"]
            time.sleep(0.5)
        # The API really hung: the emitter's writes timed out and started an outage.
        assert saw_down == "timeout", obs.stats()
        private_apiserver.thaw()
        resumed_from = obs.emitted
        eventually(
            lambda: (
                obs.observe(lifecycle("on_buried", "tenant-hang", 99_999)) is None
                and obs.stats()["down"] is None
                and obs.emitted > resumed_from
            ),
            timeout=60,
            message="Events resumed after SIGCONT",
        )
    finally:
        private_apiserver.thaw()
        obs.close(10.0)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    print(
        f"\nobserve() while the API hung: {len(latencies)} calls, median "
        f"{statistics.median(latencies) * 1e6:.2f} µs, p99 {p99 * 1e6:.2f} µs, max "
        f"{latencies[-1] * 1e6:.0f} µs; dropped {obs.dropped}, writes {obs.writes}"
    )
    assert len(latencies) == 12_000
    assert latencies[-1] < MAX_OBSERVE, f"observe() blocked {latencies[-1]:.3f}s"
    assert p99 < P99_OBSERVE, f"p99 {p99 * 1e6:.0f} µs"
    assert obs.dropped.get("timeout", 0) > 0
    accounted(obs)


def test_queue_is_bounded_and_drops_count_as_queue_full(
    kubectl: Kubectl, namespace: str, private_apiserver: PrivateApiServer
) -> None:
    """The event loop's queue holds at most ``queue_limit``; the fold thread empties it once
    a tick (1 s here), so a burst beyond the limit within a tick is dropped as queue_full,
    while the emitter's I/O thread hangs on the frozen API server."""
    create_partition(kubectl, namespace, "tenant-full")
    obs = observer(private_apiserver, namespace, "tenant-full", queue_limit=100, tick=1.0)
    try:
        obs.observe(lifecycle("after_run", "tenant-full", 0))
        eventually(lambda: obs.emitted == 1, timeout=30, message="first Event written")
        private_apiserver.freeze()
        obs.observe(lifecycle("before_run", "tenant-full", 1, job="tests.jobs.New"))
        time.sleep(2.5)  # folded, and the create for the new series now hangs
        longest = 0
        t0 = time.perf_counter()
        for i in range(5_000):
            obs.observe(lifecycle("after_run", "tenant-full", 2 + i))
            longest = max(longest, len(obs._queue))
        burst = time.perf_counter() - t0
        assert longest <= 100
        # At most two folds can have run during the burst (one per 1 s tick).
        assert burst < 0.9, f"burst took {burst:.2f}s; the bound below assumes < 1 tick"
        full = eventually(
            lambda: obs.dropped.get("queue_full", 0), timeout=5, message="queue_full counted"
        )
        assert 5_000 - 200 <= full < 5_000
        private_apiserver.thaw()
    finally:
        private_apiserver.thaw()
        obs.close(15.0)
    print(f"\nqueue_full while the API hung: dropped {obs.dropped}, emitted {obs.emitted}")
    assert obs.observed == 5_002
    accounted(obs)


class JobStream(threading.Thread):
    """A stand-in for the worker's event loop: N jobs/s, each firing two hooks."""

    def __init__(self, observer: object, partition: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.observer = observer
        self.partition = partition
        self.rate = rate
        self.done = 0
        self.slowest = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.halt.is_set():
            i = self.done
            for hook in ("before_run", "on_error" if i % 10 == 0 else "after_run"):
                t0 = time.perf_counter()
                self.observer.observe(lifecycle(hook, self.partition, i))  # type: ignore[attr-defined]
                self.slowest = max(self.slowest, time.perf_counter() - t0)
            self.done += 1
            ahead = start + self.done / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


def test_apiserver_stopped_and_restarted(
    kubectl: Kubectl,
    namespace: str,
    private_apiserver: PrivateApiServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="roger.kube")
    create_partition(kubectl, namespace, "tenant-outage")
    registry = CollectorRegistry()
    obs = make_observer("tenant-outage", namespace, private_apiserver.kubeconfig, registry)
    obs.patch_interval = 1.0  # patch often, so writes after the restart are quick to see
    obs._aggregator.patch_interval = 1.0
    obs.probe_first, obs.probe_max = 0.2, 1.0  # many failed probes during the outage
    stream = JobStream(obs, "tenant-outage", rate=200.0)
    stream.start()

    def dropped() -> float:
        return sum(
            s.value
            for m in registry.collect()
            if m.name == "roger_kube_events_dropped"
            for s in m.samples
            if s.name == "roger_kube_events_dropped_total"
        )

    eventually(lambda: obs.emitted > 100, timeout=30, message="events flowing")
    writes_at_stop = sum(obs.writes.values())
    private_apiserver.stop()
    down_at = stream.done
    eventually(lambda: dropped() > 0, timeout=30, message="drops counted")
    time.sleep(3)
    assert stream.done > down_at + 300, "jobs stalled while the API server was down"
    cause = obs.stats()["down"]
    assert cause in ("unreachable", "timeout"), cause
    emitted_while_down = obs.emitted
    failed_attempts = sum(obs.writes.values()) - writes_at_stop

    private_apiserver.start()
    eventually(
        lambda: obs.stats()["down"] is None and obs.emitted > emitted_while_down + 100,
        timeout=60,
        message="events resumed after the restart",
    )
    stream.halt.set()
    stream.join(5)
    obs.close(10.0)

    # One warning for the whole outage, however many probes failed; one line on resume.
    mine = [r.getMessage() for r in caplog.records if r.name == "roger.kube"]
    suspended = [m for m in mine if "suspended" in m and "tenant-outage" in m]
    resumed = [m for m in mine if "resumed" in m and "tenant-outage" in m]
    assert len(suspended) == 1, suspended
    assert len(resumed) == 1, resumed
    assert failed_attempts >= 3, f"only {failed_attempts} writes tried during the outage"

    stats = obs.stats()
    observed = 2 * stream.done
    assert obs.observed == observed  # every hook of every job reached observe()
    assert obs.emitted + sum(stats["dropped"].values()) == observed
    assert set(stats["dropped"]) <= {"unreachable", "timeout", "shutdown"}
    assert stream.slowest < 0.05, f"observe() blocked for {stream.slowest * 1e3:.1f} ms"
    events = list_events(kubectl, namespace, "tenant-outage")
    assert sum(e["count"] for e in events) == obs.emitted
    print(
        f"\n{stream.done} jobs; emitted {obs.emitted}, dropped {stats['dropped']}, "
        f"writes {stats['writes']}, Event objects {len(events)}, "
        f"slowest observe() {stream.slowest * 1e6:.0f} µs; {failed_attempts} failed writes "
        "during the outage, logged once"
    )
