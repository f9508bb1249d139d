"""The job message: JSON body and AMQP properties, and strict decoding for parking.

Decoding checks every field, so a bad message is parked with a precise reason instead of
crashing a worker or being redelivered forever. JSON only: a body never becomes code.

``decode`` is total: any bytes give a ``JobMessage`` or ``InvalidMessage``, never another
exception, and what it accepts can be encoded again and handed to a job process (numbers
are finite, nesting and size are bounded), so no later step can fail on it either.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, is_dataclass, replace
from typing import Any, Final

CONTENT_TYPE: Final = "application/json"
JOB_NAME_RE: Final = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*$"
)
MAX_ID_LENGTH: Final = 128
# RabbitMQ 4's default max_message_size; the job process pipe takes 64 MiB frames.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
# Far below Python's recursion limit (1000), so every later parse or dump of an accepted
# body (a retry, a job process reading its frame, a callback) has room to spare.
MAX_DEPTH: Final = 100

# Reasons a message is parked in ``.invalid`` (label values of roger_messages_parked_total).
NOT_JSON: Final = "not_json"
NOT_OBJECT: Final = "not_object"
MISSING_FIELD: Final = "missing_field"
INVALID_FIELD: Final = "invalid_field"
UNKNOWN_JOB: Final = "unknown_job"
JOB_NOT_ALLOWED: Final = "job_not_allowed"
TOO_LARGE: Final = "too_large"  # a body over MAX_BODY_BYTES
WRONG_QUEUE: Final = "wrong_queue"  # its ``queue`` field is not the queue it came from
PARK_REASONS: Final = (
    NOT_JSON,
    NOT_OBJECT,
    MISSING_FIELD,
    INVALID_FIELD,
    UNKNOWN_JOB,
    JOB_NOT_ALLOWED,
    TOO_LARGE,
    WRONG_QUEUE,
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
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` gives, without
    building a ``UUID`` object (a tenth of an enqueue's time)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return raw.hex()


def caller_job_id(value: object) -> str:
    """A job id chosen by the caller (Roger's ``Job.create(module, args, id)``): a string
    of 1-128 printable characters that fits an AMQP ``message_id`` (255 bytes of UTF-8).
    Raises ``ValueError`` saying what is wrong."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise ValueError(f"a job id must be a string of 1-{MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise ValueError("a job id must be printable (no control characters)")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("a job id must be valid Unicode text") from None
    if size > 255:
        raise ValueError(f"a job id must fit in 255 bytes of UTF-8; got {size}")
    return value


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not JSON")


def _dataclass_fields(value: Any) -> Any:
    """Dataclasses inside args become objects (as ``dataclasses.asdict`` would do)."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_ENCODERS: Final = {
    ascii_only: json.JSONEncoder(
        separators=(",", ":"),
        allow_nan=False,
        default=_dataclass_fields,
        ensure_ascii=ascii_only,
    )
    for ascii_only in (True, False)
}  # built once: ``json.dumps`` with options builds a new encoder per call


def encode(msg: JobMessage, ascii_only: bool = True) -> bytes:
    """The JSON body. Built field by field: ``asdict`` deep-copies the args first, which
    was most of the cost of an enqueue. ``ascii_only=False`` writes text as UTF-8 rather
    than ``\\u`` escapes (up to 6 times smaller: see ``retry_body``)."""
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
    return _ENCODERS[ascii_only].encode(fields).encode()


def retry_body(msg: JobMessage) -> bytes | None:
    """The body of ``msg``'s next attempt, within ``MAX_BODY_BYTES`` (what a RabbitMQ 4
    broker takes by default, and what the decoder accepts): ASCII JSON as usual, UTF-8
    JSON when escaped text would not fit (a body of non-ASCII text grows up to 6 times
    when escaped), or ``None`` when neither fits (fate.retry_too_large: buried as
    delivered instead)."""
    retried = msg.retried()
    body = encode(retried)
    if len(body) <= MAX_BODY_BYTES:
        return body
    body = encode(retried, ascii_only=False)
    return body if len(body) <= MAX_BODY_BYTES else None


def amqp_timestamp(queued_at: float) -> int:
    """``queued_at`` as the AMQP ``timestamp`` property (an unsigned 64-bit integer)."""
    if not math.isfinite(queued_at) or queued_at <= 0:
        return 0
    return min(int(queued_at), 2**64 - 1)


def properties(msg: JobMessage, partition: str) -> dict[str, Any]:
    """AMQP properties as keyword arguments of ``pika.BasicProperties``."""
    return {
        "delivery_mode": 2,
        "content_type": CONTENT_TYPE,
        "message_id": msg.id,
        "app_id": partition,
        "type": msg.name,
        "timestamp": amqp_timestamp(msg.queued_at),
    }


def _number(value: Any) -> bool:
    return type(value) in (int, float)  # JSON gives exact types; bool is not a number


def _finite(value: Any) -> float | None:
    """A JSON number as a finite float; None when it has none (a 400-digit integer)."""
    try:
        out = float(value)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


class _NotFinite(ValueError):
    pass


def _parse_float(text: str) -> float:
    """``1e400`` is valid JSON but no float: refuse it rather than carry ``inf`` along."""
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(f"number {text[:40]} is out of range")
    return value


def _too_deep(data: Any) -> bool:
    """Nesting deeper than ``MAX_DEPTH`` (iterative: deep input must not recurse here)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = value.values() if type(value) is dict else value
        for child in children:
            if type(child) in (dict, list):
                stack.append((child, depth + 1))
    return False


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)
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


def _parse(body: bytes) -> tuple[Any, bool]:
    """The JSON value, and whether ``body`` is plain UTF-8 JSON (what job processes read).

    UTF-8 first (what clients send); json's own encoding detection (UTF-16/32, a byte
    order mark) only when that fails, so garbage is parsed twice, valid jobs once."""
    try:
        return _DECODER.decode(body.decode("utf-8")), True
    except _NotFinite:
        raise
    except ValueError:  # UnicodeDecodeError is one
        return json.loads(body, parse_constant=_reject_constant, parse_float=_parse_float), False


def decode(body: bytes) -> JobMessage:
    """Parse and validate a body; raises ``InvalidMessage`` with a park reason.

    Unknown fields are ignored so that older workers read messages of newer clients.
    It runs once per delivery on the worker's loop, hence exact type checks (JSON only
    produces exact types) and a cache of valid job names.
    """
    return decode_body(body)[0]


def decode_body(body: bytes) -> tuple[JobMessage, bytes]:
    """``decode``, and the body as job processes read it: plain UTF-8 JSON. That is
    ``body`` itself for every client's message; a UTF-16/32 or BOM-prefixed one is
    re-encoded (embedded as is in a job process's frame, it would break the pipe)."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidMessage(TOO_LARGE, f"body of {len(body)} bytes > {MAX_BODY_BYTES}")
    try:
        data, plain = _parse(body)
    except _NotFinite as exc:
        raise InvalidMessage(INVALID_FIELD, str(exc)) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # UnicodeDecodeError is one
        raise InvalidMessage(NOT_JSON, str(exc)[:200]) from None
    if type(data) is not dict:
        raise InvalidMessage(NOT_OBJECT, f"body is a JSON {type(data).__name__}")
    # A body with fewer brackets than MAX_DEPTH cannot nest deeper (the usual case: no walk).
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _too_deep(data):
        raise InvalidMessage(INVALID_FIELD, f"nested deeper than {MAX_DEPTH} levels")
    msg = _validate(data)
    if not plain:
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    return msg, body


def _validate(data: dict[str, Any]) -> JobMessage:
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
    # A float from _DECODER is finite already (_parse_float): the usual case, no helpers.
    queued_at_float = (
        queued_at
        if type(queued_at) is float and math.isfinite(queued_at)
        else _finite(queued_at)
        if _number(queued_at)
        else None
    )
    if queued_at_float is None:
        raise InvalidMessage(INVALID_FIELD, "queued_at must be a finite number")
    met = data.get("max_execution_time")
    met_float = None if met is None else _finite(met) if _number(met) else None
    if met is not None and (met_float is None or met_float < 1):
        raise InvalidMessage(INVALID_FIELD, "max_execution_time must be null or a number >= 1")
    return JobMessage(
        ident,
        name,
        args,
        queue,
        queue_key,
        execution_key,
        retry_count,
        queued_at_float,
        met_float,
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
