"""RabbitMQ side of a Partition: the per-broker claim of its id, its queues, their stats,
pause/resume, and deleting empty queues when the Partition goes."""

from roger_operator.rabbit.broker import Broker, BrokerBusy, BrokerError, ClaimConflict
from roger_operator.rabbit.lanes import Stopping
from roger_operator.rabbit.redaction import redact

__all__ = ["Broker", "BrokerBusy", "BrokerError", "ClaimConflict", "Stopping", "redact"]
