"""The job message: JSON body and AMQP properties, and strict decoding for parking.

Decoding checks every field, so a bad message is parked with a precise reason instead of
crashing a worker or being redelivered forever. JSON only: a body never becomes code.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict, dataclass, is_dataclass, replace
from typing import Any, Final

CONTENT_TYPE: Final = "application/json"
JOB_NAME_RE: Final = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*$"
)
MAX_ID_LENGTH: Final = 128

# Reasons a message is parked in ``.invalid`` (label values of roger_messages_parked_total).
NOT_JSON: Final = "not_json"
NOT_OBJECT: Final = "not_object"
MISSING_FIELD: Final = "missing_field"
INVALID_FIELD: Final = "invalid_field"
UNKNOWN_JOB: Final = "unknown_job"
JOB_NOT_ALLOWED: Final = "job_not_allowed"
PARK_REASONS: Final = (
    NOT_JSON,
    NOT_OBJECT,
    MISSING_FIELD,
    INVALID_FIELD,
    UNKNOWN_JOB,
    JOB_NOT_ALLOWED,
)


class InvalidMessage(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class JobMessage:
    id: str
    name: str
    args: Any
    queue: str
    queue_key: str | None = None
    execution_key: str | None = None
    retry_count: int = 0
    queued_at: float = 0.0
    max_execution_time: float | None = None

    def retried(self) -> JobMessage:
        return replace(self, retry_count=self.retry_count + 1)


def new_job_id() -> str:
    return uuid.uuid4().hex


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not JSON")


def _dataclass_fields(value: Any) -> Any:
    """Dataclasses inside args become objects (as ``dataclasses.asdict`` would do)."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encode(msg: JobMessage) -> bytes:
    """The JSON body. Built field by field: ``asdict`` deep-copies the args first, which
    was most of the cost of an enqueue."""
    fields = {
        "id": msg.id,
        "name": msg.name,
        "args": msg.args,
        "queue": msg.queue,
        "queue_key": msg.queue_key,
        "execution_key": msg.execution_key,
        "retry_count": msg.retry_count,
        "queued_at": msg.queued_at,
        "max_execution_time": msg.max_execution_time,
    }
    return json.dumps(
        fields, separators=(",", ":"), allow_nan=False, default=_dataclass_fields
    ).encode()


def properties(msg: JobMessage, partition: str) -> dict[str, Any]:
    """AMQP properties as keyword arguments of ``pika.BasicProperties``."""
    return {
        "delivery_mode": 2,
        "content_type": CONTENT_TYPE,
        "message_id": msg.id,
        "app_id": partition,
        "type": msg.name,
        "timestamp": int(msg.queued_at),
    }


def _number(value: Any) -> bool:
    return type(value) in (int, float)  # JSON gives exact types; bool is not a number


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
_VALID_NAMES: dict[str, None] = {}  # names seen valid; the check runs once per job name
_MAX_VALID_NAMES: Final = 4096


def _valid_name(name: str) -> bool:
    if name in _VALID_NAMES:
        return True
    if not JOB_NAME_RE.match(name):
        return False
    if len(_VALID_NAMES) < _MAX_VALID_NAMES:
        _VALID_NAMES[name] = None
    return True


def _parse(body: bytes) -> Any:
    """UTF-8 first (what clients send); json's own encoding detection (UTF-16/32, a byte
    order mark) only when that fails, so garbage is parsed twice, valid jobs once."""
    try:
        return _DECODER.decode(body.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is one
        return json.loads(body, parse_constant=_reject_constant)


def decode(body: bytes) -> JobMessage:
    """Parse and validate a body; raises ``InvalidMessage`` with a park reason.

    Unknown fields are ignored so that older workers read messages of newer clients.
    It runs once per delivery on the worker's loop, hence exact type checks (JSON only
    produces exact types) and a cache of valid job names.
    """
    try:
        data = _parse(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidMessage(NOT_JSON, str(exc)[:200]) from None
    if type(data) is not dict:
        raise InvalidMessage(NOT_OBJECT, f"body is a JSON {type(data).__name__}")
    try:
        ident, name, args, queue = data["id"], data["name"], data["args"], data["queue"]
    except KeyError as exc:
        raise InvalidMessage(MISSING_FIELD, f"no {exc.args[0]!r}") from None
    if type(ident) is not str or not 0 < len(ident) <= MAX_ID_LENGTH:
        raise InvalidMessage(INVALID_FIELD, "id must be a string of 1-128 characters")
    if type(name) is not str or not _valid_name(name):
        raise InvalidMessage(INVALID_FIELD, "name must look like 'module:function'")
    if type(queue) is not str or not queue:
        raise InvalidMessage(INVALID_FIELD, "queue must be a non-empty string")
    queue_key, execution_key = data.get("queue_key"), data.get("execution_key")
    if queue_key is not None and type(queue_key) is not str:
        raise InvalidMessage(INVALID_FIELD, "queue_key must be a string or null")
    if execution_key is not None and type(execution_key) is not str:
        raise InvalidMessage(INVALID_FIELD, "execution_key must be a string or null")
    retry_count = data.get("retry_count", 0)
    if type(retry_count) is not int or retry_count < 0:
        raise InvalidMessage(INVALID_FIELD, "retry_count must be an integer >= 0")
    queued_at = data.get("queued_at", 0.0)
    if not _number(queued_at):
        raise InvalidMessage(INVALID_FIELD, "queued_at must be a number")
    met = data.get("max_execution_time")
    if met is not None and (not _number(met) or met < 1):
        raise InvalidMessage(INVALID_FIELD, "max_execution_time must be null or >= 1")
    return JobMessage(
        ident,
        name,
        args,
        queue,
        queue_key,
        execution_key,
        retry_count,
        float(queued_at),
        None if met is None else float(met),
    )


@dataclass(frozen=True, slots=True)
class Job:
    """What callbacks receive as ``job``: the message plus when this attempt started."""

    id: str
    name: str
    args: Any
    queue: str
    queue_key: str | None = None
    execution_key: str | None = None
    retry_count: int = 0
    queued_at: float = 0.0
    started_at: float | None = None
    max_execution_time: float | None = None

    @classmethod
    def from_fields(cls, data: dict[str, Any], started_at: float | None) -> Job:
        """From a message body the worker has already validated with ``decode``."""
        return cls(
            id=data["id"],
            name=data["name"],
            args=data["args"],
            queue=data["queue"],
            queue_key=data.get("queue_key"),
            execution_key=data.get("execution_key"),
            retry_count=data.get("retry_count", 0),
            queued_at=data.get("queued_at", 0.0),
            started_at=started_at,
            max_execution_time=data.get("max_execution_time"),
        )
