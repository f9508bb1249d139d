"""The 3-node cluster of hack/rabbitmq-cluster.sh as tools see it: ``cluster_script`` is the
one way in (the integration tests' ``cluster_support`` calls it too), and ``ChaosCluster``
is the chaos run's hands on the cluster of one RabbitMQ version (3.10, or 4.0 from the trixie
root), plus the one thing the script does not do: SIGKILL a node's beam process (by the pid
in its state directory, after checking that the pid is that node's)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pika

from roger.core import naming
from roger_devtools.chaos_stranded import restart_leader_member_expression
from roger_devtools.polling import eventually
from roger_devtools.processes import alive
from roger_devtools.workers import ROOT

SCRIPT = ROOT / "hack" / "rabbitmq-cluster.sh"
NODES = (1, 2, 3)
PREFIX = "roger-c"
PREFIXES = {"3.10": PREFIX, "4.0": "roger4-c"}  # as hack/rabbitmq-cluster.sh names nodes
TRIXIE_ROOT = (
    Path(
        os.environ.get("ROGER_TOOLS_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roger-tools"
    )
    / "rabbitmq-trixie"
)  # hack/rabbitmq-lib.sh's RMQ_TRIXIE_ROOT


def cluster_version() -> str:
    """The cluster the chaos run drives: ROGER_CLUSTER_RABBITMQ (make chaos RABBITMQ=4.0)."""
    version = os.environ.get("ROGER_CLUSTER_RABBITMQ", "3.10")
    if version not in PREFIXES:
        raise SystemExit(f"ROGER_CLUSTER_RABBITMQ={version!r}: expected 3.10 or 4.0")
    return version


def _cluster_command(*args: str, version: str) -> tuple[list[str], dict[str, str]]:
    """hack/rabbitmq-cluster.sh ``args`` for the cluster of RabbitMQ ``version``: argv, env."""
    return ["bash", str(SCRIPT), *args], {**os.environ, "ROGER_CLUSTER_RABBITMQ": version}


def cluster_script(*args: str, version: str = "3.10", timeout: float = 300) -> str:
    """Run hack/rabbitmq-cluster.sh for the cluster of RabbitMQ ``version``; its stdout."""
    argv, env = _cluster_command(*args, version=version)
    done = subprocess.run(
        argv, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=timeout
    )
    return done.stdout


def cluster_script_process(*args: str, version: str = "3.10") -> subprocess.Popen[str]:
    """hack/rabbitmq-cluster.sh started, not waited for: its log (stderr) read as it goes."""
    argv, env = _cluster_command(*args, version=version)
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


class ChaosCluster:
    def __init__(self, version: str = "3.10") -> None:
        self.rabbitmq = version
        self.prefix = PREFIXES[version]
        self.urls = tuple(self._script("urls").strip().split(","))
        self.url_list = ",".join(self.urls)
        self.down: set[int] = set()
        if version == "4.0":
            self.state = TRIXIE_ROOT / "roger-state" / "cluster"
        else:
            state = Path(os.environ.get("ROGER_STATE_DIR", ROOT / ".cluster"))
            self.state = state / "rabbitmq-cluster"

    def _script(self, *args: str, timeout: float = 300) -> str:
        return cluster_script(*args, version=self.rabbitmq, timeout=timeout)

    def up(self) -> None:
        self._script("up", timeout=600)
        self.down.clear()

    def ctl(self, *args: str) -> str:
        """rabbitmqctl on a node that runs."""
        node = next(n for n in NODES if n not in self.down)
        return self._script("ctl", str(node), *args, timeout=120)

    def version(self) -> str:
        return self.ctl("eval", "rabbit_misc:version().").strip().strip('"')

    def queues(self) -> list[dict[str, Any]]:
        out = self.ctl("list_queues", "name", "leader", "messages", "--formatter", "json")
        return list(json.loads(out))

    def message_counts(self) -> list[dict[str, Any]]:
        """name, messages, messages_ready and messages_unacknowledged of every queue."""
        out = self.ctl(
            "list_queues",
            "name",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "--formatter",
            "json",
        )
        return list(json.loads(out))

    def restart_leader_member(self, queue: str) -> str:
        """The runbook's remedy for a stranded retry queue (docs/runbooks.md)."""
        return self.ctl("eval", restart_leader_member_expression(queue))

    def leader_of(self, queue: str) -> int:
        """The node number that leads ``queue`` now (node 1 if none is reported)."""
        for q in self.queues():
            if q["name"] == queue and q.get("leader"):
                return int(str(q["leader"]).split("@")[0].removeprefix(self.prefix))
        return 1

    def stop_node(self, n: int, hard: bool) -> None:
        self.down.add(n)
        if not hard:
            self._script("stop-node", str(n))
            return
        pid = int((self.state / f"c{n}" / "rabbitmq.pid").read_text().strip())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RABBITMQ_NODENAME={self.prefix}{n}@localhost".encode() not in environ:
            raise RuntimeError(f"pid {pid} is not node {n}'s beam")
        os.kill(pid, signal.SIGKILL)
        eventually(lambda: not alive(pid), 30, message=f"node {n} gone")

    def start_node(self, n: int) -> None:
        self._script("start-node", str(n), timeout=300)
        self.down.discard(n)

    def restart_all(self) -> None:
        """Every node stopped (the last one stopped is the first the others wait for),
        then the cluster started again."""
        for n in (3, 2, 1):
            self.stop_node(n, hard=False)
        self.up()

    def close_all_connections(self) -> None:
        for n in NODES:
            if n not in self.down:
                self._script("ctl", str(n), "close_all_connections", "--global", "chaos")

    def connection(self) -> pika.BlockingConnection:
        return pika.BlockingConnection([pika.URLParameters(u) for u in self.urls])

    def ready(self, queue: str) -> int:
        """Ready messages in ``queue`` (a passive declare)."""
        conn = self.connection()
        try:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            conn.close()

    def peek(self, queue: str) -> list[tuple[dict[str, Any], bytes]]:
        """Headers and body of every ready message, left in place (the channel closes
        with them unacked, so they go back)."""
        conn = self.connection()
        out = []
        try:
            ch = conn.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                while True:
                    method, props, body = ch.basic_get(queue, auto_ack=False)
                    if method is None:
                        break
                    out.append((dict(props.headers or {}), body))
        finally:
            conn.close()
        return out

    def partition_queues(self, partition: str) -> list[dict[str, Any]]:
        return [q for q in self.queues() if naming.belongs_to_partition(q["name"], partition)]

    def delete_partition(self, partition: str) -> None:
        conn = self.connection()
        try:
            for q in self.partition_queues(partition):
                ch = conn.channel()
                with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                    ch.queue_delete(q["name"])
                    ch.close()
        finally:
            conn.close()
