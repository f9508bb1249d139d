"""The operator's worker Pod as `podman run` flags (roger_devtools.podman), which the image
tests rely on: every security setting becomes a flag, and an unknown one is refused."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from roger_devtools.podman import Untranslatable, memory_bytes, podman_run
from roger_operator.builders.manifests import WORKER_CONTAINER, build_children
from roger_operator.builders.model import CONFIG_DIR, parse_partition

pytestmark = pytest.mark.unit


def _pod(**worker: Any) -> dict[str, Any]:
    spec = parse_partition(
        {
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "amqp": {"secretRef": {"name": "rabbitmq"}},
                "worker": {"image": "roger-worker:1", **worker},
                "queues": [{"name": "default"}],
            },
        }
    )
    children, _ = build_children(spec, [])
    deployment = next(c for c in children if c["kind"] == "Deployment")
    return {
        "metadata": {"name": "p-1", "namespace": "ns"},
        "spec": deployment["spec"]["template"]["spec"],
    }


def _run(pod: dict[str, Any]) -> list[str]:
    # The config ConfigMap's name carries the config's digest (builders.config_maps).
    [config_map] = [v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v]
    return podman_run(
        pod,
        WORKER_CONTAINER,
        name="c",
        secrets={"rabbitmq": {"url": "amqp://x"}},
        config_maps={config_map: {"worker.yaml": "partition: p\n"}},
        pod_dir="/pods/p-1",
    ).argv


def test_the_workers_security_settings_become_flags() -> None:
    argv = _run(_pod(resources={"limits": {"memory": "64Mi", "cpu": "500m"}}))
    joined = " ".join(argv)
    assert "--user 65532:65532" in joined and "--group-add 65532" in joined
    assert "--read-only --read-only-tmpfs=false" in joined
    assert "--cap-drop ALL" in joined and "--security-opt no-new-privileges" in joined
    assert "--memory 67108864 --memory-swap 67108864" in joined and "--cpus 0.5" in joined
    assert f"/pods/p-1/volumes/config:{CONFIG_DIR}:ro" in joined
    assert "type=tmpfs,destination=/tmp,tmpfs-mode=1777,rw" in joined
    assert "ROGER_AMQP_URL=amqp://x" in argv and "POD_NAME=p-1" in argv
    assert "--entrypoint roger" in joined
    assert argv[-4:] == ["roger-worker:1", "worker", "--config", f"{CONFIG_DIR}/worker.yaml"]


def test_a_setting_it_does_not_know_is_refused() -> None:
    pod = _pod()
    for change in (
        lambda c: c["securityContext"].update(privileged=True),
        lambda c: c.update(lifecycle={"preStop": {}}),
        lambda c: c["volumeMounts"].append({"name": "nope", "mountPath": "/x"}),
    ):
        bad = copy.deepcopy(pod)
        change(bad["spec"]["containers"][0])
        with pytest.raises(Untranslatable):
            _run(bad)


def test_memory_quantities() -> None:
    assert memory_bytes("256Mi") == 256 * 2**20 and memory_bytes("1G") == 10**9
    with pytest.raises(Untranslatable):
        memory_bytes("1.5Gi")
