"""Length-prefixed JSON frames between the worker and its job processes.

A frame is a 4-byte big-endian length followed by a JSON object. JSON (not pickle) keeps
the pipe as safe as the broker: a child can never make the parent run code. One frame is
not JSON: the hot path "job succeeded and its hooks are done" (``encode_ok_done``), sent
once per job, is three numbers that the reader turns into ``{"t": "od", ...}``.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Final

_LEN: Final = struct.Struct(">I")
MAX_FRAME: Final = 64 * 1024 * 1024


class FrameError(ValueError):
    """The peer wrote something that is not a frame: the pipe cannot be trusted anymore."""


def encode(obj: Any) -> bytes:
    return encode_raw(json.dumps(obj, separators=(",", ":"), default=str).encode())


def encode_raw(payload: bytes) -> bytes:
    """Frame bytes that already hold one JSON object (saves a dump/parse round)."""
    return _LEN.pack(len(payload)) + payload


_OK_DONE: Final = 0x53  # b"S"


def encode_ok_done(key: int, duration: float, started_at: float) -> bytes:
    """Outcome ``ok`` and ``done`` (no callback failures) of job ``key`` in one frame."""
    return encode_raw(b"S%d %.6f %.6f" % (key, duration, started_at))


def _ok_done(payload: bytes) -> dict[str, Any]:
    try:
        key, duration, started_at = payload[1:].split(b" ")
        return {"t": "od", "k": int(key), "d": float(duration), "at": float(started_at)}
    except ValueError:
        raise FrameError(f"bad ok-done frame {payload[:40]!r}") from None


class FrameReader:
    """Accumulates bytes read from a pipe and yields the complete frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buf = self._buf + data if self._buf else data
        frames: list[dict[str, Any]] = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > MAX_FRAME:
                raise FrameError(f"frame of {size} bytes")
            if end - pos - 4 < size:
                break
            payload = buf[pos + 4 : pos + 4 + size]
            if payload and payload[0] == _OK_DONE:
                frames.append(_ok_done(payload))
            else:
                try:
                    obj = json.loads(payload)
                except ValueError as exc:
                    raise FrameError(str(exc)) from None
                if not isinstance(obj, dict):
                    raise FrameError("frame is not an object")
                frames.append(obj)
            pos += 4 + size
        self._buf = buf[pos:]
        return frames
