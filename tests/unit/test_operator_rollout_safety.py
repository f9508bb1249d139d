"""Worker pods have probes and surge-only rollouts; why new pods cannot run becomes the
Partition's Degraded condition (a pure decision from the pods' status)."""

from __future__ import annotations

from typing import Any

import pytest

from roger_operator.builders import status as st
from roger_operator.builders.model import parse_partition
from tests.unit.test_operator_builders import children, conds, dep, partition

pytestmark = pytest.mark.unit


def worker_deployment(**spec: Any) -> dict[str, Any]:
    manifests, _ = children(partition(**spec))
    found: dict[str, Any] = manifests["Deployment"]
    return found


def test_worker_container_is_probed_on_healthz_and_readyz() -> None:
    dep_ = worker_deployment()
    (c,) = dep_["spec"]["template"]["spec"]["containers"]
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics", "scheme": "HTTP"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["name"] for p in c["ports"]} == {"metrics"}  # the probes' named port exists
    # startup allows a slow start before liveness counts; liveness is never hair-trigger
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 60
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] >= 30
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize(
    ("worker", "grace"),
    [({}, 30), ({"shutdownTimeout": 42.5}, 62), ({"terminationGracePeriodSeconds": 3}, 11)],
)
def test_grace_period_is_above_the_shutdown_timeout(worker: dict[str, Any], grace: int) -> None:
    base = {"image": "img", "replicas": 2}
    pod = worker_deployment(worker={**base, **worker})["spec"]["template"]["spec"]
    shutdown = worker.get("shutdownTimeout", 10)
    assert pod["terminationGracePeriodSeconds"] > shutdown
    assert pod["terminationGracePeriodSeconds"] == grace


def test_rollouts_only_surge() -> None:
    spec = worker_deployment()["spec"]
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert spec["minReadySeconds"] >= 5  # kwok's or a flapping probe's moment of Ready
    assert spec["progressDeadlineSeconds"] > spec["minReadySeconds"]


def pod(name: str, **container: Any) -> dict[str, Any]:
    status = {"name": "worker", "ready": False, "restartCount": 0, **container}
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "worker", "image": "repo/img:2"}]},
        "status": {"containerStatuses": [status]},
    }


RUNNING = {"ready": True, "state": {"running": {}}}
IMPORT_LOG = (
    "2026 INFO roger.kube: Kubernetes Events on\n"
    "roger: cannot import jobs module 'myapp.jobz': ModuleNotFoundError: No module named "
    "'myapp.jobz'\n"
)
REFUSED_LOG = (
    'ERROR roger.worker: RabbitMQ refused the queue declarations: (406, "PRECONDITION_FAILED '
    "- inequivalent arg 'x-max-length' for queue 'a-default.buried' in vhost '/': received "
    "the value '20' of type 'signedint' but current is the value '10' of type 'long'\")\n"
)


def crashed(message: str, code: int = 2) -> dict[str, Any]:
    return {
        "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": code, "reason": "Error", "message": message}},
    }


def test_pod_problems_name_the_cause() -> None:
    (p,) = st.pod_problems([pod("a-1", **crashed(IMPORT_LOG))])
    assert p.reason == "JobsImportFailed" and not p.blocking
    assert "myapp.jobz" in p.message and "ModuleNotFoundError" in p.message

    (p,) = st.pod_problems([pod("a-1", **crashed(REFUSED_LOG, 1))])
    assert p.reason == "QueueArgumentsRefused"
    assert "x-max-length" in p.message and "a-default.buried" in p.message

    pulling = {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}}}
    (p,) = st.pod_problems([pod("a-1", **pulling)])
    assert p.reason == "ImagePullFailed" and "repo/img:2" in p.message

    (p,) = st.pod_problems([pod("a-1", **crashed("Traceback\nRuntimeError: boom\n"))])
    assert p.reason == "WorkerCrashing" and "RuntimeError: boom" in p.message


def test_pods_that_run_or_go_are_no_problem() -> None:
    recovered = {**crashed(IMPORT_LOG), **RUNNING}  # crashed once, ready now
    leaving = pod("a-2", **crashed(IMPORT_LOG))
    leaving["metadata"]["deletionTimestamp"] = "T"
    starting = pod("a-3", state={"waiting": {"reason": "ContainerCreating"}})
    clean_exit = pod("a-4", lastState={"terminated": {"exitCode": 0}})
    assert st.pod_problems([pod("a-1", **recovered), leaving, starting, clean_exit]) == []


def test_a_bad_rollout_is_degraded_and_its_revert_ready_again() -> None:
    spec = parse_partition(partition())
    old = [pod("a-1", **RUNNING), pod("a-2", **RUNNING)]
    bad = pod("a-3", **crashed(IMPORT_LOG))
    stuck = st.compute_status(
        None, st.Observation(spec, deployment=dep(3, 2, 1), pods=[*old, bad]), "T1"
    )
    assert conds(stuck)["Degraded"] == ("True", "JobsImportFailed")
    assert conds(stuck)["Ready"] == ("False", "JobsImportFailed")
    assert conds(stuck)["Progressing"] == ("True", "RollingOut")
    assert stuck["readyReplicas"] == 2
    reverted = st.compute_status(stuck, st.Observation(spec, deployment=dep(2, 2), pods=old), "T2")
    assert conds(reverted)["Degraded"] == ("False", "AsExpected")
    assert conds(reverted)["Ready"] == ("True", "Ready")
    # derived from the pods each time: a refresh never carries them over
    assert "JobsImportFailed" in st.DERIVED_REASONS and "ImagePullFailed" in st.DERIVED_REASONS


def test_refused_queue_arguments_block_the_rollout() -> None:
    spec = parse_partition(partition())
    problem = st.queue_arguments_problem(["queue a-default.buried: PRECONDITION_FAILED - "
                                          "inequivalent arg 'x-max-length'"])  # fmt: skip
    assert problem.blocking
    s = st.compute_status(
        None, st.Observation(spec, problems=(problem,), deployment=dep(2, 2)), "T"
    )
    assert conds(s)["Degraded"] == ("True", "QueueArgumentsRefused")
    assert conds(s)["Ready"] == ("False", "QueueArgumentsRefused")
    assert "x-max-length" in st.condition(s, "Degraded")["message"]  # type: ignore[index]
