"""The pipe protocol between the worker and its job processes: one type per frame kind.

A frame is a 4-byte big-endian length and a JSON object (never pickle: a job process can
never make the worker run code). This module is the whole parent/child contract: each
kind has one type, one encoder and one decoder here, and nothing else builds or reads the
wire keys. One frame is not JSON: the hot path "job succeeded and its hooks are done"
(``OkDone``), sent once per job, is three numbers.

Worker -> job process: ``Run`` (run a job with its hooks), ``RunHooks`` (only the hooks of a
job whose process died). Job process -> worker: ``Ready``, ``Fatal``, ``Outcome`` (the job
returned or raised), ``Done`` (its hooks finished), ``OkDone`` (both at once), ``Late`` (a
job or hook is past its deadline).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any, Final, Generic, NamedTuple, TypeVar

from roger.core.hooks import HOOKS, HookName

_LEN: Final = struct.Struct(">I")
MAX_FRAME: Final = 64 * 1024 * 1024

Error = tuple[str, str]  # (kind, message)
CallbackFailure = tuple[str, str, str]  # (callback, hook, reason)


class FrameError(ValueError):
    """The peer wrote something that is not a frame: the pipe cannot be trusted anymore."""


# -- worker -> job process -------------------------------------------------------------
class Run(NamedTuple):
    """Run job ``key`` with its hooks; ``failure_hook`` is the hook its failure gets."""

    key: int
    failure_hook: HookName
    skip_before: bool
    job: dict[str, Any]


class RunHooks(NamedTuple):
    """Run ``hook`` (no callback state) for a job whose own process died or was killed."""

    key: int
    hook: HookName
    error: Error | None
    stack: str | None
    started_at: float | None
    job: dict[str, Any]


ToChild = Run | RunHooks


# -- job process -> worker -------------------------------------------------------------
class Ready(NamedTuple):
    pid: int
    slots: int


class Fatal(NamedTuple):
    """The job process could not start (a jobs module or callback does not import)."""

    error: str


class Outcome(NamedTuple):
    """Job ``key`` returned (``error`` None), raised, or was refused (``invalid``)."""

    key: int
    duration: float = 0.0
    started_at: float = 0.0
    error: Error | None = None
    stack: str | None = None
    invalid: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.invalid is None


class Done(NamedTuple):
    """The hooks of task ``key`` finished; ``failures`` are the callbacks that failed."""

    key: int
    failures: tuple[CallbackFailure, ...] = ()


class OkDone(NamedTuple):
    """Outcome ok and Done without failures, in one frame (the hot path)."""

    key: int
    duration: float
    started_at: float


class Late(NamedTuple):
    """Task ``key`` is past its deadline in ``phase`` ("job" or a hook) of ``callback``."""

    key: int
    phase: str
    callback: str


ToParent = Ready | Fatal | Outcome | Done | OkDone | Late


# -- encoding ----------------------------------------------------------------------------
def _frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


def _json(obj: dict[str, Any]) -> bytes:
    return _frame(json.dumps(obj, separators=(",", ":"), default=str).encode())


def encode_run(key: int, failure_hook: HookName, skip_before: bool, body: bytes) -> bytes:
    """``Run`` with the delivery's body embedded as is (it was validated as a JSON object
    by the worker's decoder): no parse and dump round on the hot path."""
    payload = b'{"t":"run","k":%d,"h":"%s","s":%d,"job":%b}' % (
        key,
        failure_hook.encode(),
        skip_before,
        body,
    )
    return _LEN.pack(len(payload)) + payload  # once per job: _frame inline


def encode_ok(key: int, duration: float, started_at: float) -> bytes:
    """``Outcome(key, duration, started_at)`` (a success) without building it: the hot
    path of a job process, once per job."""
    return _frame(b'{"t":"o","k":%d,"d":%.6f,"at":%.6f}' % (key, duration, started_at))


def encode_ok_done(key: int, duration: float, started_at: float) -> bytes:
    """``OkDone(key, duration, started_at)`` without building it (the hot path)."""
    return _frame(b"S%d %.6f %.6f" % (key, duration, started_at))


def encode(frame: ToChild | ToParent) -> bytes:
    if isinstance(frame, OkDone):
        return encode_ok_done(frame.key, frame.duration, frame.started_at)
    if isinstance(frame, Done):
        if not frame.failures:
            return _frame(b'{"t":"d","k":%d}' % frame.key)
        return _json({"t": "d", "k": frame.key, "f": [list(f) for f in frame.failures]})
    if isinstance(frame, Outcome):
        if frame.ok:
            return encode_ok(frame.key, frame.duration, frame.started_at)
        obj: dict[str, Any] = {"t": "o", "k": frame.key, "d": frame.duration}
        obj["at"] = frame.started_at
        if frame.invalid is not None:
            obj["invalid"] = frame.invalid
        if frame.error is not None:
            obj["err"], obj["st"] = list(frame.error), frame.stack
        return _json(obj)
    if isinstance(frame, Run):
        body = json.dumps(frame.job, separators=(",", ":")).encode()
        return encode_run(frame.key, frame.failure_hook, frame.skip_before, body)
    if isinstance(frame, RunHooks):
        return _json(
            {
                "t": "hooks",
                "k": frame.key,
                "hook": frame.hook,
                "err": list(frame.error) if frame.error else None,
                "st": frame.stack,
                "at": frame.started_at,
                "job": frame.job,
            }
        )
    if isinstance(frame, Ready):
        return _json({"t": "ready", "pid": frame.pid, "slots": frame.slots})
    if isinstance(frame, Fatal):
        return _json({"t": "fatal", "error": frame.error})
    return _json({"t": "late", "k": frame.key, "phase": frame.phase, "cb": frame.callback})


# -- decoding ----------------------------------------------------------------------------
def _error(value: Any) -> Error | None:
    if value is None:
        return None
    kind, message = value
    return str(kind), str(message)


def _hook(value: Any) -> HookName:
    if value not in HOOKS:
        raise ValueError(f"unknown hook {value!r}")
    hook: HookName = value
    return hook


def to_child(obj: dict[str, Any]) -> ToChild:
    kind = obj["t"]
    if kind == "run":
        job = obj["job"]
        if type(job) is not dict:
            raise ValueError("a run frame's job is not an object")
        return Run(int(obj["k"]), _hook(obj["h"]), bool(obj["s"]), job)
    if kind == "hooks":
        at = obj.get("at")
        return RunHooks(
            int(obj["k"]),
            _hook(obj["hook"]),
            _error(obj.get("err")),
            obj.get("st"),
            None if at is None else float(at),
            dict(obj["job"]),
        )
    raise ValueError(f"unknown frame kind {kind!r}")


def to_parent(obj: dict[str, Any]) -> ToParent:
    kind = obj["t"]
    if kind == "o":
        invalid = obj.get("invalid")
        return Outcome(
            int(obj["k"]),
            float(obj.get("d", 0.0)),
            float(obj.get("at", 0.0)),
            _error(obj.get("err")),
            obj.get("st"),
            None if invalid is None else str(invalid),
        )
    if kind == "d":
        failures = tuple((str(c), str(h), str(r)) for c, h, r in obj.get("f") or ())
        return Done(int(obj["k"]), failures)
    if kind == "ready":
        return Ready(int(obj["pid"]), int(obj["slots"]))
    if kind == "fatal":
        return Fatal(str(obj.get("error")))
    if kind == "late":
        return Late(int(obj["k"]), str(obj["phase"]), str(obj["cb"]))
    raise ValueError(f"unknown frame kind {kind!r}")


def _object(payload: bytes) -> dict[str, Any]:
    obj = json.loads(payload)
    if not isinstance(obj, dict):
        raise FrameError("frame is not an object")
    return obj


def parent_frame(payload: bytes) -> ToParent:
    """A frame read by the worker."""
    if payload[:1] == b"S":
        key, duration, started_at = payload[1:].split(b" ")
        return OkDone(int(key), float(duration), float(started_at))
    return to_parent(_object(payload))


def child_frame(payload: bytes) -> ToChild:
    """A frame read by a job process."""
    return to_child(_object(payload))


F = TypeVar("F")


class FrameReader(Generic[F]):
    """Accumulates bytes read from a pipe and yields the complete frames, typed by
    ``decode`` (``parent_frame`` in the worker, ``child_frame`` in a job process)."""

    __slots__ = ("_buf", "_decode")

    def __init__(self, decode: Callable[[bytes], F]) -> None:
        self._buf = b""
        self._decode = decode

    def feed(self, data: bytes) -> list[F]:
        buf = self._buf + data if self._buf else data
        out: list[F] = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > MAX_FRAME:
                raise FrameError(f"frame of {size} bytes")
            if end - pos - 4 < size:
                break
            payload = buf[pos + 4 : pos + 4 + size]
            try:
                out.append(self._decode(payload))
            except FrameError:
                raise
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise FrameError(f"bad frame {payload[:60]!r}: {exc}") from None
            pos += 4 + size
        self._buf = buf[pos:]
        return out


def parent_reader() -> FrameReader[ToParent]:
    return FrameReader(parent_frame)


def child_reader() -> FrameReader[ToChild]:
    return FrameReader(child_frame)
