"""Every Prometheus metric name Roger exports, in one place.

Dashboards, alert rules and their tests refer to these names; the worker's and the
operator's metric objects are built from them. Labels are bounded: never a job id. No
label is named like a target label Prometheus sets itself (``job``, ``namespace``,
``instance``, ``pod``...): Prometheus would rename it to ``exported_*``.
"""

from __future__ import annotations

from typing import Final

# Worker: job lifecycle.
LIFECYCLE_EVENTS: Final = "roger_lifecycle_events"  # counter {partition,queue,job_name,hook}
JOB_DURATION: Final = "roger_job_duration_seconds"  # histogram {partition,queue,job_name,outcome}
JOBS_RUNNING: Final = "roger_jobs_running"  # gauge {partition,queue}
JOB_RETRIES: Final = "roger_job_retries"  # counter {partition,queue,job_name}
JOB_OUTCOMES: Final = "roger_job_outcomes"  # counter {partition,queue,job_name,outcome}
MESSAGES_PARKED: Final = "roger_messages_parked"  # counter {partition,queue,reason}
BURIED_DROPPED: Final = "roger_buried_dropped"  # counter {partition,queue} past the bound
CALLBACK_FAILURES: Final = "roger_callback_failures"  # counter {partition,callback,hook,reason}
QUEUE_MESSAGES: Final = "roger_queue_messages"  # gauge {partition,queue} ready messages
QUEUE_CONSUMERS: Final = "roger_queue_consumers"  # gauge {partition,queue}
QUEUE_RETRYING: Final = "roger_queue_retrying"  # gauge {partition,queue} in .retry.* queues
QUEUE_BURIED: Final = "roger_queue_buried"  # gauge {partition,queue} in .buried
QUEUE_INVALID: Final = "roger_queue_invalid"  # gauge {partition,queue} parked in .invalid
QUEUE_PAUSED: Final = "roger_queue_paused"  # gauge {partition,queue} 0/1
WORKER_INFO: Final = "roger_worker"  # info {partition,version}
BROKER_RECONNECTS: Final = "roger_broker_reconnects"  # counter {partition}
# Consumer channels the broker closed for its consumer_timeout, and queues whose jobs may
# hold a delivery longer than it (roger.core.ack_timeout).
CONSUMER_TIMEOUTS: Final = "roger_consumer_timeouts"  # counter {partition,queue}
CONSUMER_TIMEOUT_RISK: Final = "roger_consumer_timeout_risk"  # gauge {partition,queue} 0/1

# Worker: Kubernetes Events emitter.
KUBE_EVENTS_EMITTED: Final = "roger_kube_events_emitted"  # counter {partition,reason}
KUBE_EVENTS_DROPPED: Final = "roger_kube_events_dropped"  # counter {partition,cause}
KUBE_EVENT_WRITES: Final = "roger_kube_event_writes"  # counter {partition,verb}

# Operator.
OPERATOR_INFO: Final = "roger_operator"  # info {version}, from start-up (before any reconcile)
OPERATOR_RECONCILES: Final = "roger_operator_reconciles"  # counter {kind,result,trigger}
OPERATOR_RECONCILE_DURATION: Final = "roger_operator_reconcile_duration_seconds"  # histogram
OPERATOR_ERRORS: Final = "roger_operator_errors"  # counter {kind,stage}
OPERATOR_PARTITIONS: Final = "roger_operator_partitions"  # gauge {partition_namespace,phase}
OPERATOR_API_REQUESTS: Final = "roger_operator_api_requests"  # counter {verb} (its own client)
# Broker work in the lanes (roger_operator.rabbit.lanes), histograms {call}: seconds waiting
# for a lane thread, and running.
OPERATOR_BROKER_CALL_QUEUED: Final = "roger_operator_broker_call_queued_seconds"
OPERATOR_BROKER_CALL_DURATION: Final = "roger_operator_broker_call_duration_seconds"

# Exposed as <name>_bucket, <name>_sum and <name>_count.
HISTOGRAMS: Final = (
    JOB_DURATION,
    OPERATOR_RECONCILE_DURATION,
    OPERATOR_BROKER_CALL_QUEUED,
    OPERATOR_BROKER_CALL_DURATION,
)

# prometheus-client appends "_total" to counters on exposition.
COUNTERS: Final = (
    LIFECYCLE_EVENTS,
    JOB_RETRIES,
    JOB_OUTCOMES,
    MESSAGES_PARKED,
    BURIED_DROPPED,
    CALLBACK_FAILURES,
    BROKER_RECONNECTS,
    CONSUMER_TIMEOUTS,
    KUBE_EVENTS_EMITTED,
    KUBE_EVENTS_DROPPED,
    KUBE_EVENT_WRITES,
    OPERATOR_RECONCILES,
    OPERATOR_ERRORS,
    OPERATOR_API_REQUESTS,
)
