"""`make demo`'s last step: a Partition whose worker Pod is a real container on the real
node (hack/node.sh: kubelet + containerd + runc, the project's images loaded, no pulls).

Where the node cannot run, the step says why (the last lines of hack/node.sh) and the tour
ends on the kwok nodes it used so far. The Pod reaches the broker through the node's bridge
address (hack/node.sh forwards it to 127.0.0.1), in a namespace that enforces Pod Security
"restricted", with a memory limit a job exceeds on purpose: its job process is OOM-killed
by the kernel and the job retried, while the container keeps running.
"""

from __future__ import annotations

import json
import subprocess
import time

from demo_support import AMQP_URL, ENV, ROOT, indent, kubectl, step, wait

from roger_devtools.real_node import bridge_url, worker_partition

NODE_NAMESPACE = "demo-node"
PARTITION = "tenant-real"


def _example_image() -> str:
    """The example worker image hack/images.sh builds (its last name)."""
    names = subprocess.run(
        ["bash", "hack/images.sh", "names"], cwd=ROOT, text=True, capture_output=True, check=True
    ).stdout.split()
    return names[-1]


def _pod() -> dict[str, object] | None:
    pods = json.loads(
        kubectl("get", "pods", "-n", NODE_NAMESPACE, "-l",
                f"app.kubernetes.io/instance={PARTITION}", "-o", "json")
    )["items"]  # fmt: skip
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if len(live) != 1:
        return None
    pod: dict[str, object] = live[0]
    statuses = pod["status"].get("containerStatuses") or []  # type: ignore[attr-defined]
    running = pod["status"].get("phase") == "Running"  # type: ignore[attr-defined]
    return pod if running and statuses and all(s.get("ready") for s in statuses) else None


def _audit(pod_name: str) -> list[dict[str, object]]:
    out = kubectl("logs", "-n", NODE_NAMESPACE, pod_name, check=False)
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"channel"')]


def real_node_tour() -> None:
    step("A real node: the worker Pod as a real container (kubelet, containerd, runc)")
    print("    $ make node-up   (first time: builds the images, about 5 minutes)")
    proc = subprocess.run(
        ["bash", "hack/node.sh", "up"], cwd=ROOT, env=ENV, text=True, capture_output=True
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        print("    The real node cannot run on this machine; the tour above used kwok nodes.")
        print(indent(tail))
        return
    print(indent(kubectl("get", "nodes", "-o", "wide")))
    kubectl("create", "namespace", NODE_NAMESPACE, check=False)
    kubectl("label", "namespace", NODE_NAMESPACE, "--overwrite",
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest")  # fmt: skip
    pod_url = bridge_url(AMQP_URL, "127.0.0.1")  # the node's bridge address
    kubectl("-n", NODE_NAMESPACE, "delete", "secret", "rabbitmq", "--ignore-not-found")
    kubectl("-n", NODE_NAMESPACE, "create", "secret", "generic", "rabbitmq",
            f"--from-literal=url={pod_url}")  # fmt: skip
    kubectl("apply", "-n", NODE_NAMESPACE, "-f", "examples/callback-audit.yaml")
    manifest = json.dumps(worker_partition(PARTITION, NODE_NAMESPACE, _example_image()))
    subprocess.run(
        [str(ROOT / ".cluster" / "bin" / "kubectl"), "apply", "-f", "-"],
        input=manifest, env=ENV, text=True, check=True, capture_output=True,
    )  # fmt: skip
    pod = wait(f"the {PARTITION} worker Pod Running and Ready (kubelet probes)", _pod, 300)
    pod_name = str(pod["metadata"]["name"])
    print(indent(kubectl("get", "pods", "-n", NODE_NAMESPACE, "-o", "wide")))
    inside = kubectl(
        "exec",
        "-n",
        NODE_NAMESPACE,
        pod_name,
        "--",
        "sh",
        "-c",
        "echo uid $(id -u); touch /x 2>/dev/null || echo root filesystem read-only",
    )
    print(f"    $ kubectl exec {pod_name} -- id -u; touch /x")  # fmt: skip
    print(indent(inside))

    from roger import Client

    with Client(AMQP_URL) as client:
        welcome = client.enqueue(PARTITION, "myapp.jobs:send_welcome", {"user": "real"})
        # 400 MB in a 256 MiB container for 2 s: OOM-killed, then retried and done
        crunch = client.enqueue(
            PARTITION, "myapp.jobs:crunch_numbers", {"mb": 400, "until": time.time() + 2}
        )
    expected = {(welcome, "after_run"), (crunch, "on_error"), (crunch, "after_run")}
    wait(
        "send_welcome to run, crunch_numbers to be OOM-killed and then succeed",
        lambda: expected <= {(r["id"], r["hook"]) for r in _audit(pod_name)},
        120,
    )
    print(f"    $ kubectl logs -n {NODE_NAMESPACE} {pod_name}   (the Audit callback's lines)")
    for record in _audit(pod_name):
        if record["id"] in (welcome, crunch):
            error = f" error={record['error']}" if record.get("error") else ""
            print(f"    {record['hook']:<10} {record['job']:<26} {record['id']}{error}")
