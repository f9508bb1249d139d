"""rabbitmq-server#16652 on the 3-node cluster: a quorum retry queue whose dead-letter
worker is gone strands its expired jobs; RogerRetryQueueStranded's signal sees them, Roger
cannot take them itself, and the runbook's remedy (docs/runbooks.md) puts them back so
that every job then ends exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import roger
from roger.core import naming
from roger_devtools.chaos_cluster import ChaosCluster
from roger_devtools.chaos_stranded import (
    StrandedWatch,
    held_for_dead_lettering,
    stop_dead_letter_worker_expression,
)
from roger_devtools.polling import eventually
from roger_devtools.recording import recording_workers
from tests.brokers import BROKER
from tests.integration import cluster_support
from tests.integration.cluster_support import Cluster

pytestmark = pytest.mark.integration
JOBS = 8


@pytest.mark.timeout(300)
def test_a_stranded_retry_queue_is_seen_and_the_remedy_ends_every_job_once(
    rabbitmq_cluster: Cluster,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))  # the client imports pjobs
    cluster = ChaosCluster(BROKER.version)
    workers, recorder = recording_workers(tmp_path, cluster.url_list, unique_name)
    retry = naming.retry_queue_name(unique_name, "default", 1)
    try:
        workers.start(["default=4"], ready=False).wait_ready(timeout=120)
        leader = cluster.leader_of(retry)
        cluster_support.script(
            "ctl", str(leader), "eval", stop_dead_letter_worker_expression(retry)
        )
        tags = [f"s{i}" for i in range(JOBS)]
        with roger.Client(cluster.url_list) as client:
            for tag in tags:  # fails its first run, then succeeds
                client.enqueue(unique_name, "pjobs:chaos", {"tag": tag, "kind": "flaky"})

        def held() -> int:
            return held_for_dead_lettering(cluster.message_counts()).get(retry, 0)

        eventually(lambda: held() == JOBS, 60, 1, f"{JOBS} expired jobs held in {retry}")
        time.sleep(5)  # well past the 1 s retry delay: stranded, not slow
        assert held() == JOBS
        assert recorder.events("end") == []
        conn = cluster.connection()
        try:  # expired messages are no consumer's any more: Roger cannot move them itself
            assert conn.channel().basic_get(retry, auto_ack=False)[0] is None
        finally:
            conn.close()

        watch = StrandedWatch(cluster.message_counts, cluster.restart_leader_member, after=0)
        watch(time.time())
        assert len(watch.recovered) == 1 and watch.recovered[0].endswith("ok"), watch.recovered

        def ended() -> list[str]:
            return sorted(str(e["id"]) for e in recorder.events("end"))

        eventually(lambda: ended() == sorted(tags), 90, 1, "every stranded job ran again")
        time.sleep(3)  # nothing more comes
        assert ended() == sorted(tags)  # exactly once each
        starts = sorted(str(e["id"]) for e in recorder.events("start"))
        assert starts == sorted(tags * 2)  # the failed run and the one after the remedy
        assert held() == 0
    finally:
        workers.stop_all()
        cluster.delete_partition(unique_name)
