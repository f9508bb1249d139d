"""Retry queues stranded by rabbitmq-server#16652, and the runbook's remedy for them.

A quorum retry queue dead-letters its expired messages at-least-once through a per-queue
dead-letter worker on the leader's node. When that worker fails to start during a node
stop or restart (``rabbit_fifo_dlx_sup`` noproc), the expired messages stay held in the
queue (``messages`` minus ready minus unacked: RabbitMQ's ``messages_dlx``) and are no
longer deliverable to anyone, until the queue's leader member restarts. docs/runbooks.md
(RogerRetryQueueStranded) gives the same remedy to operators; the chaos run applies it
and the integration test strands a queue on purpose to prove that it works.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

RETRY_QUEUE = re.compile(r".+\.retry\.[0-9]+")


def held_for_dead_lettering(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Retry queue -> messages held for dead-lettering, from ``list_queues name messages
    messages_ready messages_unacknowledged`` rows (queues holding none left out)."""
    out = {}
    for r in rows:
        held = int(r.get("messages") or 0) - int(r.get("messages_ready") or 0)
        held -= int(r.get("messages_unacknowledged") or 0)
        if RETRY_QUEUE.fullmatch(str(r["name"])) and held > 0:
            out[str(r["name"])] = held
    return out


def erlang_binary(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'<<"{escaped}"/utf8>>'


def restart_leader_member_expression(queue: str, vhost: str = "/") -> str:
    """The ``rabbitmqctl eval`` of the runbook: stop and restart the queue's leader member
    (from any node); another member leads and starts a dead-letter worker."""
    return (
        f"R = rabbit_misc:r({erlang_binary(vhost)}, queue, {erlang_binary(queue)}), "
        "{ok, Q} = rabbit_amqqueue:lookup(R), {Name, Leader} = amqqueue:get_pid(Q), "
        "ok = rpc:call(Leader, ra, stop_server, [quorum_queues, {Name, Leader}]), "
        "rpc:call(Leader, ra, restart_server, [quorum_queues, {Name, Leader}])."
    )


def stop_dead_letter_worker_expression(queue: str, vhost: str = "/") -> str:
    """Tests only, on the queue's leader node: end the queue's dead-letter worker without
    a restart, which is the state rabbitmq-server#16652 leaves a queue in."""
    resource = f"{{resource, {erlang_binary(vhost)}, queue, {erlang_binary(queue)}}}"
    return (
        "[supervisor:terminate_child(rabbit_fifo_dlx_sup, P) || "
        "{_, P, _, _} <- supervisor:which_children(rabbit_fifo_dlx_sup), "
        f"element(2, sys:get_state(P)) =:= {resource}]."
    )


class StrandedWatch:
    """Called on every poll while a run settles: a retry queue seen holding messages for
    dead-lettering for ``after`` seconds gets the runbook remedy, once per stranding; what
    was done is kept in ``recovered`` for the report."""

    def __init__(
        self,
        rows: Callable[[], list[dict[str, Any]]],
        remedy: Callable[[str], str],
        after: float = 10.0,
    ) -> None:
        self.rows, self.remedy, self.after = rows, remedy, after
        self.since: dict[str, float] = {}
        self.recovered: list[str] = []

    def __call__(self, now: float) -> None:
        held = held_for_dead_lettering(self.rows())
        self.since = {q: self.since.get(q, now) for q in held}
        for queue, n in held.items():
            if now - self.since[queue] >= self.after:
                answer = self.remedy(queue).strip()
                self.recovered.append(f"{queue}: {n} job(s) held, remedy answered {answer}")
                del self.since[queue]
