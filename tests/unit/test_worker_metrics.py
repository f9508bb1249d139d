"""The worker's metrics start at 0 for known label sets and follow pause/resume."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from roger.core import metric_names as names
from roger.metrics.worker import WorkerMetrics

pytestmark = pytest.mark.unit


def _sample(m: WorkerMetrics, name: str, **labels: str) -> float | None:
    value = m.registry.get_sample_value(name, {"partition": "p", **labels})
    return None if value is None else float(value)


def test_known_series_start_at_zero_and_paused_follows() -> None:
    m = WorkerMetrics("p")
    assert _sample(m, names.BROKER_RECONNECTS + "_total") == 0
    m.prepare(["default", "mail"])
    assert _sample(m, names.QUEUE_PAUSED, queue="mail") == 0
    assert _sample(m, names.MESSAGES_PARKED + "_total", queue="mail", reason="not_json") == 0
    assert _sample(m, names.JOBS_RUNNING, queue="default") == 0
    m.queue_paused("mail", True)
    assert _sample(m, names.QUEUE_PAUSED, queue="mail") == 1
    m.queue_paused("mail", False)
    assert _sample(m, names.QUEUE_PAUSED, queue="mail") == 0
    m.reconnected()
    assert _sample(m, names.BROKER_RECONNECTS + "_total") == 1
    assert b"roger_queue_paused{" in generate_latest(m.registry)


# Target labels Prometheus (and the Prometheus Operator) set on every scraped series: a
# metric label of the same name would arrive renamed to exported_<name>.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}


def _label_names(registry: object) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for family in registry.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_the_lifecycle_contract_and_no_label_prometheus_owns() -> None:
    from roger.core.lifecycle import LifecycleEvent

    m = WorkerMetrics("p")
    m.prepare(["default"])
    fields = {f: "x" for f in LifecycleEvent._fields}
    m.observe(
        LifecycleEvent(**{**fields, "queue": "default", "job_name": "a:b", "hook": "after_run"})
    )
    m.outcome("default", "a:b", "retried", 0.1)
    m.callback_failed("cb:C", "on_error", "raised")
    labels = _label_names(m.registry)
    assert labels[names.LIFECYCLE_EVENTS + "_total"] == {"partition", "queue", "job_name", "hook"}
    assert labels[names.JOB_OUTCOMES + "_total"] == {"partition", "queue", "job_name", "outcome"}
    assert (
        _sample(
            m, names.LIFECYCLE_EVENTS + "_total", queue="default", job_name="a:b", hook="after_run"
        )
        == 1
    )
    clashing = {name: ls & TARGET_LABELS for name, ls in labels.items() if ls & TARGET_LABELS}
    assert not clashing


def test_operator_metrics_own_no_target_label() -> None:
    from prometheus_client import REGISTRY

    from roger_operator import metrics

    metrics.PARTITIONS.labels("shop", "Ready").set(1)
    labels = _label_names(REGISTRY)
    assert labels[names.OPERATOR_PARTITIONS] == {"partition_namespace", "phase"}
    roger = {n: ls for n, ls in labels.items() if n.startswith("roger_")}
    assert roger and not {n: ls & TARGET_LABELS for n, ls in roger.items() if ls & TARGET_LABELS}


def test_worker_info_reports_the_installed_version_and_process_collectors() -> None:
    from importlib.metadata import version

    m = WorkerMetrics("p")
    info = m.registry.get_sample_value(
        names.WORKER_INFO + "_info", {"partition": "p", "version": version("roger-k8s")}
    )
    assert info == 1
    text = generate_latest(m.registry).decode()
    for series in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"):
        assert f"\n{series}" in text, series


def test_the_per_job_series_expose_what_prometheus_client_s_own_metrics_would() -> None:
    """Lifecycle events, outcomes, retries and durations are plain counts the loop moves
    without locks (roger.metrics.hot); a scrape must not tell them from Counter/Histogram."""
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.parser import text_string_to_metric_families

    from roger.core.lifecycle import LifecycleEvent
    from roger.metrics.worker import DURATION_BUCKETS

    ours = WorkerMetrics("p")
    ref = CollectorRegistry()
    p = ["partition"]
    lifecycle = Counter(
        names.LIFECYCLE_EVENTS, "Hooks fired", [*p, "queue", "job_name", "hook"], registry=ref
    )
    outcomes = Counter(
        names.JOB_OUTCOMES, "Settled jobs", [*p, "queue", "job_name", "outcome"], registry=ref
    )
    retries = Counter(
        names.JOB_RETRIES, "Retries published", [*p, "queue", "job_name"], registry=ref
    )
    duration = Histogram(
        names.JOB_DURATION,
        "Job run time",
        [*p, "queue", "job_name", "outcome"],
        buckets=DURATION_BUCKETS,
        registry=ref,
    )
    fields = {f: "x" for f in LifecycleEvent._fields}
    # every bound exactly (a bound counts as inside its bucket), between, below, above
    durations = [*DURATION_BUCKETS, 0.0, 0.0004, 0.02, 7.5, 1800.5, 86400.0]
    for i, took in enumerate(durations):
        queue, job = ("default", "a:b") if i % 3 else ("mail", "c:d")
        outcome = ("succeeded", "retried", "buried")[i % 3]
        for hook in ("before_run", "after_run" if i % 2 else "on_error"):
            event = {**fields, "queue": queue, "job_name": job, "hook": hook}
            ours.observe(LifecycleEvent(**event))
            lifecycle.labels("p", queue, job, hook).inc()
        ours.outcome(queue, job, outcome, None if i == 4 else took)
        outcomes.labels("p", queue, job, outcome).inc()
        if outcome == "retried":
            retries.labels("p", queue, job).inc()
        if i != 4:
            duration.labels("p", queue, job, outcome).observe(took)

    def exposed(
        registry: object, family: str
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = generate_latest(registry).decode()  # type: ignore[arg-type]
        found = {}
        for f in text_string_to_metric_families(text):
            if f.name == family:
                assert found == {}, "one family"
                found = {
                    (s.name, tuple(sorted(s.labels.items()))): (
                        -1.0 if s.name.endswith("_created") else s.value
                    )
                    for s in f.samples
                }
        return found

    def comments(registry: object, family: str) -> list[str]:  # HELP and TYPE
        text = generate_latest(registry).decode()  # type: ignore[arg-type]
        return [line for line in text.splitlines() if line.startswith("# ") and family in line]

    families = (names.LIFECYCLE_EVENTS, names.JOB_OUTCOMES, names.JOB_RETRIES, names.JOB_DURATION)
    for family in families:
        want = exposed(ref, family)
        assert want and exposed(ours.registry, family) == want, family
        assert comments(ours.registry, family) == comments(ref, family)


def test_a_scrape_while_the_loop_adds_series_never_fails() -> None:
    """The loop adds series without a lock while the metrics server thread scrapes."""
    import sys
    import threading

    m = WorkerMetrics("p")
    done = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not done.is_set():
                for hot in (m.outcomes, m.duration):
                    list(hot.collect())
        except BaseException as exc:  # reported below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as CPython allows
    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(6_000):  # a new series each time: the scrape's copies race them
            m.outcome("q", f"job:{i}", ("succeeded", "retried")[i % 2], i / 1000)
    finally:
        done.set()
        scraper.join()
        sys.setswitchinterval(old)
    assert not errors
    total = m.registry.get_sample_value(
        names.JOB_DURATION + "_count",
        {"partition": "p", "queue": "q", "job_name": "job:5999", "outcome": "retried"},
    )
    assert total == 1
